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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nearest_prompt import index_store
from nearest_prompt.common.atomic import atomic_path, check_folder_writable, write_bytes_atomic
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError, NearestPromptError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.version import library_versions
from nearest_prompt.encoders.clip import ClipEncoder, load_clip, locate_weights, parse_clip_spec, portable_spec
from nearest_prompt.encoders.minilm import MiniLMEncoder, load_minilm
from nearest_prompt.index_store import FragmentsInfo, IndexInfo, Manifest, SpaceInfo
from nearest_prompt.index_store.format import FRAGMENT_SPACES, image_space

from .config import BuildConfig
from .dedup import near_duplicate_keep
from .disk import check_free_space, corpus_size, estimate
from .encoding import TextEncoding
from .engine import open_engine
from .exact_dedup import ExactDedup
from .faiss_index import build_index, plan_index
from .fragments import mine_fragments
from .images import embed_images, report_images
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
          clip: ClipEncoder | Mapping[str, ClipEncoder] | None = None, minilm: MiniLMEncoder | None = None,
          device: str | None = None, progress: bool = True, clean: bool = False) -> BuildResult:
    """Build (or resume building) an index store at ``out`` from prompt files.

    ``clip`` / ``minilm`` take already-loaded encoders (otherwise they are loaded from ``config``, before the
    corpus is read): ``clip`` one encoder (the first CLIP space's), or one per space name. ``clean`` discards the
    resumable work of an earlier interrupted build. Raises ``InputError`` for bad input before any expensive
    work where it can.
    """
    config = (config or BuildConfig()).validate()
    device = resolve_device(device)
    out = index_store.check_target(out)
    space_specs = config.clip_spaces()
    given = dict(clip) if isinstance(clip, Mapping) else {space_specs[0].name: clip} if clip is not None else {}
    unknown = [name for name in given if name not in {s.name for s in space_specs}]
    if unknown:
        raise InputError(f"an encoder for {unknown[0]!r}, which is not a space of the build", param="clip")
    columns = config.columns
    if config.image_column is not None and columns is not None and config.image_column not in columns:
        columns = (*columns, config.image_column)  # read for the image stage, not kept
    sources = check_sources(list(prompt_files), column=config.column, delimiter=config.delimiter, columns=columns)
    if config.image_column is not None and not any(config.image_column in dict(s.meta) for s in sources):
        raise InputError(f"no column {config.image_column!r} in the corpus for the images (columns: "
                         f"{', '.join(meta_columns(sources)) or 'none'})", param="image_column")
    check_folder_writable(out.parent, param="out")
    if not any(holds_prompts(s) for s in sources):
        raise InputError(f"no usable prompts in {', '.join(str(s.path) for s in sources)} (every value is empty or "
                         "not text)", param="prompts")
    param = {space_specs[0].name: "clip"} if not config.spaces else {}
    specs = {s.name: parse_clip_spec(s.model, s.pretrained, param=param.get(s.name, "spaces"))
             for s in space_specs if s.name not in given}
    minilm_spec = config.minilm_model if minilm is None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = WorkDir(out).lock()  # before the models load: a second build into out is refused at once
    totals: dict[str, int] = {}
    started = False
    try:
        for name, spec in specs.items():
            locate_weights(spec, param=param.get(name, "spaces"))  # a CLIP that cannot be had fails in seconds
        if minilm is None:
            minilm = load_minilm(config.minilm_model, device=device)
        clips = {s.name: given.get(s.name) or load_clip(specs[s.name], device=device) for s in space_specs}
        encodings = {"minilm": TextEncoding("minilm", minilm_spec, device, minilm),
                     **{name: TextEncoding("clip", specs.get(name), device, encoder) for name, encoder in clips.items()}}
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
            return _build(work, sources, out, config=config, clips=clips, minilm=minilm, progress=progress,
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


def _build(work: WorkDir, sources: list[Source], out: Path, *, config: BuildConfig, clips: dict[str, ClipEncoder],
           minilm: MiniLMEncoder, progress: bool, totals: dict[str, int], engine: Any,
           encodings: dict[str, TextEncoding]) -> BuildResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    primary = next(iter(clips))
    spaces = {name: name for name in clips}  # every CLIP space -> the text space whose model embeds it
    if config.image_column is not None:
        spaces.update({image_space(name): name for name in clips})
    budgets = split_budget(config.memory_budget_gb, list(spaces))
    dims = {**{name: clips[model].dim for name, model in spaces.items()}, "minilm": minilm.dim}

    def check_space(rows: int, text_bytes: int) -> None:
        index_bytes = sum(plan_index(rows, dims[s], index_type=config.index_type,
                                     memory_budget_gb=budgets[s]).estimated_bytes(rows, dims[s]) for s in budgets)
        check_free_space(out, estimate(rows, text_bytes, clip_dim=sum(dims[s] for s in spaces), index_bytes=index_bytes,
                                       fragments=min(config.max_fragments, rows // PROMPTS_PER_FRAGMENT)),
                         already=work.size_bytes())

    check_space(*corpus_size(sources, limit=config.limit))
    _stage("read")
    prompts, clean_stats = _read_stage(work.path, sources, config, progress)
    timings["read"] = time.perf_counter() - t0
    totals.update(minilm=-(-len(prompts) // config.shard_size))
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
    totals.update({name: -(-len(kept) // config.shard_size) for name in clips})
    timings["near_dedup"] = time.perf_counter() - t

    _stage("fragments")
    t = time.perf_counter()
    fragments, fragment_stats = _fragment_stage(work.path, kept_prompts, config, progress)
    totals.update(fragments_minilm=-(-len(fragments) // config.shard_size),
                  fragments_clip=-(-len(fragments) // config.shard_size))
    fragment_paths = {
        space: engine.embed(fragments, encodings[source], dim=dims[source], folder=work.path / f"fragments_{space}",
                            shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float16,
                            desc=f"fragments {label}", progress=progress) if len(fragments) else []
        for space, source, label in (("minilm", "minilm", "MiniLM"), ("clip", primary, "CLIP text"))}
    timings["fragments"] = time.perf_counter() - t

    _stage("clip")
    t = time.perf_counter()
    vector_paths = {name: engine.embed(
        kept_prompts, encodings[name], dim=dims[name], folder=work.path / name, shard_size=config.shard_size,
        batch_size=config.batch_size, dtype=np.float32, desc="CLIP text" + (f" ({name})" if len(clips) > 1 else ""),
        progress=progress) for name in clips}
    timings["clip"] = time.perf_counter() - t
    members: dict[str, np.ndarray] = {}
    image_stats: dict[str, dict[str, Any]] = {}
    if config.image_column is not None:
        _stage("images")
        t = time.perf_counter()
        bases = list(dict.fromkeys(s.path.parent for s in sources))
        for name, model in spaces.items():
            if name == model:
                continue
            done = embed_images(kept_prompts, column=config.image_column, bases=bases, encoder=clips[model],
                                folder=work.path / name, shard_size=config.shard_size, batch_size=config.batch_size,
                                desc=f"CLIP images ({model})", progress=progress)
            vector_paths[name], members[name], image_stats[name] = done.paths, done.members, done.stats
            report_images(name, done.stats)
        timings["images"] = time.perf_counter() - t

    _stage("store")
    t = time.perf_counter()
    indexes: dict[str, IndexInfo] = {}
    with index_store.StoreWriter(out) as writer:
        writer.write_prompts(_store_batches(kept_prompts, config))
        writer.write_minilm(_kept_rows(minilm_all, kept, progress), rows=len(kept), dim=minilm_all.dim)
        for name, member in members.items():
            if not member.all():
                with atomic_path(writer.rows_path(name)) as tmp:
                    np.save(tmp, member)
        for space in [*spaces, "minilm"]:
            _stage(f"{space}_index")
            if space != "minilm":  # the index holds the stored (float16) vectors: exact rescoring agrees with it
                writer.write_matrix(writer.vectors_path(space).name,
                                    (b for _, b in float_blocks(ShardedMatrix(vector_paths[space]), 65_536)),
                                    rows=len(kept), dim=dims[space])
            matrix = ShardedMatrix([writer.vectors_path(space)])
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
        fragment_info = write_fragments(writer, fragments, fragment_stats, fragment_paths,
                                        dims={"clip": dims[primary], "minilm": dims["minilm"]},
                                        seed=config.seed, map_blocks=engine.map_blocks)
        _stage("commit")
        timings["index"] = time.perf_counter() - t
        stats = {**clean_stats, "near_duplicates": int(len(keep) - len(kept)), "rows": int(len(kept)),
                 "fragments": fragment_info.rows}
        space_infos = {name: SpaceInfo(kind="text" if name == model else "image",
                                       model=portable_spec(clips[model].info, store=out),
                                       of=None if name == model else model,
                                       rows=int(members[name].sum()) if name in members else None,
                                       images=image_stats.get(name, {}))
                       for name, model in spaces.items()}
        writer.commit(Manifest(
            rows=int(len(kept)), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            spaces=space_infos, minilm=minilm.info, indexes=indexes,
            build={"config": config.to_dict(), "sources": [s.describe() for s in sources],
                   "stats": stats, "seconds": {k: round(v, 3) for k, v in timings.items()}},
            versions=library_versions(), fragments=fragment_info,
        ))
    work.remove()
    _stage("done")
    return BuildResult(path=out, rows=int(len(kept)), stats=stats)


def _store_batches(prompts: PromptFile, config: BuildConfig) -> Iterator[pa.RecordBatch]:
    """The kept prompts with the columns the store keeps: not bytes, and the image column only when it was
    among the columns asked for (or all were)."""
    drop = {f.name for f in prompts.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    if config.image_column is not None and config.columns is not None and config.image_column not in config.columns:
        drop.add(config.image_column)
    for batch in prompts.batches():
        yield batch.drop_columns([n for n in batch.schema.names if n in drop]) if drop else batch


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
    for space in FRAGMENT_SPACES:
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


def split_budget(memory_budget_gb: float, spaces: Sequence[str] = ("clip",)) -> dict[str, float]:
    """The memory budget split between the spaces' FAISS indexes: the CLIP spaces (searched for every image)
    share three quarters equally, MiniLM (text and caption queries) gets one quarter."""
    return {**{s: 0.75 * memory_budget_gb / len(spaces) for s in spaces}, "minilm": 0.25 * memory_budget_gb}


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
