"""Add prompts to a store without a rebuild: read -> clean + exact dedup (against each other and the store) ->
MiniLM -> near dedup (against each other and the store) -> CLIP -> the store's next version.

The new prompts get the row ids after the store's own (every existing id keeps its row). They are cleaned by
the build's rules; a prompt the store holds (or held: a removed prompt stays removed) is dropped, and so is
one whose MiniLM cosine to a kept prompt (of the store, or an earlier new one) is above the threshold the
store was built with. The kept ones are embedded with the store's models and added to its trained indexes
(no retraining: IVF lists get the new rows appended, ``faiss_index.extend_index``); recall@10 is measured
again on a sample and the search knobs tuned again if it fell below 0.95. The fragment vocabulary is mined
again over every prompt (old fragments keep their vectors; new ones are embedded). If an IVF index's lists
have drifted (faiss's imbalance factor twice what it was when they were trained), or a build of the new size
would plan another index, it says so: a rebuild then pays.

Every space gets the new rows: each CLIP text space embeds them with its model; an image space embeds the images
the new files name in the column the store was built with (``image_column``), and holds no new row whose file
has no such column or whose images cannot be read.

The work happens in the store's build folder (``.NAME.build/``, the build's lock held): the deduplicated new
prompts and the embedding shards stay there, so an interrupted addition run again continues; a run after one
that completed finds every prompt already in the store and changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nearest_prompt import index_store
from nearest_prompt.common.atomic import atomic_path, write_bytes_atomic
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError, ModelError
from nearest_prompt.common.text import dedup_key
from nearest_prompt.encoders.clip import load_clip, resolve_spec
from nearest_prompt.encoders.minilm import load_minilm
from nearest_prompt.index_store import IndexInfo, Store
from nearest_prompt.index_store.format import FRAGMENT_SPACES, FRAGMENT_VECTORS, MINILM_SPACE, REMOVED

from . import metadata
from .build import PROMPTS_PER_FRAGMENT, split_budget, write_fragments
from .dedup import near_duplicate_keep
from .disk import DiskEstimate, check_free_space, estimate
from .encoding import TextEncoding
from .engine import open_engine
from .exact_dedup import ExactDedup
from .faiss_index import IVF_TYPES, extend_index, plan_index
from .images import embed_images, merge_stats, report_images
from .prompt_file import PromptFile, write_prompt_file
from .readers import check_sources, meta_columns
from .revision import REMOVED_KEYS, build_config, fragment_dims, live_prompts, mine, open_for_change, record
from .shards import ShardedMatrix
from .workdir import WorkDir

log = logging.getLogger(__name__)

ADD_FORMAT = 1
DRIFT = 2.0  # an IVF index whose imbalance factor reached this multiple of its trained one: rebuild it
SEARCH_CHUNK = 4_096


@dataclass(frozen=True)
class AddResult:
    path: Path
    rows: int  # the store's rows now
    added: int
    stats: dict[str, Any]
    notes: list[str]  # what a rebuild would change (drifted lists, another plan)


def add(prompt_files: Sequence[str | Path], index: str | Path, *, column: str | None = None,
        delimiter: str | None = None, limit: int | None = None, clip: Any = None, minilm: Any = None,
        device: str | None = None, batch_size: int | None = None, shard_size: int | None = None,
        progress: bool = True, clean: bool = False) -> AddResult:
    """Add the prompts of ``prompt_files`` to the store at ``index`` (see the module). ``clip`` / ``minilm``:
    loaded encoders of the store's models (else loaded from its manifest). Columns the store keeps are read
    from the files (null where a file lacks one); other columns are not kept. ``clean`` discards the resumable
    work of an interrupted addition. Bad input is refused before any model loads."""
    store = open_for_change(index, what="adding prompts")
    out = store.path
    config = build_config(store)
    config = dataclasses.replace(config, batch_size=batch_size or config.batch_size,
                                 shard_size=shard_size or config.shard_size).validate()
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}", param="limit")
    device = resolve_device(device)
    kept_columns = {name: str(store.table.schema.field(name).type) for name in store.columns}
    sources = check_sources(list(prompt_files), column=column, delimiter=delimiter, columns=None)
    images = config.image_column if any(i.kind == "image" for i in store.manifest.spaces.values()) else None
    wanted = {*kept_columns, *([images] if images else [])}
    sources = [dataclasses.replace(s, meta=tuple((n, k) for n, k in s.meta if n in wanted)) for s in sources]
    if images is not None and images not in kept_columns:
        carried = meta_columns(sources).get(images)
        if carried is not None:
            kept_columns = {**kept_columns, images: carried}
    lock = WorkDir(out).lock()
    work = lock.sub("add")  # beside the resumable work of an interrupted build, which stays
    try:
        for orphan in index_store.orphans(out):
            log.info("removing %s, left by a change that was killed", orphan)
            shutil.rmtree(orphan, ignore_errors=True)
        store = open_for_change(index, what="adding prompts")  # the store as it is now that the lock is held
        encoders = _encoders(store, clip=clip, minilm=minilm, device=device)
        if clean:
            work.clear()
        work.prepare(_work_key(store, sources, limit))
        result = _add(work, store, sources, config=config, limit=limit, columns=kept_columns, encoders=encoders,
                      progress=progress)
        work.remove()
        return result
    except BaseException as e:
        kept = work.after_failure(shard_totals={})
        if not isinstance(e, InputError):
            log.warning("adding prompts %s; %s", "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                        kept.replace("same build", "same command"))
        raise
    finally:
        lock.remove_if_idle()
        lock.unlock()


def _encoders(store: Store, *, clip: Any, minilm: Any, device: str) -> dict[str, Any]:
    """The store's MiniLM and the CLIP model of each text space, as given (checked against the manifest) or
    loaded from it."""
    if minilm is None:
        minilm = load_minilm(store.minilm_info.model, device=device)
    if minilm.info.dim != store.minilm_info.dim or (store.minilm_info.weights and minilm.info.weights
                                                    and store.minilm_info.weights != minilm.info.weights):
        raise ModelError(f"MiniLM {minilm.info.model} is not the one the store was built with "
                         f"({store.minilm_info.model})", param="minilm")
    given = dict(clip) if isinstance(clip, dict) else {store.primary: clip} if clip is not None else {}
    encoders = {MINILM_SPACE: minilm}
    for name, info in store.manifest.spaces.items():
        if info.kind != "text":
            continue
        encoder = given.get(name) or load_clip(resolve_spec(info.model.spec(), store=store.path), device=device)
        why = info.model.mismatch(encoder.info)
        if why:
            raise ModelError(f"CLIP {encoder.info.model} is not the model the store's space {name!r} was built with "
                             f"({info.model.spec().label}): {why}", param="clip")
        encoders[name] = encoder
    return encoders


def _work_key(store: Store, sources: list[Any], limit: int | None) -> str:
    manifest = (store.path / index_store.format.MANIFEST).read_bytes()
    blob = json.dumps({"add_format": ADD_FORMAT, "store": hashlib.sha256(manifest).hexdigest(), "limit": limit,
                       "sources": [s.describe() for s in sources]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _add(work: WorkDir, store: Store, sources: list[Any], *, config: Any, limit: int | None,
         columns: dict[str, str], encoders: dict[str, Any], progress: bool) -> AddResult:
    t0 = time.perf_counter()
    engine = open_engine("local")
    spaces = {name: store.model_space(name) for name in store.spaces}  # every CLIP space -> its model's space
    dims = {**{name: encoders[model].dim for name, model in spaces.items()}, MINILM_SPACE: encoders[MINILM_SPACE].dim}
    encodings = {name: TextEncoding("minilm" if name == MINILM_SPACE else "clip", None, None, encoder)
                 for name, encoder in encoders.items()}

    _stage("read")  # the new prompts, unique among themselves and new to the store
    new, stats = _read_stage(work.path, store, sources, limit=limit, columns=columns, progress=progress)
    grow = estimate(len(new), new.path.stat().st_size, clip_dim=sum(dims[s] for s in spaces), index_bytes=0,
                    fragments=len(new) // PROMPTS_PER_FRAGMENT)
    current = sum(f.bytes for f in store.manifest.files.values())  # the next version rewrites every file
    check_free_space(store.path, DiskEstimate(rows=store.rows + len(new), text_bytes=grow.text_bytes,
                                              work_bytes=grow.work_bytes, store_bytes=current + grow.store_bytes),
                     already=work.size_bytes())
    if len(new) == 0:
        return AddResult(store.path, store.rows, 0, {**stats, "near_duplicates": 0, "added": 0}, [])

    with closing(engine):
        _stage("minilm")
        minilm_paths = engine.embed(new, encodings[MINILM_SPACE], dim=dims[MINILM_SPACE], folder=work.path / "minilm",
                                    shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float16,
                                    desc="MiniLM", progress=progress)
        minilm_new = ShardedMatrix(minilm_paths)
        _stage("near_dedup")
        keep = _near_dedup_stage(work.path, store, minilm_new, config, progress, map_blocks=engine.map_blocks)
        stats["near_duplicates"] = int(len(keep) - keep.sum())
        kept = np.flatnonzero(keep)
        if not len(kept):
            return AddResult(store.path, store.rows, 0, {**stats, "added": 0}, [])
        kept_prompts = new if len(kept) == len(new) else _kept_file(work.path, new, keep)
        _stage("clip")
        vectors_new: dict[str, Any] = {MINILM_SPACE: _Rows(minilm_new, kept)}
        for name, model in spaces.items():
            if name == model:
                vectors_new[name] = ShardedMatrix(engine.embed(
                    kept_prompts, encodings[name], dim=dims[name], folder=work.path / name,
                    shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float32,
                    desc="CLIP text" + (f" ({name})" if len(encodings) > 2 else ""), progress=progress))
        members_new: dict[str, np.ndarray] = {}
        image_stats: dict[str, dict[str, Any]] = {}
        for name, model in spaces.items():
            if name != model:
                vectors_new[name], members_new[name], image_stats[name] = _image_stage(
                    work.path, name, kept_prompts, sources, encoder=encoders[model], config=config, progress=progress)

        _stage("fragments")
        fragments, counts, fstats, fvectors = _fragment_stage(work.path, store, kept_prompts, encodings, dims,
                                                              engine=engine, config=config, progress=progress)
        notes: list[str] = []
        rows = store.rows + len(kept)
        _stage("store")
        with index_store.StoreWriter(store.path) as writer:
            writer.write_prompts(_all_batches(store, kept_prompts))
            for space in [*spaces, MINILM_SPACE]:
                writer.write_matrix(writer.vectors_path(space).name,
                                    _chain(store.vectors[space], vectors_new[space]), rows=rows, dim=dims[space])
            if store.removed is not None:
                with atomic_path(writer.staging / REMOVED) as tmp:
                    np.save(tmp, np.concatenate([store.removed, np.zeros(len(kept), dtype=bool)]))
            members = {name: np.concatenate([store.members.get(name, np.ones(store.rows, bool)), member])
                       for name, member in members_new.items()}
            for name, member in members.items():
                if not member.all():
                    with atomic_path(writer.rows_path(name)) as tmp:
                        np.save(tmp, member)
            indexes: dict[str, IndexInfo] = {}
            for space in [*spaces, MINILM_SPACE]:
                _stage(f"{space}_index")
                path = writer.index_path(space)
                old = store.manifest.indexes[space]
                stored = np.load(writer.vectors_path(space), mmap_mode="r")  # the index holds the stored vectors
                info = extend_index(store.path / path.name, old.to_dict(), _Rows(stored, np.arange(store.rows, rows)),
                                    path=path, all_vectors=stored,
                                    seed=config.seed, map_blocks=engine.map_blocks,
                                    refine_path=writer.vectors_path(space), final_path=writer.final_path(path))
                indexes[space] = IndexInfo.from_dict(info)
                notes += _drift_notes(space, indexes[space], rows, dims[space], config, spaces=list(spaces))
            finfo = write_fragments(writer, fragments, {"stats": fstats, "counts": counts.tolist()}, fvectors,
                                    dims=fragment_dims(store), seed=config.seed, map_blocks=engine.map_blocks)
            stats.update(added=int(len(kept)))
            space_infos = {name: dataclasses.replace(info, rows=int(members[name].sum()), images={
                               **merge_stats([{"refs": 0, "images": 0, "rows": 0, "skipped": {}, **info.images},
                                              image_stats[name]]), "column": info.images.get("column")})
                           if name in members else info for name, info in store.manifest.spaces.items()}
            entry = {"sources": [s.describe() for s in sources], "stats": stats, "rows_before": store.rows,
                     "rows_after": rows, "seconds": round(time.perf_counter() - t0, 3)}
            _stage("commit")
            writer.commit(record(store, "additions", entry, rows=rows, indexes=indexes, fragments=finfo,
                                 spaces=space_infos))
        _stage("committed")
    for note in notes:
        log.warning("%s", note)
    return AddResult(store.path, rows, int(len(kept)), stats, notes)


def _image_stage(work: Path, space: str, prompts: PromptFile, sources: list[Any], *, encoder: Any, config: Any,
                 progress: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The new rows' vectors in the image space ``space`` (zero where a row has none), its row mask and the image
    counts: from the store's image column where the new files have it, else none."""
    column = config.image_column
    none = {"refs": 0, "images": 0, "rows": 0, "skipped": {}}
    if column not in prompts.columns:
        log.warning("%s: the new prompts name no images (no column %r): they are not in this space", space, column)
        return np.zeros((len(prompts), encoder.dim), np.float32), np.zeros(len(prompts), bool), none
    try:
        done = embed_images(prompts, column=column, bases=list(dict.fromkeys(s.path.parent for s in sources)),
                            encoder=encoder, folder=work / space, shard_size=config.shard_size,
                            batch_size=config.batch_size, desc=f"CLIP images ({space})", progress=progress)
    except InputError as e:
        log.warning("%s: none of the new prompts' images could be read (%s): they are not in this space", space, e)
        return np.zeros((len(prompts), encoder.dim), np.float32), np.zeros(len(prompts), bool), none
    report_images(space, done.stats)
    return ShardedMatrix(done.paths)[0:len(prompts)], done.members, done.stats


