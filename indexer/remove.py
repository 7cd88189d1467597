"""Remove prompts from a store without a rebuild: they never appear in an answer again, and every other row
keeps its id.

The rows to remove are chosen by ids (a file: one id a line, or an ``.npy`` of integers), by a filter over
the kept columns (``index_store.where``) or by a regular expression over the prompt text (Python's ``re``,
searched anywhere in the prompt). The next version of the store (``revision``) marks them in
``removed.npy``, which every search honours (the search skips them inside faiss, see
``retriever.search``); their text and kept columns are blanked in ``prompts.arrow``, their MiniLM and CLIP
vectors zeroed in the vector files, and the dedup keys of their text recorded in the manifest so that
``add`` never brings them back. The FAISS index files are linked unchanged: they keep the removed rows'
codes (vectors, never text) until the next build. The fragment vocabulary is counted again over the
remaining prompts; a fragment only removed prompts held (fewer than the rule's minimum) goes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nearest_prompt import index_store
from nearest_prompt.common.atomic import atomic_path
from nearest_prompt.common.errors import InputError
from nearest_prompt.common.text import dedup_key
from nearest_prompt.index_store import Store
from nearest_prompt.index_store.format import FRAGMENT_FILES, FRAGMENT_SPACES, MANIFEST, REMOVED, vectors_file

from .build import write_fragments
from .prompt_file import PromptFile, write_prompt_file
from .revision import (
    REMOVED_KEYS,
    build_config,
    fragment_dims,
    link_or_copy,
    live_prompts,
    mine,
    open_for_change,
    record,
    zeroed,
)
from .workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoveResult:
    path: Path
    removed: int  # rows removed now
    already: int  # rows selected that were removed before
    live: int  # rows a search may return now
    fragments: int  # the vocabulary's size now


def remove(index: str | Path, *, ids: str | Path | None = None, where: str | None = None,
           matching: str | None = None, progress: bool = True) -> RemoveResult:
    """Remove the prompts of the store at ``index`` chosen by exactly one of ``ids`` (a file of row ids),
    ``where`` (a filter over the kept columns) or ``matching`` (a regular expression over the prompt)."""
    given = [name for name, value in (("ids", ids), ("where", where), ("matching", matching)) if value is not None]
    if len(given) != 1:
        raise InputError("give exactly one of ids, where and matching" + (f" (got {', '.join(given)})" if given
                                                                           else ""), param=given[-1] if given else "ids")
    store = open_for_change(index, what="removing prompts")
    chosen = _choose(store, ids=ids, where=where, matching=matching)  # bad input fails before the lock
    work = WorkDir(store.path).lock()
    try:
        for orphan in index_store.orphans(store.path):
            log.info("removing %s, left by a change that was killed", orphan)
            shutil.rmtree(orphan, ignore_errors=True)
        store = open_for_change(index, what="removing prompts")
        chosen = _choose(store, ids=ids, where=where, matching=matching)
        before = np.zeros(store.rows, dtype=bool) if store.removed is None else store.removed
        new = chosen & ~before
        if not new.any():
            return RemoveResult(store.path, 0, int(chosen.sum()), store.live_rows, len(store.fragments or ()))
        removed = before | new
        log.debug("remove stage: store")
        result = _write(work.path, store, new, removed, selector={given[0]: str(ids or where or matching)},
                        progress=progress)
        return RemoveResult(store.path, int(new.sum()), int((chosen & before).sum()), int((~removed).sum()), result)
    finally:
        for p in work.path.glob("removal_*"):
            p.unlink(missing_ok=True)
        work.remove_if_idle()
        work.unlock()


def _choose(store: Store, *, ids: Any, where: str | None, matching: str | None) -> np.ndarray:
    if where is not None:
        return index_store.where.mask(store.table, where)
    if matching is not None:
        try:
            pattern = re.compile(matching)
        except re.error as e:
            raise InputError(f"{matching!r} is not a regular expression ({e})", param="matching") from None
        hits = np.zeros(store.rows, dtype=bool)
        start = 0
        for chunk in store.table.column("prompt").chunks:
            hits[start:start + len(chunk)] = [t is not None and bool(pattern.search(t)) for t in chunk.to_pylist()]
            start += len(chunk)
        return hits
    return _read_ids(Path(ids).expanduser(), store.rows)


def _read_ids(path: Path, rows: int) -> np.ndarray:
    """A mask of the row ids in ``path`` (``.npy`` of integers, or text: one id a line, ``#`` comments)."""
    if not path.is_file():
        raise InputError(f"no file {path}", param="ids")
    if path.suffix == ".npy":
        try:
            values = np.load(path)
        except (ValueError, OSError) as e:
            raise InputError(f"{path} is not a readable .npy file ({e})", param="ids") from None
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"{path} holds {values.dtype} of shape {values.shape}; give a 1-d array of "
                             "integers", param="ids")
        lines = [(i + 1, int(v)) for i, v in enumerate(values.tolist())]
    else:
        lines = []
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                lines.append((n, int(text)))
            except ValueError:
                raise InputError(f"{path}:{n}: {text!r} is not a row id (one integer a line)",
                                 param="ids") from None
    mask = np.zeros(rows, dtype=bool)
    for n, value in lines:
        if not 0 <= value < rows:
            raise InputError(f"{path}:{n}: row id {value} is outside the store (0..{rows - 1})", param="ids")
        mask[value] = True
    return mask


