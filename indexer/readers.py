"""Read raw prompt values from parquet, CSV/TSV, plain text and JSONL files, streaming."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nearest_prompt.common.errors import InputError

from . import metadata

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
    meta: tuple[tuple[str, str], ...] = ()  # the columns kept beside the prompts, with their types

    def describe(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"path": str(self.path), "kind": self.kind, "column": self.column, "delimiter": self.delimiter,
                "columns": dict(self.meta), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


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


def check_sources(paths: list[str | os.PathLike], *, column: str | None = None, delimiter: str | None = None,
                  columns: Sequence[str] | None = None) -> list[Source]:
    """Validate every corpus file before any work: exists, readable, known type, column present (a CSV's
    delimiter is ``delimiter``, else the first of ``DELIMITERS`` whose header holds the column). ``columns``:
    the other columns to keep beside the prompts (None: all of them; empty: none), typed from a sample."""
    if delimiter is not None and len(delimiter) != 1:
        raise InputError(f"delimiter must be one character, got {delimiter!r}", param="delimiter")
    if not paths:
        raise InputError("no prompt files given", param="prompts")
    sources = []
    seen: dict[str, None] = {}
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
        found = _sample_meta(path, kind, col, sep)
        seen.update(dict.fromkeys(found))
        keep = found if columns is None else {n: k for n, k in found.items() if n in columns}
        sources.append(Source(path, kind, col, sep, tuple(keep.items())))
    missing = [c for c in columns or () if c not in seen]
    if missing:
        raise InputError(f"no column {missing[0]!r} beside the prompts in any file (they hold: "
                         f"{', '.join(seen) or 'none'})", param="columns")
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


Batch = tuple[list[Any], dict[str, Any]]  # raw values, and per kept column its values (a list, or Arrow)


def iter_values(source: Source) -> Iterator[list[Any]]:
    """Batches of raw values (strings, or anything else a file holds) from one source."""
    for values, _ in iter_batches(source, ()):
        yield values


def iter_batches(source: Source, names: Sequence[str]) -> Iterator[Batch]:
    """Batches of raw values and, for each of ``names`` this source has, that column's values beside them."""
    names = [n for n in names if n in dict(source.meta)]
    try:
        if source.kind == "parquet":
            yield from _iter_parquet(source, names)
        elif source.kind in ("csv", "tsv"):
            yield from _iter_csv(source, names)
        elif source.kind == "text":
            yield from ((values, {}) for values in _iter_text(source))
        else:
            yield from _iter_jsonl(source, names)
    except UnicodeDecodeError as e:
        raise InputError(f"{source.path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError) as e:
        raise InputError(f"{source.path}: read failed ({str(e)[:160]})") from e


def _iter_parquet(source: Source, names: list[str]) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source.path)
    for rg in range(pf.num_row_groups):  # one row group in memory at a time
        table = pf.read_row_group(rg, columns=[source.column, *names])
        col = table.column(0)
        for start in range(0, len(col), BATCH):
            yield (col.slice(start, BATCH).to_pylist(),
                   {n: table.column(n).slice(start, BATCH).combine_chunks() for n in names})


def _iter_csv(source: Source, names: list[str]) -> Iterator[Batch]:
    with _open_text(source.path, source.kind) as f:
        reader = _csv_reader(f, source.delimiter or ",")
        header = next(reader)
        idx = header.index(source.column)
        where = [header.index(n) for n in names]
        batch: list[Any] = []
        meta: list[list[Any]] = [[] for _ in names]
        start = reader.line_num + 1  # the line the next record starts on
        try:
            for row in reader:
                batch.append(row[idx] if idx < len(row) else None)
                for values, i in zip(meta, where):
                    values.append(row[i] if i < len(row) else None)
                start = reader.line_num + 1
                if len(batch) >= BATCH:
                    yield batch, dict(zip(names, meta))
                    batch, meta = [], [[] for _ in names]
        except csv.Error as e:
            raise InputError(f"{source.path}:{start}: malformed {source.kind.upper()} ({e}): the record that "
                             f"starts on line {start} has a quote that never closes, or a stray quote; fix "
                             "the quoting") from None
        if batch:
            yield batch, dict(zip(names, meta))


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


def _iter_jsonl(source: Source, names: list[str]) -> Iterator[Batch]:
    key = source.column
    found = False
    keys_seen: set[str] = set()
    with _open_text(source.path, source.kind) as f:
        batch: list[Any] = []
        meta: list[list[Any]] = [[] for _ in names]
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
                for values, n in zip(meta, names):
                    values.append(obj.get(n))
            else:
                found = found or isinstance(obj, str)
                batch.append(obj)
                for values in meta:
                    values.append(None)
            if len(batch) >= BATCH:
                yield batch, dict(zip(names, meta))
                batch, meta = [], [[] for _ in names]
        if not found and (batch or keys_seen):
            raise InputError(
                f"{source.path}: no key {key!r} in any record (keys seen: {', '.join(sorted(keys_seen)[:20])}); "
                "name the prompt key", param="column"
            )
        if batch:
            yield batch, dict(zip(names, meta))


# -- the columns beside the prompts ---------------------------------------------------------------------
def _sample_meta(path: Path, kind: str, col: str | None, delimiter: str | None) -> dict[str, str]:
    """Every column (key) of a source but the prompt's, with its type (``indexer.metadata``)."""
    if kind == "text":
        return {}
    if kind == "parquet":
        import pyarrow.parquet as pq

        fields = pq.ParquetFile(path).schema_arrow
        return {f.name: metadata.arrow_kind(f) for f in fields if f.name != col}
    rows: dict[str, list[Any]] = {}
    with _open_text(path, kind) as f:
        if kind in ("csv", "tsv"):
            reader = _csv_reader(f, delimiter or ",")
            header = next(reader, [])
            names = [h for h in header if h != col]
            rows = {n: [] for n in names}
            try:
                for i, row in enumerate(reader):
                    if i >= metadata.SAMPLE_ROWS:
                        break
                    for n in names:
                        j = header.index(n)
                        rows[n].append(row[j] if j < len(row) else None)
            except csv.Error:
                pass  # the reading proper says where
            return {n: metadata.infer_text(v) for n, v in rows.items()}
        for i, line in enumerate(f):
            if i >= metadata.SAMPLE_ROWS:
                break
            try:
                obj = json.loads(line) if line.strip() else None
            except ValueError:
                continue  # the reading proper says where
            if isinstance(obj, dict):
                for n, v in obj.items():
                    if n != col:
                        rows.setdefault(n, []).append(v)
        return {n: metadata.infer_json(v) for n, v in rows.items()}


def meta_columns(sources: Sequence[Source]) -> dict[str, str]:
    """The kept columns of all sources (their union, in order of appearance) with their unified types."""
    out: dict[str, str] = {}
    for s in sources:
        for name, kind in s.meta:
            out[name] = metadata.unify(out[name], kind) if name in out else kind
    return out
