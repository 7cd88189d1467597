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