def _write(work: Path, store: Store, new: np.ndarray, removed: np.ndarray, *, selector: dict[str, str],
           progress: bool) -> int:
    """The store's next version with ``removed`` rows marked, blanked and zeroed; returns the vocabulary size."""
    config = build_config(store)
    names = ["prompt", *store.columns]
    keys = [dedup_key(t).hex() for t in store.table.column("prompt").filter(pa.array(new)).to_pylist() if t]
    with index_store.StoreWriter(store.path) as writer:
        writer.write_prompts(_blanked(store, names, removed))
        for space, vectors in store.vectors.items():
            writer.write_matrix(vectors_file(space), zeroed(vectors, removed), rows=store.rows, dim=vectors.shape[1])
        with atomic_path(writer.staging / REMOVED) as tmp:
            np.save(tmp, removed)
        kept_files = {*map(vectors_file, store.vectors), *FRAGMENT_FILES, REMOVED, MANIFEST, index_store.format.PROMPTS}
        for name in store.manifest.files:
            if name not in kept_files:  # the index files (and their lists), unchanged
                link_or_copy(store.path / name, writer.staging / name)
        after = dataclasses.replace(store, removed=removed)
        fragments, counts, stats, paths = _vocabulary(work, after, progress=progress)
        finfo = write_fragments(writer, fragments, {"stats": stats, "counts": counts.tolist()}, paths,
                                dims=fragment_dims(store), seed=config.seed,
                                map_blocks=None)
        build_keys = [*store.manifest.build.get(REMOVED_KEYS, []), *keys]
        manifest = record(store, "removals", {"selector": selector, "removed": int(new.sum()),
                                              "live_rows": int((~removed).sum())}, fragments=finfo)
        manifest.build[REMOVED_KEYS] = build_keys
        log.debug("remove stage: commit")
        writer.commit(manifest)
    log.debug("remove stage: committed")
    return finfo.rows


def _blanked(store: Store, names: list[str], removed: np.ndarray):
    """The prompt table (without ids) with the removed rows' text empty and their kept columns null."""
    start = 0
    for batch in store.table.select(names).to_batches(max_chunksize=65_536):
        mask = pa.array(removed[start:start + batch.num_rows])
        start += batch.num_rows
        columns = [pc.if_else(mask, pa.scalar("", pa.string()), batch.column(0))]
        columns += [pc.if_else(mask, pa.scalar(None, c.type), c) for c in batch.columns[1:]]
        yield pa.record_batch(columns, schema=batch.schema)


def _vocabulary(work: Path, store: Store, *, progress: bool):
    """The vocabulary counted again over the live prompts, restricted to the fragments the store has vectors
    for (removing prompts only lowers counts), with those vectors as one shard a space."""
    vocab = mine(live_prompts(store), store, total=store.live_rows, progress=progress)
    old = store.fragments.ids_by_text if store.fragments is not None else {}
    texts = vocab.fragments.to_pylist()
    rows = np.array([old.get(t, -1) for t in texts], dtype=np.int64)
    have = rows >= 0
    fragments_path = work / "removal_fragments.arrow"
    write_prompt_file(fragments_path, [pa.array([t for t, h in zip(texts, have) if h], pa.string())])
    paths = {}
    dims = fragment_dims(store)
    for space in FRAGMENT_SPACES:
        vectors = store.fragments.vectors[space][rows[have]] if store.fragments is not None else \
            np.zeros((0, dims[space]), np.float16)
        path = work / f"removal_{space}.npy"
        with atomic_path(path) as tmp:
            np.save(tmp, np.asarray(vectors, dtype=np.float16))
        paths[space] = [path]
    stats = {**vocab.stats, "fragments": int(have.sum())}
    return PromptFile(fragments_path), vocab.counts[have], json.loads(json.dumps(stats)), paths