def _read_stage(work: Path, store: Store, sources: list[Any], *, limit: int | None, columns: dict[str, str],
                progress: bool) -> tuple[PromptFile, dict[str, int]]:
    """The new prompts: cleaned, unique, not in the store (nor removed from it), in the store's columns, as
    ``work/prompts.arrow`` (a resumed addition reads it back)."""
    done, stats_path = work / "prompts.arrow", work / "clean_stats.json"
    if not (done.is_file() and stats_path.is_file()):
        dedup = ExactDedup(sources, folder=work / "exact_dedup", limit=limit, progress=progress,
                           columns=meta_columns(sources))
        known = _store_keys(store)
        schema = pa.schema([pa.field("prompt", pa.string()), *metadata.schema_of(columns)])
        in_store = 0

        def batches():
            nonlocal in_store
            for batch in dedup.batches():
                keys = np.array([dedup_key(t) for t in batch.column(0).to_pylist()], dtype="S16")
                pos = np.searchsorted(known, keys)
                hit = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == keys) if len(known) else \
                    np.zeros(len(keys), dtype=bool)
                in_store += int(hit.sum())
                yield _conform(batch.filter(pa.array(~hit)), schema)

        write_prompt_file(done, batches())
        stats = {**dedup.stats.to_dict(), "already_in_store": in_store}
        stats["unique"] -= in_store
        write_bytes_atomic(stats_path, json.dumps(stats).encode())
    return PromptFile(done), json.loads(stats_path.read_text())


