"""Resumable, sharded embedding: one ``.npy`` per shard, written atomically.

A finished shard file is its own "done" marker; a restarted build skips
every shard whose file exists with the right shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from common.atomic import atomic_path
from common.progress import progress_bar

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]


def _shard_ok(path: Path, rows: int, dim: int) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == (rows, dim)


def embed_in_shards(texts: Sequence[str] | pa.Array | pa.ChunkedArray, *, encode: Encode, dim: int, folder: Path,
                    shard_size: int, batch_size: int, dtype: np.dtype, desc: str, progress: bool) -> list[Path]:
    """Embed ``texts`` into ``folder/NNNNN.npy`` shards of ``shard_size`` rows, in text order.

    Within a shard, texts are embedded in batches sorted by length (less
    padding) and put back in order before saving.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    paths = []
    with progress_bar(total=n, desc=desc, enabled=progress) as bar:
        for s, start in enumerate(range(0, n, shard_size)):
            stop = min(start + shard_size, n)
            path = folder / f"{s:05d}.npy"
            paths.append(path)
            if _shard_ok(path, stop - start, dim):
                bar.update(stop - start)
                continue
            shard = texts[start:stop]
            if not isinstance(shard, list):  # an Arrow column: Python strings for this shard only
                shard = shard.to_pylist() if hasattr(shard, "to_pylist") else list(shard)
            order = np.argsort([-len(t) for t in shard], kind="stable")
            out = np.empty((stop - start, dim), dtype=dtype)
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                out[idx] = encode([shard[i] for i in idx])
                bar.update(len(idx))
            with atomic_path(path) as tmp:
                np.save(tmp, out)
    return paths


class ShardedMatrix:
    """Read-only view of row shards as one [rows, dim] matrix.

    Each read maps the shard files it needs and unmaps them before
    returning, so touched pages do not pile up in the process's resident
    set over a pass through the whole matrix: memory is what a read
    returns, whatever the matrix size.
    """

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        headers = [np.load(p, mmap_mode="r") for p in self.paths]
        sizes = [len(h) for h in headers]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dim = headers[0].shape[1] if headers else 0
        self.dtype = headers[0].dtype if headers else np.dtype(np.float32)
        del headers

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("ShardedMatrix slices take no step")
            key = np.arange(start, stop)
        rows = np.asarray(key, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            part = np.load(self.paths[s], mmap_mode="r")
            local = rows[sel] - self.offsets[s]
            if np.all(np.diff(local) == 1):
                out[sel] = part[local[0]:local[-1] + 1]  # contiguous: one sequential copy
            else:
                out[sel] = part[local]
            del part  # unmap now
        return out


def float_blocks(matrix: ShardedMatrix | np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, contiguous float32 block) pairs over any row-sliceable matrix, ``rows`` at most each."""
    for start in range(0, len(matrix), rows):
        yield start, np.ascontiguousarray(matrix[start:start + rows], dtype=np.float32)
