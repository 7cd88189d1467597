"""Build an index store: read -> clean + exact dedup -> MiniLM -> near dedup -> CLIP -> FAISS -> store.

Work happens in ``.NAME.build/`` beside ``out`` (``workdir``), locked so that one build at a time
writes there; every stage leaves files there (shards, keep mask), so an interrupted build run again
with the same inputs and options continues where it stopped. The store itself is written to a
staging directory and swapped into place at the very end, so an existing store at ``out`` is intact
until the new one is complete. Models are loaded and free space is checked before the corpus is read.
A failed build removes what cannot be resumed and says what it kept.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt import index_store
from nearest_prompt.common.atomic import atomic_path, check_folder_writable, write_bytes_atomic
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError, NearestPromptError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.version import library_versions
from nearest_prompt.encoders.clip import ClipEncoder, load_clip, locate_weights, parse_clip_spec, portable_spec
from nearest_prompt.encoders.minilm import MiniLMEncoder, load_minilm
from nearest_prompt.index_store import SPACES, FragmentsInfo, IndexInfo, Manifest

from .config import BuildConfig
from .dedup import near_duplicate_keep
from .disk import check_free_space, corpus_size, estimate
from .encoding import TextEncoding
from .engine import open_engine
from .exact_dedup import ExactDedup
from .faiss_index import build_index, plan_index
from .fragments import mine_fragments
from .prompt_file import PromptFile, write_prompt_file
from .readers import Source, check_sources, holds_prompts, meta_columns
from .shards import ShardedMatrix, float_blocks
from .workdir import WorkDir

log = logging.getLogger(__name__)

WORK_FORMAT = 2  # 2: the fragment vocabulary's files
PROMPTS_PER_FRAGMENT = 4  # the disk estimate assumes a fragment per 4 prompts (real corpora hold fewer)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    stats: dict[str, Any]


def build(prompt_files: Sequence[str | Path], out: str | Path, *, config: BuildConfig | None = None,
          clip: ClipEncoder | None = None, minilm: MiniLMEncoder | None = None,
          device: str | None = None, progress: bool = True, clean: bool = False) -> BuildResult:
    """Build (or resume building) an index store at ``out`` from prompt files.

    ``clip`` / ``minilm`` take already-loaded encoders (otherwise they are
    loaded from ``config``, before the corpus is read). ``clean`` discards
    the resumable work of an earlier interrupted build. Raises ``InputError``
    for bad input before any expensive work where it can.
    """
    config = (config or BuildConfig()).validate()
    device = resolve_device(device)
    out = index_store.check_target(out)
    sources = check_sources(list(prompt_files), column=config.column, delimiter=config.delimiter,
                            columns=config.columns)
    check_folder_writable(out.parent, param="out")
    if not any(holds_prompts(s) for s in sources):
        raise InputError(f"no usable prompts in {', '.join(str(s.path) for s in sources)} (every value is empty or "
                         "not text)", param="prompts")
    clip_spec = parse_clip_spec(config.clip_model, config.clip_pretrained) if clip is None else None
    minilm_spec = config.minilm_model if minilm is None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = WorkDir(out).lock()  # before the models load: a second build into out is refused at once
    totals: dict[str, int] = {}
    started = False
    try:
        if clip is None:
            locate_weights(clip_spec)  # a CLIP that cannot be had fails in seconds, before MiniLM loads
        if minilm is None:
            minilm = load_minilm(config.minilm_model, device=device)
        if clip is None:
            clip = load_clip(clip_spec, device=device)
        encodings = {"minilm": TextEncoding("minilm", minilm_spec, device, minilm),
                     "clip": TextEncoding("clip", clip_spec, device, clip)}
        engine = open_engine(config.engine, address=config.ray_address, workers=config.workers,
                             gpus_per_worker=config.gpus_per_worker)
        with closing(engine):
            for orphan in index_store.orphans(out):
                log.info("removing %s, left by a build that was killed", orphan)
                shutil.rmtree(orphan, ignore_errors=True)
            if clean:
                work.clear()
            work.prepare(_work_key(config, sources))
            started = True
            return _build(work, sources, out, config=config, clip=clip, minilm=minilm, progress=progress,
                          totals=totals, engine=engine, encodings=encodings)
    except BaseException as e:
        kept = work.after_failure(shard_totals=totals)
        if not started:  # the models or the engine: nothing of this build was done
            raise
        full = _disk_full(e)
        if full is not None:
            raise InputError(f"the disk filled up writing {full}; free some space (the next run first checks "
                             f"that the disk has what it needs) and run the same build again; {kept}",
                             param="out") from e
        if isinstance(e, NearestPromptError):
            raise type(e)(f"{e}; {kept}", param=e.param) from e
        log.warning("build %s; %s", "interrupted" if isinstance(e, KeyboardInterrupt) else "failed", kept)
        raise
    finally:
        work.unlock()


def _build(work: WorkDir, sources: list[Source], out: Path, *, config: BuildConfig, clip: ClipEncoder,
           minilm: MiniLMEncoder, progress: bool, totals: dict[str, int], engine: Any,
           encodings: dict[str, TextEncoding]) -> BuildResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    budgets = split_budget(config.memory_budget_gb)
    dims = {"clip": clip.dim, "minilm": minilm.dim}

    def check_space(rows: int, text_bytes: int) -> None:
        index_bytes = sum(plan_index(rows, dims[s], index_type=config.index_type,
                                     memory_budget_gb=budgets[s]).estimated_bytes(rows, dims[s]) for s in SPACES)
        check_free_space(out, estimate(rows, text_bytes, clip_dim=clip.dim, index_bytes=index_bytes,
                                       fragments=min(config.max_fragments, rows // PROMPTS_PER_FRAGMENT)),
                         already=work.size_bytes())

    check_space(*corpus_size(sources, limit=config.limit))
    _stage("read")
    prompts, clean_stats = _read_stage(work.path, sources, config, progress)
    timings["read"] = time.perf_counter() - t0
    totals.update(minilm=-(-len(prompts) // config.shard_size), clip=-(-len(prompts) // config.shard_size))
    check_space(len(prompts), prompts.path.stat().st_size)  # now with the exact count

    _stage("minilm")
    t = time.perf_counter()
    minilm_paths = engine.embed(
        prompts, encodings["minilm"], dim=minilm.dim, folder=work.path / "minilm", shard_size=config.shard_size,
        batch_size=config.batch_size, dtype=np.float16, desc="MiniLM", progress=progress)
    minilm_all = ShardedMatrix(minilm_paths)
    timings["minilm"] = time.perf_counter() - t

    _stage("near_dedup")
    t = time.perf_counter()
    keep = _near_dedup_stage(work.path, minilm_all, config, progress, map_blocks=engine.map_blocks)
    kept = np.flatnonzero(keep)
    kept_prompts = _kept_prompts(work.path, prompts, keep)
    totals["clip"] = -(-len(kept) // config.shard_size)
    timings["near_dedup"] = time.perf_counter() - t

    _stage("fragments")
    t = time.perf_counter()
    fragments, fragment_stats = _fragment_stage(work.path, kept_prompts, config, progress)
    totals.update(fragments_minilm=-(-len(fragments) // config.shard_size),
                  fragments_clip=-(-len(fragments) // config.shard_size))
    fragment_paths = {
        space: engine.embed(fragments, encodings[space], dim=dims[space], folder=work.path / f"fragments_{space}",
                            shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float16,
                            desc=f"fragments {label}", progress=progress) if len(fragments) else []
        for space, label in (("minilm", "MiniLM"), ("clip", "CLIP text"))}
    timings["fragments"] = time.perf_counter() - t

    _stage("clip")
    t = time.perf_counter()
    clip_paths = engine.embed(
        kept_prompts, encodings["clip"], dim=clip.dim, folder=work.path / "clip", shard_size=config.shard_size,
        batch_size=config.batch_size, dtype=np.float32, desc="CLIP text", progress=progress)
    timings["clip"] = time.perf_counter() - t

    _stage("store")
    t = time.perf_counter()
    indexes: dict[str, IndexInfo] = {}
    with index_store.StoreWriter(out) as writer:
        writer.write_prompts(kept_prompts.batches())
        writer.write_minilm(_kept_rows(minilm_all, kept, progress), rows=len(kept), dim=minilm_all.dim)
        clip_all = ShardedMatrix(clip_paths)
        writer.write_matrix(writer.vectors_path("clip").name, (b for _, b in float_blocks(clip_all, 65_536)),
                            rows=len(kept), dim=clip.dim)
        vectors = {"clip": lambda: clip_all, "minilm": lambda: ShardedMatrix([writer.minilm_path])}
        for space in SPACES:
            _stage(f"{space}_index")
            matrix = vectors[space]()
            plan = plan_index(len(kept), matrix.dim, index_type=config.index_type, memory_budget_gb=budgets[space])
            if plan.note:
                log.warning("%s index: %s", space, plan.note)
            path = writer.index_path(space)
            indexes[space] = IndexInfo.from_dict(build_index(
                matrix, plan, path=path, seed=config.seed, map_blocks=engine.map_blocks,
                refine_path=writer.vectors_path(space), final_path=writer.final_path(path)))
            log.info("%s index: %s %s over %d vectors, recall@10 vs exact %.3f", space, plan.type,
                     indexes[space].params, len(kept), indexes[space].recall_at_10)
            del matrix
            _return_free_memory()
        _stage("fragment_indexes")
        fragment_info = write_fragments(writer, fragments, fragment_stats, fragment_paths, dims=dims,
                                         seed=config.seed, map_blocks=engine.map_blocks)
        _stage("commit")
        timings["index"] = time.perf_counter() - t
        stats = {**clean_stats, "near_duplicates": int(len(keep) - len(kept)), "rows": int(len(kept)),
                 "fragments": fragment_info.rows}
        writer.commit(Manifest(
            rows=int(len(kept)), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            clip=portable_spec(clip.info, store=out), minilm=minilm.info, indexes=indexes,
            build={"config": config.to_dict(), "sources": [s.describe() for s in sources],
                   "stats": stats, "seconds": {k: round(v, 3) for k, v in timings.items()}},
            versions=library_versions(), fragments=fragment_info,
        ))
    work.remove()
    _stage("done")
    return BuildResult(path=out, rows=int(len(kept)), stats=stats)


def _disk_full(e: BaseException) -> str | None:
    """The path a full disk failed to write (or "the index file" for FAISS's own write errors), else None."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(e.filename or "the build's files")
    if isinstance(e, RuntimeError) and "No space left on device" in str(e):
        return "a FAISS index file"
    return None


def _work_key(config: BuildConfig, sources: list[Source]) -> str:
    blob = json.dumps({"work_format": WORK_FORMAT, "config": config.result_options(),
                       "sources": [s.describe() for s in sources]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_stage(work: Path, sources: list[Source], config: BuildConfig,
                progress: bool) -> tuple[PromptFile, dict[str, int]]:
    """Unique prompts, streamed batch by batch into ``work/prompts.arrow`` by the on-disk exact
    dedup (a resumed build reads that file instead of the sources)."""
    done = work / "prompts.arrow"
    stats_path = work / "clean_stats.json"
    if not (done.is_file() and stats_path.is_file()):
        dedup = ExactDedup(sources, folder=work / "exact_dedup", limit=config.limit, progress=progress,
                           total=_known_rows(sources), columns=meta_columns(sources))
        write_prompt_file(done, dedup.batches())
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


def _near_dedup_stage(work: Path, minilm_all: ShardedMatrix, config: BuildConfig, progress: bool, *,
                      map_blocks: Any) -> np.ndarray:
    done = work / "keep.npy"
    if done.is_file():
        keep = np.load(done)
        if keep.shape == (len(minilm_all),):
            return keep
    if config.near_dup_threshold is None:
        keep = np.ones(len(minilm_all), dtype=bool)
    else:
        keep = near_duplicate_keep(minilm_all, threshold=config.near_dup_threshold, seed=config.seed,
                                   progress=progress, folder=work, map_blocks=map_blocks)
    with atomic_path(done) as tmp:
        np.save(tmp, keep)
    return keep


def _fragment_stage(work: Path, prompts: PromptFile, config: BuildConfig,
                    progress: bool) -> tuple[PromptFile, dict[str, Any]]:
    """The fragment vocabulary of the kept prompts (``indexer.fragments``): ``work/fragments.arrow``, its
    counts and statistics in ``work/fragments.json`` (a resumed build reads them back)."""
    done, meta = work / "fragments.arrow", work / "fragments.json"
    if not (done.is_file() and meta.is_file()):
        vocab = mine_fragments(prompts.blocks(), min_count=config.fragment_min_count,
                               max_fragments=config.max_fragments, total=len(prompts), progress=progress)
        write_prompt_file(done, [vocab.fragments])
        write_bytes_atomic(meta, json.dumps({"stats": vocab.stats, "counts": vocab.counts.tolist()}).encode())
    return PromptFile(done), json.loads(meta.read_text())


def write_fragments(writer: index_store.StoreWriter, fragments: PromptFile, meta: dict[str, Any],
                     paths: dict[str, list[Path]], *, dims: dict[str, int], seed: int,
                     map_blocks: Any) -> FragmentsInfo:
    """The vocabulary's table, its float16 vectors per space and a FAISS index over each (planned like the
    prompts' indexes; the vocabulary is capped, so exact search below 100,000 fragments)."""
    n = len(fragments)
    writer.write_fragments(fragments[:].combine_chunks(), np.asarray(meta["counts"], dtype=np.int64))
    indexes = {}
    for space in SPACES:
        matrix = ShardedMatrix(paths[space])
        writer.write_matrix(writer.fragment_vectors_path(space).name,
                            (block for _, block in float_blocks(matrix, 65_536)), rows=n, dim=dims[space])
        stored = np.load(writer.fragment_vectors_path(space), mmap_mode="r")
        path = writer.fragment_index_path(space)
        indexes[space] = IndexInfo.from_dict(build_index(stored, plan_index(n, dims[space]), path=path, seed=seed,
                                                         map_blocks=map_blocks, refine_path=writer.fragment_vectors_path(space),
                                                         final_path=writer.final_path(path)))
    rule = {"split": "',' and '|'", "min_count": meta["stats"]["min_count"],
            "max_fragments": meta["stats"]["max_fragments"], "count": "prompts holding the fragment"}
    return FragmentsInfo(rows=n, indexes=indexes, rule=rule, stats=meta["stats"])


def _kept_rows(minilm_all: ShardedMatrix, kept: np.ndarray, progress: bool) -> Iterator[np.ndarray]:
    """The kept rows of the MiniLM shards, in order, in blocks."""
    step = 65_536
    with progress_bar(total=len(kept), desc="writing", enabled=progress) as bar:
        for start in range(0, len(kept), step):
            rows = kept[start:start + step]
            yield minilm_all[rows]
            bar.update(len(rows))


def split_budget(memory_budget_gb: float) -> dict[str, float]:
    """The memory budget split between the spaces' FAISS indexes: CLIP (searched for every image) gets
    three quarters, MiniLM (text and caption queries) one quarter."""
    return {"clip": 0.75 * memory_budget_gb, "minilm": 0.25 * memory_budget_gb}


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
    """Stage boundaries as debug log records (``-v``; benchmarks attribute memory to stages by them)."""
    log.debug("build stage: %s", name)
