"""Exact dedup on disk: the first occurrence of each cleaned prompt, in corpus order, in memory
that does not grow with the corpus.

Pass 1 reads the sources once and cleans every value. It writes the cleaned
text to an Arrow file, a one-byte code per value (text, empty, not text) to
a code file, and a 24-byte record (16-byte ``dedup_key`` digest, position
of the value) per text value to a records file: a run per batch read, each
run grouped by bucket (``BUCKETS`` of them, picked by the digest, so all
copies of a prompt share a bucket). Each bucket, gathered from all runs, is
then sorted on its own and the first position of every digest gets the code
``FIRST``. Pass 2 reads the cleaned text back a batch at a time and keeps the
values coded ``FIRST``, in order (Arrow filters, no Python loop).

Memory: one bucket at a time (1/``BUCKETS`` of the records, about 94 MB per
billion values), one batch of values, and the runs' bucket offsets (2 KiB
per batch of 65,536 values); the codes are a file mapping. Disk: the cleaned
text plus 25 bytes per value, removed when pass 2 ends.

With a ``limit``, pass 1 reads only as far as needed: it stops as soon as
the values read hold ``limit`` distinct prompts, checked after reading at
least ``limit`` values and then after each doubling of what was read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.text import CleanStats, clean_prompt, dedup_key

from . import metadata
from .prompt_file import SCHEMA  # one string column; here with nulls where a value is not text
from .readers import Source, iter_batches

BUCKETS = 256
RECORD = np.dtype([("k0", "<u8"), ("k1", "<u8"), ("pos", "<i8")])
DUPLICATE, FIRST, EMPTY, NOT_TEXT = 0, 1, 2, 3  # codes: text values start as DUPLICATE until marked FIRST


class ExactDedup:
    """``blocks()`` yields the unique cleaned prompts of ``sources`` in order, as Arrow string arrays
    (at most ``limit`` prompts in all); ``stats`` counts the values consumed up to the last prompt
    yielded, as if they had been read one by one and reading had stopped there.

    ``folder`` holds the work files while ``blocks()`` runs; it is removed afterwards.
    """

    def __init__(self, sources: list[Source], *, folder: str | Path, limit: int | None = None,
                 progress: bool = False, total: int | None = None, columns: dict[str, str] | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.sources = sources
        self.folder = Path(folder)
        self.limit = limit
        self.progress = progress
        self.total = total  # values in the sources, when known (progress bars)
        self.columns = dict(columns or {})  # kept beside the prompts: name -> type (indexer.metadata)
        self.schema = pa.schema([SCHEMA.field(0), *metadata.schema_of(self.columns)])
        self.stats = CleanStats()
        self.scanned = 0  # values pass 1 read (more than ``stats.values_read`` where a limit stopped pass 2)
        self._runs: list[np.ndarray] = []  # per run: where each bucket starts in the records file
        self._written = 0  # records in the records file

    def blocks(self) -> Iterator[pa.StringArray]:
        """The unique prompts, in order, a block at a time."""
        for batch in self.batches():
            yield batch.column(0)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The unique prompts and their kept columns (``columns``), in order, a record batch at a time."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self._runs, self._written = [], 0
        vars(self.stats).update(vars(CleanStats()))  # each call starts afresh, in the same object (callers hold it)
        try:
            with open(self.folder / "records.bin", "w+b") as records:
                with open(self.folder / "codes.bin", "wb") as codes, \
                        pa.OSFile(str(self.folder / "text.arrow"), "wb") as sink, \
                        pa.ipc.new_stream(sink, self.schema) as text:
                    self.scanned = self._read(records=records, codes=codes, text=text)
                codes_map = self._mark_first(records)
            yield from self._kept(codes_map)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    # pass 1 ---------------------------------------------------------------------------------
    def _read(self, *, records: BinaryIO, codes: BinaryIO, text: pa.ipc.RecordBatchStreamWriter) -> int:
        """Every value read: its code, its cleaned text, and a record for each text value, a run per
        batch; returns the values read (all of them, or with a limit as few as hold ``limit`` distinct)."""
        names = list(self.columns)
        batches = ((s, values, meta) for s in self.sources for values, meta in iter_batches(s, names))
        n = 0
        target = self.limit
        rest: tuple[Any, ...] = ()  # a batch's part beyond the last target, read in the next round
        def goal() -> int | None:  # what this round reads at most: the bar counts towards it
            return target if self.total is None else self.total if target is None else min(target, self.total)

        with progress_bar(total=goal(), desc="dedup 1/2", enabled=self.progress) as bar:
            while True:
                for source, values, meta in chain([rest] if rest else [], batches):
                    rest = ()
                    if target is not None and n + len(values) > target:
                        cut = target - n
                        rest = (source, values[cut:], {k: v[cut:] for k, v in meta.items()})
                        values, meta = values[:cut], {k: v[:cut] for k, v in meta.items()}
                    self._append(values, meta, source, start=n, records=records, codes=codes, text=text)
                    n += len(values)
                    bar.update(len(values))
                    if n == target:
                        break
                if (not rest and n != target) or self.limit is None:
                    return n  # the sources are exhausted
                distinct = sum(int(new.sum()) for _, new in self._sorted_buckets(records))
                if distinct >= self.limit:
                    return n
                target = n + max(self.limit - distinct, n)
                bar.total = goal()
                bar.refresh()

    def _append(self, values: list[Any], meta: dict[str, Any], source: Source, *, start: int, records: BinaryIO,
                codes: BinaryIO, text: pa.ipc.RecordBatchStreamWriter) -> None:
        cleaned = [clean_prompt(v) for v in values]
        code = np.array([DUPLICATE if t is not None else EMPTY if isinstance(v, str) else NOT_TEXT
                         for v, t in zip(values, cleaned)], dtype=np.uint8)
        codes.write(code.tobytes())
        columns = [pa.array(cleaned, type=pa.string())]
        for name, kind in self.columns.items():
            given = meta.get(name)
            columns.append(metadata.typed(given, kind, name=name, where=str(source.path)) if given is not None
                           else pa.nulls(len(values), metadata.arrow_type(kind)))
        text.write_batch(pa.record_batch(columns, schema=self.schema))
        pos = np.flatnonzero(code == DUPLICATE)
        if not len(pos):
            return
        digests = np.frombuffer(b"".join(dedup_key(cleaned[i]) for i in pos.tolist()), dtype="<u8").reshape(-1, 2)
        rec = np.empty(len(pos), dtype=RECORD)
        rec["k0"], rec["k1"], rec["pos"] = digests[:, 0], digests[:, 1], start + pos
        bucket = rec["k0"] % BUCKETS
        records.write(rec[np.argsort(bucket, kind="stable")].tobytes())
        self._runs.append(self._written + np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=BUCKETS))]))
        self._written += len(rec)

    def _sorted_buckets(self, records: BinaryIO) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each bucket's records from every run, sorted by (digest, position), with a flag for each
        digest's first."""
        if not self._runs:
            return
        records.flush()
        starts = np.stack(self._runs)
        size = RECORD.itemsize
        for b in range(BUCKETS):
            parts = [os.pread(records.fileno(), int(hi - lo) * size, int(lo) * size)
                     for lo, hi in zip(starts[:, b], starts[:, b + 1]) if hi > lo]
            rec = np.frombuffer(b"".join(parts), dtype=RECORD)
            rec = rec[np.lexsort((rec["pos"], rec["k1"], rec["k0"]))]
            new = np.ones(len(rec), dtype=bool)
            new[1:] = (rec["k0"][1:] != rec["k0"][:-1]) | (rec["k1"][1:] != rec["k1"][:-1])
            yield rec, new

    def _mark_first(self, records: BinaryIO) -> np.ndarray:
        codes = np.memmap(self.folder / "codes.bin", dtype=np.uint8, mode="r+", shape=(self.scanned,)) \
            if self.scanned else np.zeros(0, dtype=np.uint8)
        for rec, new in self._sorted_buckets(records):
            codes[rec["pos"][new]] = FIRST
        return codes

    # pass 2 ---------------------------------------------------------------------------------
    def _kept(self, codes: np.ndarray) -> Iterator[pa.RecordBatch]:
        st = self.stats
        pos = 0
        with pa.OSFile(str(self.folder / "text.arrow"), "rb") as source, \
                progress_bar(total=self.scanned, desc="dedup 2/2", enabled=self.progress) as bar:
            for batch in pa.ipc.open_stream(source):
                code = np.asarray(codes[pos:pos + batch.num_rows])
                pos += batch.num_rows
                if self.limit is not None:
                    firsts = np.flatnonzero(code == FIRST)
                    if len(firsts) >= self.limit - st.unique:  # stop at the limit-th unique prompt
                        code = code[:firsts[self.limit - st.unique - 1] + 1]
                counts = np.bincount(code, minlength=4)
                st.values_read += len(code)
                st.unique += int(counts[FIRST])
                st.exact_duplicates += int(counts[DUPLICATE])
                st.empty += int(counts[EMPTY])
                st.not_text += int(counts[NOT_TEXT])
                bar.update(len(code))
                if counts[FIRST]:
                    keep = np.zeros(batch.num_rows, dtype=bool)
                    keep[:len(code)] = code == FIRST
                    yield batch.filter(pa.array(keep))
                if len(code) < batch.num_rows or (self.limit is not None and st.unique >= self.limit):
                    return


def read_unique_prompts(sources: list[Source], *, limit: int | None = None,
                        progress: bool = False) -> tuple[list[str], CleanStats]:
    """All of ``ExactDedup(...).blocks()`` in one list (small corpora), with the cleaning statistics."""
    with tempfile.TemporaryDirectory(prefix="np-dedup-") as tmp:
        dedup = ExactDedup(sources, folder=Path(tmp) / "dedup", limit=limit, progress=progress)
        prompts = [p for block in dedup.blocks() for p in block.to_pylist()]
    return prompts, dedup.stats
