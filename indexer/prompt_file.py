"""The build's prompts on disk: an Arrow IPC file whose first column is the prompt (the columns kept beside
the prompts follow it), read a slice at a time.

The build never holds the whole corpus's text: each stage reads the rows it works on (plain reads, no memory
map, so nothing stays resident after) and filtered copies are written batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from nearest_prompt.common.atomic import atomic_path

SCHEMA = pa.schema([("prompt", pa.string())])  # the first column of every prompt file


def write_prompt_file(path: Path, blocks: Iterable[pa.RecordBatch | pa.Array | list[str]]) -> int:
    """Write ``blocks`` (record batches whose first column is the prompt, or prompts alone) to ``path``
    atomically (via a temporary sibling); returns the row count."""
    rows = 0
    writer = None
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        try:
            for block in blocks:
                batch = block if isinstance(block, pa.RecordBatch) else pa.record_batch(
                    [block if isinstance(block, pa.Array) else pa.array(block, type=pa.string())], schema=SCHEMA)
                if writer is None:
                    writer = pa.ipc.new_file(sink, batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
            if writer is None:
                writer = pa.ipc.new_file(sink, SCHEMA)
        finally:
            if writer is not None:
                writer.close()
    return rows


class PromptFile:
    """Read-only, row-sliceable view of a prompt file: ``len``, ``[a:b]`` (the prompt column, Arrow),
    ``blocks()`` (the prompts), ``batches()`` (with the kept columns) and ``take_rows``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with pa.OSFile(str(self.path), "rb") as f:
            reader = pa.ipc.open_file(f)
            if not reader.schema.names or reader.schema.field(0) != SCHEMA.field(0):
                raise ValueError(f"{self.path} is not a prompt file (schema {reader.schema})")
            self.schema = reader.schema
            lengths = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
        self.offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def columns(self) -> list[str]:
        """The columns kept beside the prompts."""
        return self.schema.names[1:]

    def __getitem__(self, key: slice) -> pa.ChunkedArray:
        if not isinstance(key, slice):
            raise TypeError("PromptFile takes slices only")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("PromptFile slices take no step")
        return self._slice(0, start, stop)

    def column(self, name: str, start: int, stop: int) -> list:
        """Rows ``start:stop`` of a kept column, as Python values."""
        return self._slice(self.schema.get_field_index(name), start, stop).to_pylist()

    def _slice(self, col: int, start: int, stop: int) -> pa.ChunkedArray:
        parts = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        with pa.OSFile(str(self.path), "rb") as f:
            reader = pa.ipc.open_file(f)
            b = max(first, 0)
            while start < stop and b < reader.num_record_batches:
                lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
                column = reader.get_batch(b).column(col)
                parts.append(column.slice(max(start, lo) - lo, min(stop, hi) - max(start, lo)))
                start = hi
                b += 1
        return pa.chunked_array(parts, type=self.schema.field(col).type)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every batch in order (the prompt and the kept columns), one read at a time."""
        with pa.OSFile(str(self.path), "rb") as f:
            reader = pa.ipc.open_file(f)
            for b in range(reader.num_record_batches):
                yield reader.get_batch(b)

    def blocks(self) -> Iterator[pa.Array]:
        """The prompts of every batch in order, one read at a time."""
        for batch in self.batches():
            yield batch.column(0)

    def take_rows(self, keep: np.ndarray) -> Iterator[pa.RecordBatch]:
        """Batches of the rows where the boolean mask ``keep`` (one entry per row) is true, in order."""
        if keep.shape != (len(self),):
            raise ValueError(f"keep mask of shape {keep.shape} for {len(self)} prompts")
        for b, batch in enumerate(self.batches()):
            yield batch.filter(pa.array(keep[self.offsets[b]:self.offsets[b + 1]]))
