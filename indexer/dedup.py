"""Near-duplicate removal in MiniLM space: every pair above the threshold, found by range search in blocks
(no all-pairs matrix), and a greedy rule over the pairs.

Rule: walk the prompts in corpus order; a prompt is dropped when an earlier prompt that is itself kept has
MiniLM cosine above the threshold with it. The first of a family of variants survives; a dropped prompt
never drops others, so chains A~B~C with A !~ C keep A and C.

The pairs: up to ``EXACT_MAX_ROWS`` prompts an exact range search in memory; above, an IVF-SQ8 index written
with faiss's own on-disk parts (``ivf_blocks``) and range-searched a block of query rows at a time, each
candidate within ``CANDIDATE_MARGIN`` of the threshold rescored exactly from the vectors. The blocks are
independent: ``map_blocks`` runs them where an engine says (Ray tasks against the shared index file), and
only the pairs come back, for ``keep_from_pairs`` here. A prompt with more than ``MAX_NEIGHBOURS`` others
above the threshold keeps its nearest ones only (such a family may keep a few more members).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from nearest_prompt.common.progress import progress_bar

from .faiss_index import new_index, plan_index, train_ivf
from .ivf_blocks import BoundedIVF, MapBlocks, map_here, write_ondisk
from .shards import ShardedMatrix, float_blocks

log = logging.getLogger(__name__)

EXACT_MAX_ROWS = 100_000  # above this, range-search an IVF index instead of exact flat
CHUNK = 65_536  # query rows per block (larger blocks: more queries share the lists they map)
NPROBE = 16
CANDIDATE_MARGIN = 0.02  # IVF-SQ8 scores are approximate: keep candidates this far below the threshold,
                         # then decide on exact cosines
MAX_NEIGHBOURS = 10_000  # pairs kept per query row at most (its nearest)

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (lo, hi, exact cosine), lo < hi


def _pairs_of(start: int, q: np.ndarray, rows: np.ndarray, ids: np.ndarray, approx: np.ndarray,
              vectors: ShardedMatrix | np.ndarray, threshold: float) -> Pairs:
    """Candidates (query row within the block, id, approximate score) made into exact pairs above threshold."""
    a = rows + start
    keep = ids != a
    rows, ids, approx, a = rows[keep], ids[keep], approx[keep], a[keep]
    if len(rows):  # at most MAX_NEIGHBOURS per query row, its nearest
        order = np.lexsort((-approx, rows))
        rows, ids, approx, a = rows[order], ids[order], approx[order], a[order]
        first = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        rank = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        sel = rank < MAX_NEIGHBOURS
        rows, ids, a = rows[sel], ids[sel], a[sel]
    exact = _exact_cosines(q[rows], vectors, ids)
    ok = exact > threshold
    return np.minimum(a, ids)[ok], np.maximum(a, ids)[ok], exact[ok]


def pairs_block(index_path: str, vectors: ShardedMatrix | np.ndarray, start: int, stop: int,
                threshold: float) -> Pairs:
    """The pairs above ``threshold`` of query rows ``start:stop``, against the IVF index file (a task of its
    own: it opens the file, maps what its queries probe, and returns only the pairs)."""
    q = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
    rows, ids, approx = BoundedIVF(index_path).range_search(q, threshold - CANDIDATE_MARGIN, nprobe=NPROBE)
    return _pairs_of(start, q, rows, ids, approx, vectors, threshold)


def near_duplicate_pairs(vectors: ShardedMatrix | np.ndarray, *, threshold: float, seed: int = 0,
                         progress: bool = False, folder: str | Path | None = None,
                         map_blocks: MapBlocks | None = None) -> Pairs:
    """Every pair (lo < hi) with exact cosine above ``threshold``, and its cosine (see the module's notes)."""
    import faiss

    n, d = vectors.shape
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if n < 2:
        return empty
    parts: list[Pairs] = []
    with progress_bar(total=n, desc="near-dedup", enabled=progress) as bar:
        if n <= EXACT_MAX_ROWS:
            flat = faiss.IndexFlatIP(d)
            for _, block in float_blocks(vectors, CHUNK):
                flat.add(block)
            for start, q in float_blocks(vectors, CHUNK):
                lims, dist, ids = flat.range_search(q, threshold)
                rows = np.repeat(np.arange(len(q)), np.diff(lims).astype(np.int64))
                parts.append(_pairs_of(start, q, rows, ids.astype(np.int64), dist, vectors, threshold))
                bar.update(len(q))
        else:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                path = Path(tmp) / "near_dedup.faiss"
                index = new_index(plan_index(n, d, index_type="ivfsq8"), d)
                train_ivf(index, vectors, rng=np.random.default_rng(seed))
                write_ondisk(path, index, vectors, map_blocks=map_blocks)
                tasks = [(s, min(s + CHUNK, n), threshold) for s in range(0, n, CHUNK)]
                for (s, e, _), pairs in zip(tasks, (map_blocks or map_here)(pairs_block, (str(path), vectors), tasks)):
                    parts.append(pairs)
                    bar.update(e - s)
    if not parts:
        return empty
    lo, hi, sims = (np.concatenate(p) for p in zip(*parts))
    key, first = np.unique(lo * n + hi, return_index=True)  # each pair once (both rows may have found it)
    return lo[first], hi[first], sims[first]


def _exact_cosines(q: np.ndarray, vectors: ShardedMatrix | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row-wise dot products of ``q`` with ``vectors[ids]`` in float32 (rows read in sorted order)."""
    if not len(ids):
        return np.empty(0, dtype=np.float32)
    uniq, inverse = np.unique(ids, return_inverse=True)
    other = np.asarray(vectors[uniq], dtype=np.float32)[inverse]
    return np.einsum("ij,ij->i", q, other).astype(np.float32)


def keep_from_pairs(n: int, lo: np.ndarray, hi: np.ndarray, sims: np.ndarray, *, threshold: float) -> np.ndarray:
    """Apply the greedy rule (module docstring) to the pairs: boolean keep-mask over n rows."""
    keep = np.ones(n, dtype=bool)
    sel = sims > threshold
    lo, hi = lo[sel], hi[sel]
    order = np.lexsort((hi, lo))
    for a, b in zip(lo[order].tolist(), hi[order].tolist()):
        if keep[a]:
            keep[b] = False
    return keep


def near_duplicate_keep(vectors: ShardedMatrix | np.ndarray, *, threshold: float, seed: int = 0,
                        progress: bool = False, folder: str | Path | None = None,
                        map_blocks: MapBlocks | None = None) -> np.ndarray:
    """Boolean keep-mask over rows of unit ``vectors`` [n, d] (any float dtype)."""
    lo, hi, sims = near_duplicate_pairs(vectors, threshold=threshold, seed=seed, progress=progress, folder=folder,
                                        map_blocks=map_blocks)
    keep = keep_from_pairs(len(vectors), lo, hi, sims, threshold=threshold)
    log.info("near-dedup at cosine > %.3f: %d of %d prompts dropped", threshold,
             len(vectors) - int(keep.sum()), len(vectors))
    return keep
