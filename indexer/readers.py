"""Read raw prompt values from parquet, CSV/TSV, plain text and JSONL files, streaming."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nearest_prompt.common.errors import InputError

DEFAULT_COLUMN = "prompt"
BATCH = 65_536
_KINDS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "tsv",
    ".txt": "text", ".text": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
}


DELIMITERS = (",", ";", "\t", "|")  # what a CSV header is tried with, in this order, when none is given


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str
    column: str | None  # None for plain text
    delimiter: str | None = None  # CSV/TSV only

    def describe(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"path": str(self.path), "kind": self.kind, "column": self.column, "delimiter": self.delimiter,
                "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = _KINDS.get(suffixes[-1] if suffixes else "")
    if kind is None or (kind == "parquet" and path.suffix.lower() == ".gz"):
        raise InputError(
            f"{path}: unknown prompt file type; use .parquet, .csv, .tsv, .txt or .jsonl (text formats may be .gz)"
        )
    return kind


def _open_text(path: Path, kind: str) -> io.TextIOBase:
    """CSV/TSV: newline="" as the csv module needs (it knows quoted line breaks). Text and JSONL: lines
    end at "\n" only, so a stray carriage return stays inside its prompt (cleaning turns it into a space)
    instead of splitting it, and "\r\n" files read as well."""
    newline = "" if kind in ("csv", "tsv") else "\n"
    # utf-8-sig: a byte-order mark at the start (what Excel and Notepad write) is read as nothing
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def check_sources(paths: list[str | os.PathLike], *, column: str | None = None,
                  delimiter: str | None = None) -> list[Source]:
    """Validate every corpus file before any work: exists, readable, known type, column present (a CSV's
    delimiter is ``delimiter``, else the first of ``DELIMITERS`` whose header holds the column)."""
    if delimiter is not None and len(delimiter) != 1:
        raise InputError(f"delimiter must be one character, got {delimiter!r}", param="delimiter")
    if not paths:
        raise InputError("no prompt files given", param="prompts")
    sources = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        if not path.exists():
            raise InputError(f"{p}: no such prompt file")
        if path.is_dir():
            raise InputError(f"{p}: is a directory; pass the prompt files themselves")
        if not os.access(path, os.R_OK):
            raise InputError(f"{p}: not readable (permission denied)")
        kind = _kind(path)
        col = None if kind == "text" else (column or DEFAULT_COLUMN)
        sep = None
        if kind == "parquet":
            _check_parquet_column(path, col)
        elif kind in ("csv", "tsv"):
            sep = _csv_delimiter(path, col, kind, delimiter)
        sources.append(Source(path, kind, col, sep))
    return sources


def _check_parquet_column(path: Path, col: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:
        raise InputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from e
    if col not in names:
        raise InputError(f"{path}: no column {col!r} (columns: {', '.join(names)}); name the prompt column",
                         param="column")


def _csv_reader(f: io.TextIOBase, delimiter: str) -> Any:
    """Strict about quotes: a quote that never closes is an error, not a field that swallows the file."""
    return csv.reader(f, delimiter=delimiter, strict=True)


_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _csv_delimiter(path: Path, col: str, kind: str, delimiter: str | None) -> str:
    """The delimiter whose header row holds ``col``: the one given, else the first of DELIMITERS that does (a
    .tsv file tries tabs first)."""
    tries = [delimiter] if delimiter else (["\t", *DELIMITERS] if kind == "tsv" else list(DELIMITERS))
    headers = {}
    for sep in dict.fromkeys(tries):
        try:
            with _open_text(path, kind) as f:
                header = next(_csv_reader(f, sep), None)
        except (UnicodeDecodeError, OSError, csv.Error) as e:
            raise InputError(f"{path}: not readable as UTF-8 {kind.upper()} ({str(e)[:120]})") from e
        if header is None:
            raise InputError(f"{path}: empty file, no header row")
        if col in header:
            return sep
        headers[sep] = header
    seen = headers[tries[0]]
    how = f"{_NAMES.get(tries[0], repr(tries[0]))}-separated" if delimiter else \
        f"separated by any of {', '.join(_NAMES[s] for s in dict.fromkeys(tries))}"
    raise InputError(f"{path}: no column {col!r} in the header ({', '.join(seen[:20])}), read {how}; name the "
                     "prompt column, or give the delimiter (delimiter)", param="column")


def holds_prompts(source: Source) -> bool:
    """Whether ``source`` holds at least one usable prompt: read up to the first one (an empty file is read to
    its end, which is quick), so that an empty corpus is refused before any model is loaded."""
    from nearest_prompt.common.text import clean_prompt

    return any(clean_prompt(v) is not None for batch in iter_values(source) for v in batch)


def iter_values(source: Source) -> Iterator[list[Any]]:
    """Batches of raw values (strings, or anything else a file holds) from one source."""
    try:
        if source.kind == "parquet":
            yield from _iter_parquet(source)
        elif source.kind in ("csv", "tsv"):
            yield from _iter_csv(source)
        elif source.kind == "text":
            yield from _iter_text(source)
        else:
            yield from _iter_jsonl(source)
    except UnicodeDecodeError as e:
        raise InputError(f"{source.path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError) as e:
        raise InputError(f"{source.path}: read failed ({str(e)[:160]})") from e


def _iter_parquet(source: Source) -> Iterator[list[Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source.path)
    for rg in range(pf.num_row_groups):  # one row group in memory at a time
        table = pf.read_row_group(rg, columns=[source.column])
        col = table.column(0)
        for start in range(0, len(col), BATCH):
            yield col.slice(start, BATCH).to_pylist()


def _iter_csv(source: Source) -> Iterator[list[Any]]:
    with _open_text(source.path, source.kind) as f:
        reader = _csv_reader(f, source.delimiter or ",")
        header = next(reader)
        idx = header.index(source.column)
        batch: list[Any] = []
        start = reader.line_num + 1  # the line the next record starts on
        try:
            for row in reader:
                batch.append(row[idx] if idx < len(row) else None)
                start = reader.line_num + 1
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        except csv.Error as e:
            raise InputError(f"{source.path}:{start}: malformed {source.kind.upper()} ({e}): the record that "
                             f"starts on line {start} has a quote that never closes, or a stray quote; fix "
                             "the quoting") from None
        if batch:
            yield batch


def _iter_text(source: Source) -> Iterator[list[Any]]:
    with _open_text(source.path, source.kind) as f:
        batch: list[Any] = []
        for line in f:
            batch.append(line)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _iter_jsonl(source: Source) -> Iterator[list[Any]]:
    key = source.column
    found = False
    keys_seen: set[str] = set()
    with _open_text(source.path, source.kind) as f:
        batch: list[Any] = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(f"{source.path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
            if isinstance(obj, dict):
                if key in obj:
                    found = True
                elif len(keys_seen) < 50:
                    keys_seen.update(map(str, obj))
                batch.append(obj.get(key))
            else:
                found = found or isinstance(obj, str)
                batch.append(obj)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if not found and (batch or keys_seen):
            raise InputError(
                f"{source.path}: no key {key!r} in any record (keys seen: {', '.join(sorted(keys_seen)[:20])}); "
                "name the prompt key", param="column"
            )
        if batch:
            yield batch
