"""The fragment vocabulary of a store: the clauses its prompts are made of, counted, the frequent kept.

Rule (``common.text.split_fragments``): every kept prompt is split at ``,`` and ``|``; each clause is
lower-cased, its whitespace collapsed, emphasis weights (``:1.2``) and surrounding brackets, quotes and
punctuation removed, and kept when 2-80 characters long. A fragment's count is the number of prompts
that hold it (a prompt repeating a clause counts once). Fragments held by at least ``min_count``
prompts are kept, the most frequent first (ties in text order), at most ``max_fragments``.

Counting streams the prompts a block at a time into Arrow tables of (fragment, count) that are merged
whenever they pass ``COMPACT_ROWS`` rows, so memory follows the number of distinct clauses (Arrow
strings, about 40 B each), never the number of prompts or a Python object per clause.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.text import split_fragments

COMPACT_ROWS = 4_000_000


@dataclass(frozen=True)
class Vocabulary:
    """Fragments (Arrow strings) and their prompt counts, most frequent first, plus how they were mined."""

    fragments: pa.Array
    counts: np.ndarray  # int64, one per fragment
    stats: dict[str, int]


def mine_fragments(blocks: Iterable[pa.Array], *, min_count: int, max_fragments: int, total: int | None = None,
                   progress: bool = False) -> Vocabulary:
    """Count the fragments of every prompt in ``blocks`` (Arrow string arrays, in order) and keep the
    frequent ones (see the module's rule)."""
    parts: list[pa.Table] = []
    rows = prompts = clauses = 0
    with progress_bar(total=total, desc="fragments", enabled=progress) as bar:
        for block in blocks:
            fragments, parents = split_fragments(block)
            per_prompt = pa.table({"fragment": fragments, "prompt": parents}).group_by(["fragment", "prompt"]).aggregate([])
            counted = per_prompt.group_by("fragment").aggregate([("prompt", "count")]).rename_columns(["fragment", "n"])
            parts.append(counted)
            rows += counted.num_rows
            prompts += len(block)
            clauses += len(fragments)
            if rows > COMPACT_ROWS:
                parts = [_merge(parts)]
                rows = parts[0].num_rows
            bar.update(len(block))
    table = _merge(parts) if parts else pa.table({"fragment": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    frequent = table.filter(pc.greater_equal(table["n"], min_count))
    frequent = frequent.sort_by([("n", "descending"), ("fragment", "ascending")]).slice(0, max_fragments)
    stats = {"prompts": prompts, "clauses": clauses, "distinct": table.num_rows,
             "frequent": int(pc.sum(pc.greater_equal(table["n"], min_count)).as_py() or 0),
             "kept": frequent.num_rows, "min_count": min_count, "max_fragments": max_fragments}
    return Vocabulary(frequent["fragment"].combine_chunks(), frequent["n"].to_numpy().astype(np.int64), stats)


def _merge(parts: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(parts)
    return table.group_by("fragment").aggregate([("n", "sum")]).rename_columns(["fragment", "n"])
