"""Prompt cleaning and exact (case- and whitespace-insensitive) deduplication."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from .readers import Source

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


class ExactDeduper:
    """Keeps the first occurrence of each prompt; memory is 16 bytes per unique prompt plus set overhead."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.stats = CleanStats()

    def feed(self, values: Iterable[Any], *, max_new: int | None = None) -> list[str]:
        """New unique prompts among ``values``; stops consuming after ``max_new`` of them."""
        out: list[str] = []
        st = self.stats
        for v in values:
            if max_new is not None and len(out) >= max_new:
                break
            st.values_read += 1
            text = clean_prompt(v)
            if text is None:
                if isinstance(v, str):
                    st.empty += 1
                else:
                    st.not_text += 1
                continue
            key = dedup_key(text)
            if key in self._seen:
                st.exact_duplicates += 1
                continue
            self._seen.add(key)
            st.unique += 1
            out.append(text)
        return out


def iter_unique_prompts(sources: list["Source"], dedup: ExactDeduper, *, limit: int | None = None,
                        on_batch: Callable[[int], None] | None = None) -> Iterator[list[str]]:
    """Cleaned, exactly-deduplicated prompts of ``sources`` in order, one list per batch read;
    stops after ``limit`` of them. ``dedup.stats`` counts what was read.

    ``on_batch(n)`` is called with the number of raw values of each batch read (progress bars).
    """
    from .readers import iter_values

    total = 0
    for source in sources:
        for values in iter_values(source):
            new = dedup.feed(values, max_new=None if limit is None else limit - total)
            total += len(new)
            if on_batch is not None:
                on_batch(len(values))
            if new:
                yield new
            if limit is not None and total >= limit:
                return


def read_unique_prompts(sources: list["Source"], *, limit: int | None = None,
                        on_batch: Callable[[int], None] | None = None) -> tuple[list[str], CleanStats]:
    """All of ``iter_unique_prompts`` in one list, with the cleaning statistics."""
    dedup = ExactDeduper()
    prompts = [p for batch in iter_unique_prompts(sources, dedup, limit=limit, on_batch=on_batch) for p in batch]
    return prompts, dedup.stats
