"""Resumable, sharded embedding: one ``.npy`` per shard, written atomically.

A finished shard file is its own "done" marker; a restarted build skips
every shard whose file exists with the right shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nearest_prompt.common.atomic import atomic_path
from nearest_prompt.common.progress import progress_bar

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of the texts, embedded into ``path``."""

    index: int
    start: int
    stop: int
    path: Path

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(n: int, *, shard_size: int, folder: Path) -> list[Shard]:
    return [Shard(s, start, min(start + shard_size, n), folder / f"{s:05d}.npy")
            for s, start in enumerate(range(0, n, shard_size))]


def shard_done(shard: Shard, dim: int) -> bool:
    """A finished shard file is its own "done" marker: it exists with the right shape."""
    try:
        arr = np.load(shard.path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == (shard.rows, dim)


def embed_shard(texts: Sequence[str] | pa.Array | pa.ChunkedArray, shard: Shard, *, encode: Encode, dim: int,
                batch_size: int, dtype: np.dtype, on_rows: Callable[[int], None] | None = None) -> None:
    """Embed rows ``shard.start:shard.stop`` of ``texts`` in batches sorted by length (less padding), put
    them back in order and save the shard atomically. The same batches wherever it runs (locally or on
    a worker), so the same vectors."""
    part = texts[shard.start:shard.stop]
    if not isinstance(part, list):  # an Arrow column: Python strings for this shard only
        part = part.to_pylist() if hasattr(part, "to_pylist") else list(part)
    order = np.argsort([-len(t) for t in part], kind="stable")
    out = np.empty((shard.rows, dim), dtype=dtype)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        out[idx] = encode([part[i] for i in idx])
        if on_rows:
            on_rows(len(idx))
    with atomic_path(shard.path) as tmp:
        np.save(tmp, out)


def embed_in_shards(texts: Sequence[str] | pa.Array | pa.ChunkedArray, *, encode: Encode, dim: int, folder: Path,
                    shard_size: int, batch_size: int, dtype: np.dtype, desc: str, progress: bool) -> list[Path]:
    """Embed ``texts`` into ``folder/NNNNN.npy`` shards of ``shard_size`` rows, in text order, in this
    process (``indexer.ray_engine`` spreads the same shards over a cluster); finished shards are skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(len(texts), shard_size=shard_size, folder=folder)
    with progress_bar(total=len(texts), desc=desc, enabled=progress) as bar:
        for shard in shards:
            if shard_done(shard, dim):
                bar.update(shard.rows)
                continue
            embed_shard(texts, shard, encode=encode, dim=dim, batch_size=batch_size, dtype=dtype,
                        on_rows=bar.update)
    return [s.path for s in shards]


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
