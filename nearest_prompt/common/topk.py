"""The one exact top-k: block by block over a row-sliceable matrix, merged; and recall@k.

``exact_knn`` scans ``vectors`` (a numpy array or anything with ``len`` and row slices, such as
``indexer.shards.ShardedMatrix``) ``block_rows`` rows at a time, so memory is queries x block
whatever the matrix size. ``recall_at_k`` is faiss contrib's intersection measure
(``knn_intersection_measure``), the mean of ``recall_each``'s per-query terms.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def merge_topk(best_s: np.ndarray, best_i: np.ndarray, cand_s: np.ndarray, cand_i: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score, id) pairs per row of two candidate sets, best first (ties: earlier first)."""
    s = np.concatenate([best_s, cand_s], axis=1)
    i = np.concatenate([best_i, cand_i], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def exact_knn(queries: np.ndarray, vectors: Any, k: int, *, block_rows: int = 16_384,
              backend: str = "faiss") -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries`` [n, d] over ``vectors`` [N, d]: scores float32 [n, k]
    and ids int64 [n, k] (-1 / -inf where N < k). ``backend`` "faiss" (``faiss.knn``) or "numpy" (BLAS
    matmul and ``argpartition``: the brute-force baseline of the benchmarks)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), block_rows):
        block = np.ascontiguousarray(vectors[start:start + block_rows], dtype=np.float32)
        kk = min(k, len(block))
        if backend == "faiss":
            import faiss

            s, i = faiss.knn(q, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        elif backend == "numpy":
            scores = q @ block.T
            i = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            s = np.take_along_axis(scores, i, 1)
        else:
            raise ValueError(f"backend must be 'faiss' or 'numpy', not {backend!r}")
        best_s, best_i = merge_topk(best_s, best_i, s, i + start, k)
    return best_s, best_i


def recall_each(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per query (row), the fraction of its exact top-k ids found in ``got``: the ids the two rows share (as a
    set) over k. ``got`` and ``exact`` are id tables of the same shape [n, k]."""
    got, exact = np.asarray(got), np.asarray(exact)
    if got.shape != exact.shape:
        raise ValueError(f"id tables of shapes {got.shape} and {exact.shape}: recall compares equal shapes")
    return np.array([np.intersect1d(g, e).size for g, e in zip(got, exact, strict=True)], float) / exact.shape[1]


def recall_at_k(got: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids found in ``got`` (faiss contrib's intersection measure)."""
    return float(recall_each(got, exact).mean())
