"""Free-space check before the expensive stages: the work folder and the store estimated from the
corpus and the chosen index, against what the disk holding ``out`` has free."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from nearest_prompt.common.atomic import existing_folder
from nearest_prompt.common.errors import InputError
from nearest_prompt.common.sizes import format_bytes

from .readers import Source

BYTES_PER_TEXT_VALUE = 25  # exact dedup: a 24-byte digest record and a code byte per value
BYTES_PER_FRAGMENT_TEXT = 40  # a fragment's text, count and id
MARGIN = 1.10  # headroom over the estimate


@dataclass(frozen=True)
class DiskEstimate:
    rows: int
    text_bytes: int
    work_bytes: int
    store_bytes: int

    @property
    def total(self) -> int:
        return int(MARGIN * (self.work_bytes + self.store_bytes))


def corpus_size(sources: list[Source], *, limit: int | None = None) -> tuple[int, int]:
    """(values, bytes of text) of the corpus, estimated without reading it: parquet metadata, else file
    sizes (gzip counted 4x) at 100 bytes a prompt. Scaled down to ``limit`` prompts."""
    import pyarrow.parquet as pq

    rows = text = 0
    for s in sources:
        if s.kind == "parquet":
            meta = pq.ParquetFile(s.path).metadata
            rows += meta.num_rows
            col = meta.schema.to_arrow_schema().get_field_index(s.column)
            text += sum(meta.row_group(g).column(col).total_uncompressed_size for g in range(meta.num_row_groups))
        else:
            size = s.path.stat().st_size * (4 if s.path.suffix.lower() == ".gz" else 1)
            text += size
            rows += max(1, size // 100)
    if limit is not None and rows > limit:
        text = text * limit // rows
        rows = limit
    return rows, text


def estimate(rows: int, text_bytes: int, *, clip_dim: int, index_bytes: int, fragments: int = 0) -> DiskEstimate:
    """Work folder: cleaned text twice (dedup pass and prompts), dedup records, MiniLM (float16) and CLIP
    (float32) shards, the fragments' text and float16 shards. Store: prompts, the MiniLM and CLIP float16
    vectors, the two indexes (``index_bytes``), the fragment vocabulary (at most ``fragments`` rows: float16 vectors and a
    flat float32 index per space)."""
    frag_dims = 384 + clip_dim
    work = (2 * text_bytes + BYTES_PER_TEXT_VALUE * rows + rows * 384 * 2 + rows * clip_dim * 4
            + fragments * (BYTES_PER_FRAGMENT_TEXT + frag_dims * 2))
    store = (text_bytes + 16 * rows + rows * 384 * 2 + rows * clip_dim * 2 + index_bytes
             + fragments * (BYTES_PER_FRAGMENT_TEXT + frag_dims * (2 + 4)))
    return DiskEstimate(rows=rows, text_bytes=text_bytes, work_bytes=work, store_bytes=store)


def check_free_space(out: Path, need: DiskEstimate, *, already: int = 0) -> None:
    """Refuse, with the numbers, when the disk of ``out`` has less free than ``need`` (less ``already``,
    the bytes of resumed work that are on disk already)."""
    folder = existing_folder(out.parent)
    free = shutil.disk_usage(folder).free
    required = max(0, need.total - already)
    if free < required:
        raise InputError(
            f"not enough free space for {out}: the build needs about {format_bytes(required)} (work folder "
            f"{format_bytes(need.work_bytes)}, store {format_bytes(need.store_bytes)}, for {need.rows:,} prompts) "
            f"and {folder} has {format_bytes(free)} free; free some space or build on another disk", param="out")