def _store_keys(store: Store) -> np.ndarray:
    """Sorted dedup keys of the store's live prompts and of the prompts removed from it."""
    keys = [np.array([dedup_key(t) for t in block.to_pylist()], dtype="S16") for block in live_prompts(store)]
    removed = store.manifest.build.get(REMOVED_KEYS, [])
    keys.append(np.array([bytes.fromhex(k) for k in removed], dtype="S16"))
    return np.sort(np.concatenate(keys)) if keys else np.empty(0, dtype="S16")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in the store's columns: those it lacks null, each cast to the store's type."""
    arrays = [batch.column(0)]
    for field in list(schema)[1:]:
        if field.name in batch.schema.names:
            arrays.append(metadata.typed(batch.column(field.name), str(field.type), name=field.name,
                                         where="the new prompts"))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.record_batch(arrays, schema=schema)


class _Rows:
    """Rows ``rows`` of a row-sliceable matrix, as one (``len``, ``shape``, slices)."""

    def __init__(self, matrix: Any, rows: np.ndarray):
        self.matrix, self.rows = matrix, rows
        self.dim = matrix.shape[1]
        self.shape = (len(rows), self.dim)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[key]])


def _chain(old: np.ndarray, new: Any, step: int = 65_536):
    for start in range(0, len(old), step):
        yield old[start:start + step]
    for start in range(0, len(new), step):
        yield np.asarray(new[start:start + step])


def _all_batches(store: Store, new: PromptFile):
    """The store's rows (id dropped: the writer numbers them again, the same), then the new ones (in the store's
    columns)."""
    names = ["prompt", *store.columns]
    for batch in store.table.select(names).to_batches(max_chunksize=65_536):
        yield batch
    schema = store.table.select(names).schema
    for batch in new.batches():
        yield pa.record_batch([batch.column(n) for n in names], schema=schema)


def _near_dedup_stage(work: Path, store: Store, minilm_new: ShardedMatrix, config: Any, progress: bool, *,
                      map_blocks: Any) -> np.ndarray:
    """Keep mask of the new prompts: not near an earlier new one, nor a live prompt of the store (MiniLM
    cosine above the store's threshold, searched in its MiniLM index)."""
    done = work / "keep.npy"
    if done.is_file():
        keep = np.load(done)
        if keep.shape == (len(minilm_new),):
            return keep
    threshold = config.near_dup_threshold
    if threshold is None:
        keep = np.ones(len(minilm_new), dtype=bool)
    else:
        keep = near_duplicate_keep(minilm_new, threshold=threshold, seed=config.seed, progress=progress,
                                   folder=work, map_blocks=map_blocks)
        index = store.indexes["minilm"]
        for start in range(0, len(minilm_new), SEARCH_CHUNK):
            q = np.ascontiguousarray(minilm_new[start:start + SEARCH_CHUNK], dtype=np.float32)
            scores, ids = _nearest_live(index, q, store)
            keep[start:start + len(q)] &= ~((ids >= 0) & (scores > threshold))
    with atomic_path(done) as tmp:
        np.save(tmp, keep)
    return keep


def _nearest_live(index: Any, q: np.ndarray, store: Store) -> tuple[np.ndarray, np.ndarray]:
    """The nearest live stored prompt of each query (score, id; -1 when none)."""
    k = min(store.rows, 8)
    scores, ids = index.search(q, k)
    if store.removed is not None:
        dead = (ids >= 0) & store.removed[np.maximum(ids, 0)]
        scores = np.where(dead, -np.inf, scores)
        ids = np.where(dead, -1, ids)
        best = np.argmax(scores, axis=1)
        return scores[np.arange(len(q)), best], ids[np.arange(len(q)), best]
    return scores[:, 0], ids[:, 0]


def _kept_file(work: Path, new: PromptFile, keep: np.ndarray) -> PromptFile:
    path = work / "kept.arrow"
    if not (path.is_file() and len(PromptFile(path)) == int(keep.sum())):
        write_prompt_file(path, new.take_rows(keep))
    return PromptFile(path)


def _fragment_stage(work: Path, store: Store, new: PromptFile, encodings: dict[str, TextEncoding],
                    dims: dict[str, int], *, engine: Any, config: Any, progress: bool):
    """The vocabulary mined again over the live prompts and the new ones: its file, counts, statistics, and
    per space one float16 shard of its vectors (the old fragments' copied, the new ones' embedded)."""
    done, meta = work / "fragments.arrow", work / "fragments.json"
    if not (done.is_file() and meta.is_file()):
        blocks = (b for part in (live_prompts(store), new.blocks()) for b in part)
        vocab = mine(blocks, store, total=store.live_rows + len(new), progress=progress)
        write_prompt_file(done, [vocab.fragments])
        write_bytes_atomic(meta, json.dumps({"stats": vocab.stats, "counts": vocab.counts.tolist()}).encode())
    fragments = PromptFile(done)
    info = json.loads(meta.read_text())
    texts = fragments[:].to_pylist()
    old = store.fragments.ids_by_text if store.fragments is not None else {}
    rows = np.array([old.get(t, -1) for t in texts], dtype=np.int64)
    fresh = np.flatnonzero(rows < 0)
    fresh_file = work / "fragments_new.arrow"
    if not fresh_file.is_file():
        write_prompt_file(fresh_file, [pa.array([texts[i] for i in fresh], pa.string())])
    paths = {}
    sources = {"clip": store.primary, "minilm": MINILM_SPACE}  # the fragments' "clip" vectors: the primary space's
    for space in FRAGMENT_SPACES:
        embedded = ShardedMatrix(engine.embed(PromptFile(fresh_file), encodings[sources[space]], dim=dims[sources[space]],
                                              folder=work / f"fragments_{space}", shard_size=config.shard_size,
                                              batch_size=config.batch_size, dtype=np.float16,
                                              desc=f"new fragments ({space})", progress=progress)) \
            if len(fresh) else None
        out = np.zeros((len(texts), dims[sources[space]]), dtype=np.float16)
        have = rows >= 0
        if have.any():
            out[have] = store.fragments.vectors[space][rows[have]]
        if embedded is not None:
            out[fresh] = embedded[0:len(fresh)]
        path = work / f"{FRAGMENT_VECTORS[space]}"
        with atomic_path(path) as tmp:
            np.save(tmp, out)
        paths[space] = [path]
    return fragments, np.asarray(info["counts"], dtype=np.int64), info["stats"], paths


def _drift_notes(space: str, info: IndexInfo, rows: int, dim: int, config: Any, *, spaces: list[str]) -> list[str]:
    """What a rebuild would change for the index of ``space`` now that it holds ``rows``."""
    notes = []
    if info.type in IVF_TYPES and info.imbalance and info.imbalance_at_training and \
            info.imbalance >= DRIFT * info.imbalance_at_training:
        notes.append(f"the {space} index's lists have drifted (imbalance factor {info.imbalance:.2f}, "
                     f"{info.imbalance_at_training:.2f} when trained): searches scan more rows than they need; "
                     "rebuild the store ('nearest-prompt build') to train its lists again")
    if config.index_type == "auto":
        plan = plan_index(rows, dim, memory_budget_gb=split_budget(config.memory_budget_gb, spaces)[space])
        if plan.type != info.type or (info.type in IVF_TYPES and plan.params["nlist"] >= 2 * info.params["nlist"]):
            notes.append(f"a build of {rows:,} prompts would give the {space} index {_shape(plan.type, plan.params)} "
                         f"(it has {_shape(info.type, info.params)}); rebuild the store ('nearest-prompt build') "
                         "when search time or recall matter")
    return notes


def _shape(kind: str, params: dict[str, Any]) -> str:
    return f"{kind} with {params['nlist']:,} lists" if "nlist" in params else kind


def _stage(name: str) -> None:
    """Stage boundaries as debug log records (``-v``; the tests kill the process at each)."""
    log.debug("add stage: %s", name)
