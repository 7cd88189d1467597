"""Near-duplicate removal in MiniLM space with FAISS kNN (no all-pairs matrix).

Rule: walk the prompts in corpus order; a prompt is dropped when an earlier
prompt that is itself kept has MiniLM cosine above the threshold with it
(among either one's ``k`` nearest neighbours). The first of a family of
variants survives; a dropped prompt never drops others, so chains
A~B~C with A !~ C keep A and C.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nearest_prompt.common.progress import progress_bar

from .faiss_index import new_index, plan_index, train_ivf
from .ivf_file import MappedIVF, write_ivf_file
from .shards import float_blocks

log = logging.getLogger(__name__)

EXACT_MAX_ROWS = 100_000  # above this, search an IVF index instead of exact flat
CHUNK = 65_536  # rows searched at a time (larger blocks: more queries share the lists they map)
NPROBE = 16
CANDIDATE_MARGIN = 0.02  # IVF-SQ8 scores are approximate: keep candidates this far below the threshold,
                         # then decide on exact cosines


def _knn_search(vectors: np.ndarray, *, seed: int, folder: Path) -> Callable[[np.ndarray, int], tuple]:
    """``search(queries, k)`` over ``vectors``: exact flat in memory up to ``EXACT_MAX_ROWS``, above
    that an IVF-SQ8 file in ``folder`` searched through bounded memory maps (``ivf_file``)."""
    import faiss

    n, d = vectors.shape
    if n <= EXACT_MAX_ROWS:
        flat = faiss.IndexFlatIP(d)
        for _, block in float_blocks(vectors, CHUNK):
            flat.add(block)
        return flat.search
    index = new_index(plan_index(n, d, index_type="ivfsq8"), d)
    train_ivf(index, vectors, rng=np.random.default_rng(seed))
    index.nprobe = NPROBE
    path = folder / "near_dedup.ivf"
    write_ivf_file(path, index, vectors)
    return MappedIVF(path).search


def near_duplicate_pairs(vectors: np.ndarray, *, threshold: float, k: int = 16, seed: int = 0,
                         progress: bool = False, folder: str | Path | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (lo < hi) with cosine above ``threshold`` among each row's ``k`` neighbours,
    and their exact cosines. One search serves every threshold >= ``threshold`` (see ``keep_from_pairs``).

    Above ``EXACT_MAX_ROWS`` the neighbours come from an IVF index with 8-bit
    codes written to ``folder`` (a temporary directory if None); its scores
    only pick candidates, and every candidate is rescored exactly from ``vectors``."""
    n = len(vectors)
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        search = _knn_search(vectors, seed=seed, folder=Path(tmp))
        kk = min(k + 1, n)
        lo_parts, hi_parts, sim_parts = [], [], []
        with progress_bar(total=n, desc="near-dedup", enabled=progress) as bar:
            for start, q in float_blocks(vectors, CHUNK):
                sims, ids = search(q, kk)
                rows = np.arange(start, start + len(q))[:, None]
                hit = (ids >= 0) & (ids != rows) & (sims > threshold - CANDIDATE_MARGIN)
                r, c = np.nonzero(hit)
                a, b = rows[r, 0], ids[r, c]
                exact = _exact_cosines(q[r], vectors, b)
                ok = exact > threshold
                lo_parts.append(np.minimum(a, b)[ok])
                hi_parts.append(np.maximum(a, b)[ok])
                sim_parts.append(exact[ok])
                bar.update(len(q))
    return np.concatenate(lo_parts), np.concatenate(hi_parts), np.concatenate(sim_parts)


def _exact_cosines(q: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row-wise dot products of ``q`` with ``vectors[ids]`` in float32 (rows read in sorted order)."""
    if not len(ids):
        return np.empty(0, dtype=np.float32)
    uniq, inverse = np.unique(ids, return_inverse=True)
    other = np.asarray(vectors[uniq], dtype=np.float32)[inverse]
    return np.einsum("ij,ij->i", q, other).astype(np.float32)


def keep_from_pairs(n: int, lo: np.ndarray, hi: np.ndarray, sims: np.ndarray, *, threshold: float) -> np.ndarray:
    """Apply the greedy rule (module docstring) to candidate pairs: boolean keep-mask over n rows."""
    keep = np.ones(n, dtype=bool)
    sel = sims > threshold
    lo, hi = lo[sel], hi[sel]
    order = np.lexsort((hi, lo))
    for a, b in zip(lo[order].tolist(), hi[order].tolist()):
        if keep[a]:
            keep[b] = False
    return keep


def near_duplicate_keep(vectors: np.ndarray, *, threshold: float, k: int = 16, seed: int = 0,
                        progress: bool = False, folder: str | Path | None = None) -> np.ndarray:
    """Boolean keep-mask over rows of unit ``vectors`` [n, d] (any float dtype)."""
    lo, hi, sims = near_duplicate_pairs(vectors, threshold=threshold, k=k, seed=seed, progress=progress,
                                        folder=folder)
    keep = keep_from_pairs(len(vectors), lo, hi, sims, threshold=threshold)
    log.info("near-dedup at cosine > %.3f: %d of %d prompts dropped", threshold,
             len(vectors) - int(keep.sum()), len(vectors))
    return keep
