"""Filters over the columns a store keeps beside its prompts: ``--where`` expressions made into a row mask.

An expression is one or more conditions joined by ``and``::

    source=lexica                 equality (strings; numbers too)
    source!=lexica
    source in (lexica,krea)       one of several values
    seed>=10   seed<20   seed>3   seed<=9   ranges on numeric columns

Values may be quoted ('a b' or "a b") and are compared as the column's type. ``mask(table, expr)`` evaluates an
expression over the prompt table with Arrow's compute functions: a boolean numpy array, one entry per row
(null values never match).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nearest_prompt.common.errors import InputError

_COND = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:(>=|<=|!=|=|>|<)\s*(.+?)|\s+in\s*\((.*)\))\s*$", re.IGNORECASE)
_OPS = {"=": pc.equal, "!=": pc.not_equal, ">=": pc.greater_equal, "<=": pc.less_equal, ">": pc.greater,
        "<": pc.less}
RESERVED = ("id", "prompt")  # the store's own columns: not filterable


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _split_and(expr: str) -> list[str]:
    """Conditions of ``expr``, split at `` and `` outside quotes and parentheses."""
    parts, depth, quote, start = [], 0, "", 0
    low = expr.lower()
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and low.startswith(" and ", i):
            parts.append(expr[start:i])
            start = i + 5
            i += 4
        i += 1
    parts.append(expr[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _value(text: str, column: pa.ChunkedArray, name: str) -> pa.Scalar:
    text = _unquote(text)
    t = column.type
    try:
        if pa.types.is_integer(t):
            return pa.scalar(int(text), t)
        if pa.types.is_floating(t):
            return pa.scalar(float(text), t)
        if pa.types.is_boolean(t):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return pa.scalar(text.lower() in ("true", "1"))
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return pc.cast(pa.scalar(text), t)
        return pa.scalar(text, t if pa.types.is_string(t) or pa.types.is_large_string(t) else pa.string())
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"{text!r} is not a value of column {name!r} ({t})", param="where") from None


def columns_of(table: pa.Table) -> list[str]:
    """The filterable columns of a prompt table."""
    return [n for n in table.schema.names if n not in RESERVED]


def mask(table: pa.Table, expr: str) -> np.ndarray:
    """Rows of ``table`` that meet every condition of ``expr`` (see the module's grammar)."""
    if not expr or not expr.strip():
        raise InputError("empty; give a condition such as source=lexica", param="where")
    keep = np.ones(table.num_rows, dtype=bool)
    names = columns_of(table)
    for cond in _split_and(expr):
        m = _COND.match(cond)
        if not m:
            raise InputError(f"cannot read {cond!r}; write column=value, column in (a,b), or a range such "
                             "as seed>=10, joined by 'and'", param="where")
        name, op, value, choices = m.groups()
        if name not in names:
            raise InputError(f"no column {name!r} in this index (it keeps: {', '.join(names) or 'none'}; "
                             "build with --columns to keep more)", param="where")
        column = table.column(name)
        if choices is not None:
            values = [_value(v, column, name) for v in re.split(r",(?=(?:[^'\"]|'[^']*'|\"[^\"]*\")*$)", choices)
                      if v.strip()]
            hit = pc.is_in(column, value_set=pa.array([v.as_py() for v in values], column.type))
        else:
            numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or \
                pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)
            if op not in ("=", "!=") and not numeric:
                raise InputError(f"{op} needs a numeric column; {name!r} holds {column.type}", param="where")
            hit = _OPS[op](column, _value(value, column, name))
        keep &= pc.fill_null(hit, False).to_numpy(zero_copy_only=False).astype(bool)
    return keep
