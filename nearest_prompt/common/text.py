"""Prompt text: cleaning, the key of exact (case- and whitespace-insensitive) deduplication
(``indexer.exact_dedup`` applies it to whole corpora), and safe display on a terminal."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_WS = re.compile(r"\s+")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")  # CSI, OSC, 2-byte
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # C0 and C1 controls but whitespace


def clean_prompt(value: Any) -> str | None:
    """Remove terminal escape sequences and control characters, collapse whitespace (tabs, newlines,
    carriage returns) to single spaces and strip; ``None`` for non-strings and empty results."""
    if not isinstance(value, str):
        return None
    text = _CONTROL.sub("", _ANSI.sub("", value)) if _needs_control_pass(value) else value
    text = _WS.sub(" ", text).strip()
    return text or None


def _needs_control_pass(text: str) -> bool:
    return any(c < " " or "\x7f" <= c <= "\x9f" for c in text) if not text.isprintable() else False


def printable(text: str) -> str:
    """``text`` safe for a terminal: every non-printable character (controls, escapes, line breaks)
    shown as a Python escape, everything else as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] if unicodedata.category(c) != "Zs" else " "
                   for c in text)


def dedup_key(text: str) -> bytes:
    """Key under which two cleaned prompts count as the same: casefolded, 16-byte digest."""
    return hashlib.blake2b(text.casefold().encode("utf-8"), digest_size=16).digest()


@dataclass
class CleanStats:
    values_read: int = 0
    not_text: int = 0
    empty: int = 0
    exact_duplicates: int = 0
    unique: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)



def dedup_keys(texts: Sequence[str | None]) -> np.ndarray:
    """``dedup_key`` of each text after cleaning, as a fixed-width bytes array; b"" for None."""
    return np.array([dedup_key(clean_prompt(t) or "") if t is not None else b"" for t in texts], dtype="S16")


def first_clause(prompt: str) -> str:
    """A prompt's first comma-separated clause (how a plain caption reads)."""
    return prompt.split(",", 1)[0].strip() or prompt.strip()


# -- fragments: the clauses prompts are made of -------------------------------------------------------------
CLAUSE_SEPARATORS = r"[,|]"
FRAGMENT_MIN_CHARS = 2
FRAGMENT_MAX_CHARS = 80  # longer clauses are sentences of one prompt, not reusable fragments
_WEIGHT = r":\s*-?[0-9]*\.?[0-9]+\s*[)\]]*\s*$"  # the "(word:1.2)" emphasis syntax of some front ends
_EDGE_CHARS = r"\s\"'“”‘’«»()\[\]{}<>.:;!?*+=_~`#—–-"
_EDGES = f"^[{_EDGE_CHARS}]+|[{_EDGE_CHARS}]+$"


def split_fragments(prompts: Any) -> tuple[Any, np.ndarray]:
    """The clauses of prompts (split at ``,`` and ``|``), each normalised (``normalize_fragments``) and kept
    when 2-80 characters long. Returns an Arrow string array of fragments and, per fragment, the row of
    the prompt it came from (int64). Takes a sequence of strings or an Arrow string array: the one rule
    the build's vocabulary and the composer's neighbour clauses share."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = prompts if isinstance(prompts, (pa.Array, pa.ChunkedArray)) else pa.array(list(prompts), pa.string())
    parts = pc.split_pattern_regex(arr, CLAUSE_SEPARATORS)
    parents = pc.list_parent_indices(parts)
    fragments = normalize_fragments(pc.list_flatten(parts))
    n = pc.utf8_length(fragments)
    keep = pc.and_(pc.greater_equal(n, FRAGMENT_MIN_CHARS), pc.less_equal(n, FRAGMENT_MAX_CHARS))
    keep = pc.fill_null(keep, False)
    return fragments.filter(keep), parents.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)


def normalize_fragments(texts: Any) -> Any:
    """Lower case (both encoders' tokenizers lower-case anyway), whitespace collapsed, emphasis weights
    (``:1.2``) and surrounding brackets, quotes and punctuation removed."""
    import pyarrow.compute as pc

    x = pc.utf8_lower(texts)
    x = pc.replace_substring_regex(x, r"\s+", " ")
    x = pc.replace_substring_regex(x, _WEIGHT, "")
    return pc.replace_substring_regex(x, _EDGES, "")
