"""A compressed index whose candidates are re-scored exactly: the first pass of a product-quantised IVF index
(codes in memory, cheap) returns ``k_factor * k`` candidates per query, which are scored again against the
vectors kept on disk in float16 (memory-mapped: a search pages in only the rows of its candidates) and cut
to the best ``k``. What faiss's ``IndexRefine`` does, over a file of the store's own instead of a second
faiss index held in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REFINE_CHUNK = 64  # queries whose candidate rows are gathered at once (64 x 100 x 1024 floats: 26 MB)


class RefinedIndex:
    """``search(queries, k)`` like a FAISS index: ``base`` (any FAISS index over the same rows) proposes
    ``k_factor * k`` candidates, ``vectors`` (float16 [ntotal, d], memory-mapped) decides."""

    def __init__(self, base: Any, vectors: np.ndarray, *, k_factor: int):
        if vectors.shape != (base.ntotal, base.d):
            raise ValueError(f"refine vectors of shape {vectors.shape} for an index of {base.ntotal} x {base.d}")
        self.base, self.vectors, self.k_factor = base, vectors, int(k_factor)
        self.ntotal, self.d = int(base.ntotal), int(base.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(self.ntotal, max(k, self.k_factor * k))
        _, cand = self.base.search(q, kk)
        return rerank(self.vectors, q, cand, k)


def rerank(vectors: np.ndarray, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidate rows ``cand`` [n, kk] (-1: none), scored exactly against
    ``vectors`` (float16 [rows, d], memory-mapped); scores and ids as a FAISS search gives them."""
    if cand.shape[1] < k:  # fewer candidates than asked for: the rest is padding
        cand = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=-1)
    exact = exact_scores(vectors, queries, cand)
    best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(exact, best, 1)
    ids = np.where(np.isfinite(scores), np.take_along_axis(cand, best, 1), -1)
    return scores, ids


def exact_scores(vectors: np.ndarray, queries: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Inner products float32 [n, kk] of each query with its candidate rows ``cand`` [n, kk] of ``vectors`` (float16
    [rows, d], memory-mapped: rows are read in file order, a chunk of queries at a time); -inf where cand is -1."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    d, kk = vectors.shape[1], cand.shape[1]
    out = np.full((len(q), kk), -np.inf, dtype=np.float32)
    for s in range(0, len(q), REFINE_CHUNK):
        c = cand[s:s + REFINE_CHUNK]
        valid = c >= 0
        flat = np.where(valid, c, 0).ravel()
        order = np.argsort(flat, kind="stable")  # read the memory-mapped rows in file order
        vecs = np.empty((len(flat), d), dtype=np.float32)
        vecs[order] = vectors[flat[order]]
        exact = np.einsum("qd,qkd->qk", q[s:s + REFINE_CHUNK], vecs.reshape(len(c), kk, d))
        out[s:s + len(c)] = np.where(valid, exact, -np.inf)
    return out
