"""Build options: one frozen, validated dataclass, recorded in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.clip import DEFAULT_CLIP, HF_HUB, LOCAL_DIR
from nearest_prompt.encoders.minilm import DEFAULT_MINILM
from nearest_prompt.index_store.format import PRIMARY, space_name_problem

ENGINES = ("local", "ray")
DEFAULT_NEAR_DUP_THRESHOLD = 0.95
INDEX_TYPES = ("auto", "flat", "ivf", "ivfsq8", "ivfpq", "hnsw")
DEFAULT_FRAGMENT_MIN_COUNT = 3
DEFAULT_MAX_FRAGMENTS = 100_000


@dataclass(frozen=True)
class SpaceSpec:
    """A CLIP space to build: its name, and the model as ``--clip`` takes it (with ``--pretrained``'s tag or file)."""

    name: str
    model: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, text: str) -> SpaceSpec:
        """``NAME=MODEL[@PRETRAINED]`` (a ``local-dir:`` or ``hf-hub:`` model takes no ``@``)."""
        name, sep, model = str(text).partition("=")
        if not sep or not name or not model:
            raise InputError(f"{text!r}: give a space as NAME=MODEL[@PRETRAINED], e.g. big=ViT-bigG-14@laion2b_s39b_b160k",
                             param="spaces")
        pretrained = None
        if "@" in model and not model.startswith((LOCAL_DIR, HF_HUB)):
            model, pretrained = model.rsplit("@", 1)
        return cls(name.strip(), model.strip(), (pretrained or "").strip() or None)

    def __str__(self) -> str:
        return f"{self.name}={self.model}" + (f"@{self.pretrained}" if self.pretrained else "")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    clip_model: str = DEFAULT_CLIP
    clip_pretrained: str | None = None  # None: the default tag for the default model
    # the CLIP spaces, "NAME=MODEL[@PRETRAINED]" each (SpaceSpec), in order: the first is the primary one; empty:
    # one space "clip" of clip_model / clip_pretrained
    spaces: tuple[str, ...] = ()
    image_column: str | None = None  # images of the prompts (paths or bytes): an image space NAME-image per space
    minilm_model: str = DEFAULT_MINILM
    column: str | None = None  # None: "prompt" for parquet, CSV and JSONL
    delimiter: str | None = None  # CSV only; None: the first of , ; tab | whose header holds the column
    columns: tuple[str, ...] | None = None  # kept beside each prompt; None: every column but the prompt's
    limit: int | None = None  # keep the first N unique prompts read
    near_dup_threshold: float | None = DEFAULT_NEAR_DUP_THRESHOLD  # None disables near-dedup
    batch_size: int = 64
    shard_size: int = 50_000
    index_type: str = "auto"
    memory_budget_gb: float = 4.0
    seed: int = 0
    # the fragment vocabulary (indexer.fragments): clauses held by >= fragment_min_count prompts, at most
    # max_fragments of them (the most frequent); max_fragments=0 builds an empty vocabulary
    fragment_min_count: int = DEFAULT_FRAGMENT_MIN_COUNT
    max_fragments: int = DEFAULT_MAX_FRAGMENTS
    # where the parallel work runs; none of these changes the store, so none is in the resume key
    engine: str = "local"  # "local" or "ray"
    ray_address: str | None = None  # None: start a local Ray runtime; "auto" or "ray://HOST:PORT": join one
    workers: int | None = None  # Ray actors embedding at once (default: the cluster's CPUs, or GPUs)
    gpus_per_worker: float = 0.0

    RUN_OPTIONS = ("engine", "ray_address", "workers", "gpus_per_worker")

    def clip_spaces(self) -> list[SpaceSpec]:
        """The CLIP spaces to build, primary first."""
        if not self.spaces:
            return [SpaceSpec(PRIMARY, self.clip_model, self.clip_pretrained)]
        return [SpaceSpec.parse(s) for s in self.spaces]

    def validate(self) -> BuildConfig:
        if isinstance(self.spaces, str):
            raise InputError(f"spaces must be a sequence of NAME=MODEL texts, got {self.spaces!r}", param="spaces")
        names = [s.name for s in self.clip_spaces()]
        for name in names:
            problem = space_name_problem(name)
            if problem:
                raise InputError(problem, param="spaces")
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InputError(f"space {twice!r} is named twice; give each space its own name", param="spaces")
        if self.image_column is not None and (not isinstance(self.image_column, str) or not self.image_column):
            raise InputError(f"image_column must be a column name, got {self.image_column!r}", param="image_column")
        if self.columns is not None and (isinstance(self.columns, str) or not all(isinstance(c, str) and c
                                                                              for c in self.columns)):
            raise InputError(f"columns must be a sequence of column names, got {self.columns!r}", param="columns")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be at least 1, got {self.limit}", param="limit")
        if self.near_dup_threshold is not None and not 0.0 < self.near_dup_threshold <= 1.0:
            raise InputError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}",
                             param="near_dup_threshold")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}", param="batch_size")
        if self.shard_size < 1:
            raise InputError(f"shard_size must be at least 1, got {self.shard_size}", param="shard_size")
        if self.index_type not in INDEX_TYPES:
            raise InputError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}",
                             param="index_type")
        if self.fragment_min_count < 1:
            raise InputError(f"fragment_min_count must be at least 1, got {self.fragment_min_count}",
                             param="fragment_min_count")
        if self.max_fragments < 0:
            raise InputError(f"max_fragments must be at least 0, got {self.max_fragments}", param="max_fragments")
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}", param="engine")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}", param="workers")
        if not self.gpus_per_worker >= 0:
            raise InputError(f"gpus_per_worker must be at least 0, got {self.gpus_per_worker}",
                             param="gpus_per_worker")
        if not self.memory_budget_gb > 0:
            raise InputError(f"memory_budget_gb must be positive, got {self.memory_budget_gb}",
                             param="memory_budget_gb")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_options(self) -> dict[str, Any]:
        """The options that shape the store (the resume key): all but where the work runs."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_OPTIONS}
