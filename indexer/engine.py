"""Where the build's embarrassingly parallel work runs: this process (``LocalEngine``) or a Ray cluster
(``indexer.ray_engine.RayEngine``). Both write the same shard files and the same index file, so the
rest of the build, resuming and the store are one code path.

An engine does two things: ``embed`` (text shards through an encoder) and ``map_blocks`` (the block
work of the IVF writer, ``ivf_file.assign_block`` / ``encode_block``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError

from .config import ENGINES
from .ivf_file import map_here
from .prompt_file import PromptFile
from .shards import embed_in_shards


@dataclass(frozen=True)
class TextEncoding:
    """How any process gets a text encoder: ``kind`` ("minilm" or "clip") and the loader's ``spec`` (a
    model name, or an ``encoders.clip.ClipSpec``), or an ``encoder`` object (loaded here, or to be shipped
    by pickling where there is no spec)."""

    kind: str
    spec: Any = None
    device: str | None = None
    encoder: Any = None

    def load(self) -> Any:
        if self.encoder is not None:
            return self.encoder
        if self.kind == "minilm":
            from encoders.minilm import load_minilm

            return load_minilm(self.spec, device=self.device)
        from encoders.clip import load_clip

        return load_clip(self.spec, device=self.device)

    def portable(self) -> TextEncoding:
        """What to send to another machine: the spec alone where there is one (workers load the model)."""
        return replace(self, encoder=None) if self.spec is not None else self


def encode_fn(kind: str, encoder: Any) -> Callable[[list[str]], np.ndarray]:
    if kind == "minilm":
        return lambda batch: encoder.encode(batch, batch_size=len(batch))
    return lambda batch: encoder.encode_text(batch, batch_size=len(batch))


class LocalEngine:
    name = "local"

    def embed(self, prompts: PromptFile, encoding: TextEncoding, *, dim: int, folder: Path, shard_size: int,
              batch_size: int, dtype: Any, desc: str, progress: bool) -> list[Path]:
        return embed_in_shards(prompts, encode=encode_fn(encoding.kind, encoding.load()), dim=dim, folder=folder,
                               shard_size=shard_size, batch_size=batch_size, dtype=dtype, desc=desc,
                               progress=progress)

    def map_blocks(self, fn: Callable[..., Any], shared: tuple, per_task: list[tuple]) -> Iterator[Any]:
        return map_here(fn, shared, per_task)

    def close(self) -> None:
        pass


def open_engine(name: str, *, address: str | None = None, workers: int | None = None,
                gpus_per_worker: float = 0.0) -> Any:
    if name == "local":
        return LocalEngine()
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}", param="engine")
