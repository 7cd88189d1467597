"""Prompt cleaning and the key of exact (case- and whitespace-insensitive) deduplication
(``exact_dedup`` applies it to whole corpora)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

_WS = re.compile(r"\s+")


def clean_prompt(value: Any) -> str | None:
    """Strip and collapse whitespace; ``None`` for non-strings and empty results."""
    if not isinstance(value, str):
        return None
    text = _WS.sub(" ", value).strip()
    return text or None


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

