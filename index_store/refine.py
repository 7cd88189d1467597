"""A compressed index whose candidates are re-scored exactly: the first pass of a product-quantised IVF index
(codes in memory, cheap) returns ``k_factor * k`` candidates per query, which are scored again against the
vectors kept on disk in float16 and cut to the best ``k``. What faiss's ``IndexRefine`` does, over a file of
the store's own instead of a second faiss index held in memory.

The candidate rows are read with ``pread`` from the file under the store's memory map (``Rows``), not through
the map: through a map the kernel also maps the cached pages around each row into the process (fault-around),
so after a thousand queries at 10M rows most of a 15 GB file counts as the process's resident memory. Read
that way, the rows pass through a buffer and the file's pages stay in the page cache only.
"""

from __future__ import annotations

import mmap
import os
import weakref
from itertools import repeat
from typing import Any

import numpy as np

REFINE_CHUNK_BYTES = 32 << 20  # candidate rows gathered at once: as many queries' as fit (at least one query's)


class Rows:
    """Rows of a matrix [rows, d] by id. Over a read-only memory map of a whole .npy file (``np.load(path,
    mmap_mode="r")``) each row is read with ``pread`` from that file, opened once here (so the rows stay those of
    the file the map was opened on); over any other array, by indexing it."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.shape, self.dtype = vectors, vectors.shape, vectors.dtype
        self._fd = None
        if _whole_file_map(vectors) and hasattr(os, "pread"):
            fd = os.open(vectors.filename, os.O_RDONLY)
            if os.fstat(fd).st_size < vectors.offset + vectors.nbytes:  # the file is not the mapped one any more
                os.close(fd)
                return
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead around a row on a cold cache
            self._fd, self._row_bytes = fd, vectors.strides[0]
            weakref.finalize(self, os.close, fd)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` (int, each in range) in that order, of the matrix's dtype."""
        unique, inverse = np.unique(ids, return_inverse=True)  # file order, each row read once
        if self._fd is None:
            return np.asarray(self.vectors[unique])[inverse.ravel()]
        size, count = self._row_bytes, len(unique)
        offsets = (self.vectors.offset + unique * size).tolist()
        # one pread a row, the loop in C (map): a system call a row is the cost, not Python's work around it
        data = b"".join(map(os.pread, repeat(self._fd, count), repeat(size, count), offsets))
        if len(data) != count * size:
            raise OSError(f"{self.vectors.filename} is shorter than its header says: rows past its end were asked for")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, *self.shape[1:])[inverse.ravel()]


def _whole_file_map(vectors: np.ndarray) -> bool:
    """True for the array ``np.load(path, mmap_mode="r")`` returns: a read-only C-ordered map of the file's rows
    (not a view into one, whose offset and strides are not the file's)."""
    return (isinstance(vectors, np.memmap) and isinstance(vectors.base, mmap.mmap) and vectors.filename is not None
            and not vectors.flags.writeable and vectors.flags.c_contiguous and vectors.ndim == 2)


class RefinedIndex:
    """``search(queries, k)`` like a FAISS index: ``base`` (any FAISS index over the same rows) proposes
    ``k_factor * k`` candidates, ``vectors`` (float16 [ntotal, d], memory-mapped) decides."""

    def __init__(self, base: Any, vectors: np.ndarray, *, k_factor: int):
        if vectors.shape != (base.ntotal, base.d):
            raise ValueError(f"refine vectors of shape {vectors.shape} for an index of {base.ntotal} x {base.d}")
        self.base, self.vectors, self.k_factor = base, vectors, int(k_factor)
        self.rows = Rows(vectors)
        self.ntotal, self.d = int(base.ntotal), int(base.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(self.ntotal, max(k, self.k_factor * k))
        _, cand = self.base.search(q, kk)
        return rerank(self.rows, q, cand, k)


def rerank(vectors: np.ndarray | Rows, queries: np.ndarray, cand: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidate rows ``cand`` [n, kk] (-1: none), scored exactly against
    ``vectors`` (float16 [rows, d]); scores and ids as a FAISS search gives them."""
    if cand.shape[1] < k:  # fewer candidates than asked for: the rest is padding
        cand = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=-1)
    exact = exact_scores(vectors, queries, cand)
    best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(exact, best, 1)
    ids = np.where(np.isfinite(scores), np.take_along_axis(cand, best, 1), -1)
    return scores, ids


def exact_scores(vectors: np.ndarray | Rows, queries: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Inner products float32 [n, kk] of each query with its candidate rows ``cand`` [n, kk] of ``vectors`` (float16
    [rows, d], read a chunk of queries at a time through ``Rows``); -inf where cand is -1."""
    rows = vectors if isinstance(vectors, Rows) else Rows(vectors)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    d, kk = rows.shape[1], cand.shape[1]
    out = np.full((len(q), kk), -np.inf, dtype=np.float32)
    chunk = max(1, REFINE_CHUNK_BYTES // max(1, kk * d * rows.dtype.itemsize))
    for s in range(0, len(q), chunk):
        c = cand[s:s + chunk]
        valid = c >= 0
        vecs = rows.take(np.where(valid, c, 0).ravel()).reshape(len(c), kk, d)
        out[s:s + len(c)] = np.where(valid, _inner_products(q[s:s + len(c)], vecs), -np.inf)
    return out


def _inner_products(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 [n, kk]: each query [n, d] with its own rows [n, kk, d]. Float16 rows are scored by faiss's fp16
    scalar-quantizer kernels, whose codes are the rows' bytes as they are (numpy's float16 to float32 cast alone
    costs three times as much); other rows by numpy."""
    if rows.dtype != np.float16:
        return np.einsum("qd,qkd->qk", queries, rows.astype(np.float32, copy=False))
    import faiss

    n, kk, d = rows.shape
    scorer = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    codes = np.ascontiguousarray(rows).view(np.uint8)
    out = np.empty((n, kk), dtype=np.float32)
    for i in range(n):
        scorer.reset()
        scorer.add_sa_codes(codes[i])
        scores, pos = scorer.search(queries[i:i + 1], kk)
        out[i, pos[0]] = scores[0]
    return out
