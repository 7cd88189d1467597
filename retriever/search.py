"""k-nearest-neighbour search over the store's FAISS index; arrays in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nearest_prompt.common.errors import InputError
from nearest_prompt.index_store.format import SPACES  # noqa: F401  (re-exported: the spaces a store searches)

QUERY_CHUNK = 4096


@dataclass(frozen=True)
class Neighbors:
    """``ids`` int64 [n, k] (row ids, ``-1`` where faiss had no neighbour) and
    ``scores`` float32 [n, k] (cosine similarity, ``-inf`` where ``ids`` is -1),
    best first."""

    ids: np.ndarray
    scores: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0


def check_k(k: int, rows: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", param="k")
    if k > rows:
        raise InputError(f"k={k} is larger than the index ({rows} prompts); use k <= {rows}", param="k")


def resolve_k(k: int | None, *, default: int, rows: int) -> tuple[int, bool]:
    """The k to search with, and whether a default was cut to the store's size: a k the caller gave is
    checked (``check_k``: too large is an error); None takes ``default``, at most ``rows``."""
    if k is not None:
        check_k(k, rows)
        return k, False
    return (rows, True) if default > rows else (default, False)


def search(index: Any, queries: np.ndarray, *, k: int) -> Neighbors:
    """Top-``k`` inner-product neighbours of unit ``queries`` [n, d]."""
    check_k(k, int(index.ntotal))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise InputError(f"queries must have shape (n, {index.d}), got {q.shape}", param="queries")
    if not np.isfinite(q).all():
        raise InputError("queries hold non-finite values (NaN or inf)", param="queries")
    ids = np.empty((len(q), k), dtype=np.int64)
    scores = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), QUERY_CHUNK):
        s, i = index.search(q[start:start + QUERY_CHUNK], k)
        ids[start:start + len(i)] = i
        scores[start:start + len(s)] = s
    scores[ids < 0] = -np.inf
    return Neighbors(ids=ids, scores=scores)
