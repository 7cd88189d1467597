"""The columns a corpus carries beside its prompts (its source, a model, a seed, a date): which are kept, their
types, and their Arrow arrays.

Parquet columns keep their own types (nested ones are kept as JSON text). CSV, TSV and JSONL columns are typed
from their first ``SAMPLE_ROWS`` records: ``int64`` when every value there is an integer, ``float64`` when a
number, ``bool`` for JSON booleans, else ``string``; a later value that does not fit is an error naming the
column and the value. Several files: the union of their columns, a column missing from a file is null there,
and types that differ become ``float64`` (integers and numbers) or ``string``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from nearest_prompt.common.errors import InputError

SAMPLE_ROWS = 1_000
TEXT_KINDS = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def infer_text(values: Sequence[str | None]) -> str:
    """The type of a CSV column from its sample (strings; empty means null)."""
    present = [v.strip() for v in values if v is not None and v.strip()]
    if present and all(_is_int(v) for v in present):
        return "int64"
    if present and all(_is_float(v) for v in present):
        return "float64"
    return "string"


def infer_json(values: Sequence[Any]) -> str:
    """The type of a JSONL key from its sample (Python values)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def arrow_kind(field: pa.Field) -> str:
    """A parquet column's type as kept: its own when primitive, JSON text when nested, ``binary`` for bytes (an
    image column's; a store keeps no bytes beside its prompts)."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_nested(t) or pa.types.is_dictionary(t):
        return "json" if pa.types.is_nested(t) else "string"
    return str(t)


def unify(a: str, b: str) -> str:
    if a == b:
        return a
    if "binary" in (a, b):
        return "binary"
    if {a, b} <= {"int64", "float64", "int32", "float32", "int16", "int8", "uint8", "uint16", "uint32", "uint64"}:
        return "float64"
    return "string"


def arrow_type(kind: str) -> pa.DataType:
    if kind in TEXT_KINDS:
        return TEXT_KINDS[kind]
    if kind == "json":
        return pa.string()
    return pa.type_for_alias(kind)


def schema_of(columns: dict[str, str]) -> pa.Schema:
    return pa.schema([(name, arrow_type(kind)) for name, kind in columns.items()])


def typed(values: Any, kind: str, *, name: str, where: str) -> pa.Array:
    """``values`` (Python values, strings of a CSV, or an Arrow array) as an Arrow array of ``kind``; a value
    that does not fit is an ``InputError`` naming the column."""
    target = arrow_type(kind)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_nested(values.type):
            values = pa.array([None if v is None else json.dumps(v, default=str) for v in values.to_pylist()],
                              pa.string())
        try:
            return values.cast(target) if values.type != target else values
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InputError(f"{where}: column {name!r} ({values.type}) cannot be kept as {kind} ({e})",
                             param="columns") from None
    if kind == "string":
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                         for v in values], pa.string())
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(None)
            continue
        try:
            if kind == "bool":
                if not isinstance(v, bool):
                    raise ValueError(v)
                out.append(v)
            elif kind == "int64":
                out.append(int(v) if not isinstance(v, float) or v.is_integer() else _fail())
            else:
                out.append(float(v))
        except (ValueError, TypeError):
            raise InputError(f"{where}: column {name!r} holds {v!r}, not a {kind} like the values before it; fix the "
                             "value, or leave the column out (columns)", param="columns") from None
    return pa.array(out, target)


def _fail() -> int:
    raise ValueError("not an integer")
