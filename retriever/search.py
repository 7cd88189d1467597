"""k-nearest-neighbour search over the store's FAISS index; arrays in, arrays out.

A search may be restricted to ``allowed`` rows (a bool mask: live rows, a ``--where`` filter). The restriction
is applied inside the search, never by fetching more and dropping: up to ``FILTER_EXACT_MAX`` allowed rows are
scored exactly from the stored vectors; above, faiss skips the other rows itself (an ``IDSelectorBitmap`` in
the search parameters), IVF indexes probing ``1 / sqrt(fraction allowed)`` times their tuned lists (at least
8), and a query that still finds fewer than ``k`` allowed rows is searched again with four times the lists (up to all of
them). Either way ``k`` results come back whenever ``k`` rows are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nearest_prompt.common.errors import InputError
from nearest_prompt.index_store.format import SPACES  # noqa: F401  (re-exported: the spaces a store searches)

QUERY_CHUNK = 4096
FILTER_EXACT_MAX = 65_536  # allowed rows up to which a filtered search scores them exactly
FILTER_MIN_NPROBE = 8  # lists a filtered search of an IVF index probes at least, before widening


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


def search(index: Any, queries: np.ndarray, *, k: int, allowed: np.ndarray | None = None,
           vectors: np.ndarray | None = None) -> Neighbors:
    """Top-``k`` inner-product neighbours of unit ``queries`` [n, d]; with ``allowed`` (bool [ntotal]) among
    those rows only (``vectors``: the index's rows, float16 [ntotal, d], for exact scoring of few rows)."""
    check_k(k, int(index.ntotal))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise InputError(f"queries must have shape (n, {index.d}), got {q.shape}", param="queries")
    if not np.isfinite(q).all():
        raise InputError("queries hold non-finite values (NaN or inf)", param="queries")
    if allowed is not None and allowed.shape != (index.ntotal,):
        raise ValueError(f"allowed mask of shape {allowed.shape} for an index of {index.ntotal} rows")
    ids = np.empty((len(q), k), dtype=np.int64)
    scores = np.empty((len(q), k), dtype=np.float32)
    rows = None if allowed is None else np.flatnonzero(allowed)
    for start in range(0, len(q), QUERY_CHUNK):
        part = q[start:start + QUERY_CHUNK]
        if rows is None:
            s, i = index.search(part, k)
        elif vectors is not None and len(rows) <= FILTER_EXACT_MAX:
            s, i = _exact_among(vectors, rows, part, k)
        else:
            s, i = _selector_search(index, part, k, allowed, len(rows))
            short = np.flatnonzero((i[:, :min(k, len(rows))] < 0).any(axis=1))
            if len(short) and vectors is not None:  # a graph that found too few allowed rows: score them all
                s[short], i[short] = _exact_among(vectors, rows, part[short], k)
        ids[start:start + len(i)] = i
        scores[start:start + len(s)] = s
    scores[ids < 0] = -np.inf
    return Neighbors(ids=ids, scores=scores)


class _Rows:
    """Rows ``rows`` of ``vectors`` as a row-sliceable matrix (for ``exact_knn``)."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray):
        self.vectors, self.rows = vectors, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.vectors[self.rows[part]], dtype=np.float32)


def _exact_among(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from nearest_prompt.common.topk import exact_knn

    if not len(rows):
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    s, pos = exact_knn(q, _Rows(vectors, rows), k)
    return s, np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)


def _selector_search(index: Any, q: np.ndarray, k: int, allowed: np.ndarray,
                     n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's own filtered search: an ID selector over ``allowed`` in the search parameters."""
    import faiss

    from nearest_prompt.index_store.knobs import quantizer_ef
    from nearest_prompt.index_store.refine import RefinedIndex, rerank

    if n_allowed == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    base, kk = index, k
    if isinstance(index, RefinedIndex):
        base, kk = index.base, min(index.ntotal, max(k, index.k_factor * k))
    bitmap = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    want = min(k, n_allowed)
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        fraction = n_allowed / len(allowed)
        floor = max(ivf.nprobe, FILTER_MIN_NPROBE)  # an index tuned to very few lists needs more under a filter
        nprobe = min(ivf.nlist, int(np.ceil(floor / np.sqrt(fraction))))  # fraction <= 1: never below floor
        quantizer = faiss.downcast_index(ivf.quantizer)
        tuned_ef = quantizer.hnsw.efSearch if isinstance(quantizer, faiss.IndexHNSW) else None

        def params(nprobe: int) -> Any:
            p = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            if tuned_ef is not None:  # never a narrower graph walk than the build tuned
                p.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(tuned_ef, quantizer_ef(nprobe)))
            return p
        knobs, widest = [nprobe], ivf.nlist
    elif isinstance(faiss.downcast_index(base), faiss.IndexHNSW):
        ef = faiss.downcast_index(base).hnsw.efSearch

        def params(ef: int) -> Any:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        knobs, widest = [max(ef, kk)], max(ef, kk) * 64
    else:
        def params(_: int) -> Any:
            return faiss.SearchParameters(sel=selector)
        knobs, widest = [0], 0
    s, i = base.search(q, kk, params=params(knobs[0]))
    todo = np.flatnonzero((i[:, :want] < 0).any(axis=1))
    knob = knobs[0]
    while len(todo) and knob < widest:  # too few allowed rows in what was probed: probe more
        knob = min(widest, knob * 4)
        s2, i2 = base.search(q[todo], kk, params=params(knob))
        s[todo], i[todo] = s2, i2
        todo = todo[(i2[:, :want] < 0).any(axis=1)]
    if isinstance(index, RefinedIndex):
        return rerank(index.rows, q, i, k)
    return s[:, :k], i[:, :k]
