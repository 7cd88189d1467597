"""The image stage of a build: the CLIP image embeddings of the images the prompts made (an image space).

A corpus names its images in one column (``image_column``): a path (absolute, or found next to a corpus file or
in its ``images/`` folder, as ``eval --pairs`` finds them), a JSON list of paths (a parquet list column), or the
image's bytes. A prompt with several images gets the mean of their unit vectors, normalised: one row a prompt,
so an image space keeps the store's row-id contract and filters, removals, additions and fusion with the text
spaces work on it unchanged, and a prompt with many images weighs as much in a vote as one with a single image.
A prompt whose images are all missing or unreadable is not in the space (its row mask is False); they are
counted, by reason, in the statistics.

Shards as the text stages write them (``work/NAME-image/NNNNN.npy``, float32), each with its row mask
(``NNNNN.rows.npy``) and counts (``NNNNN.json``) written first: a finished vectors file is the shard's "done"
marker, so an interrupted build resumes here too.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.atomic import atomic_path, write_bytes_atomic
from nearest_prompt.common.errors import InputError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS, find_image, load_image

from .prompt_file import PromptFile
from .shards import Shard, plan_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageShards:
    """The embedded shards of one image space: vectors (float32, zero where a row has no image), the row mask,
    and the counts (``images``: read; ``rows``: prompts with an image; ``skipped``: by reason, with an example)."""

    paths: list[Path]
    members: np.ndarray
    stats: dict[str, Any]


def image_refs(value: Any) -> list[Any]:
    """The images one value of the image column names: bytes, a path, or a JSON list of paths (empty: none)."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [bytes(value)] if len(value) else []
    text = str(value).strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            return [text]
        return [str(v).strip() for v in items if v is not None and str(v).strip()] if isinstance(items, list) else []
    return [text] if text else []


def embed_images(prompts: PromptFile, *, column: str, bases: Sequence[Path], encoder: Any, folder: Path,
                 shard_size: int, batch_size: int, desc: str, progress: bool,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageShards:
    """Embed the images of every row of ``prompts`` (its column ``column``) with ``encoder.encode_images``, into
    shards in ``folder`` (finished shards are skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(len(prompts), shard_size=shard_size, folder=folder)
    with progress_bar(total=len(prompts), desc=desc, enabled=progress) as bar:
        for shard in shards:
            if not _done(shard, encoder.dim):
                values = prompts.column(column, shard.start, shard.stop)
                _embed_shard(values, shard, bases=bases, encoder=encoder, batch_size=batch_size,
                             max_pixels=max_pixels)
            bar.update(shard.rows)
    members = np.concatenate([np.load(_mask_path(s)) for s in shards]) if shards else np.zeros(0, bool)
    stats = _merge([json.loads(_stats_path(s).read_text()) for s in shards])
    stats["column"] = column
    if not members.any():
        skipped = stats["skipped"]
        first = next(iter(skipped.values()), {}).get("example", "")
        raise InputError(f"no usable images in column {column!r} ({stats['refs']} named, none read" +
                         (f"; e.g. {first}" if first else "") + "): check the paths (next to the corpus file or "
                         "in its images/ folder)", param="image_column")
    return ImageShards([s.path for s in shards], members, stats)


def report_images(space: str, stats: dict[str, Any]) -> None:
    """Say what the image stage of ``space`` embedded and skipped (by reason, with an example)."""
    skipped = sum(entry["count"] for entry in stats["skipped"].values())
    log.info("%s: %d images of %d prompts embedded%s", space, stats["images"], stats["rows"],
             f"; {skipped} skipped: " + "; ".join(f"{e['count']} {kind}, e.g. {e['example']}"
                                                  for kind, e in stats["skipped"].items()) if skipped else "")
    if skipped:
        log.warning("%s: %d of %d images could not be read (the prompts without a readable image are not in this "
                    "space)", space, skipped, stats["refs"])


def merge_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several image stages (a build's and the additions' since) as one."""
    return _merge(parts)


def _mask_path(shard: Shard) -> Path:
    return shard.path.with_suffix(".rows.npy")


def _stats_path(shard: Shard) -> Path:
    return shard.path.with_suffix(".json")


def _done(shard: Shard, dim: int) -> bool:
    try:
        vectors = np.load(shard.path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return vectors.shape == (shard.rows, dim) and _mask_path(shard).is_file() and _stats_path(shard).is_file()


def _embed_shard(values: list[Any], shard: Shard, *, bases: Sequence[Path], encoder: Any, batch_size: int,
                 max_pixels: int) -> None:
    sums = np.zeros((shard.rows, encoder.dim), dtype=np.float64)
    counts = np.zeros(shard.rows, dtype=np.int64)
    skipped: dict[str, dict[str, Any]] = {}
    refs = 0
    batch: list[Any] = []
    owners: list[int] = []

    def flush() -> None:
        if batch:
            vectors = encoder.encode_images(batch, batch_size=len(batch))
            np.add.at(sums, np.asarray(owners), vectors.astype(np.float64))
            np.add.at(counts, np.asarray(owners), 1)
            batch.clear()
            owners.clear()

    for row, value in enumerate(values):
        for ref in image_refs(value):
            refs += 1
            try:
                image = _open(ref, bases, max_pixels=max_pixels)
            except InputError as e:
                reason = str(e).split(": ", 1)[-1]
                kind = reason.split(" (", 1)[0]
                entry = skipped.setdefault(kind, {"count": 0, "example": f"{_label(ref)}: {reason}"})
                entry["count"] += 1
                continue
            batch.append(image)
            owners.append(row)
            if len(batch) >= batch_size:
                flush()
    flush()
    members = counts > 0
    vectors = np.zeros((shard.rows, encoder.dim), dtype=np.float32)
    if members.any():
        mean = sums[members] / counts[members, None]
        vectors[members] = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    stats = {"refs": refs, "images": int(counts.sum()), "rows": int(members.sum()), "skipped": skipped}
    with atomic_path(_mask_path(shard)) as tmp:
        np.save(tmp, members)
    write_bytes_atomic(_stats_path(shard), json.dumps(stats).encode())
    with atomic_path(shard.path) as tmp:
        np.save(tmp, vectors)


def _open(ref: Any, bases: Sequence[Path], *, max_pixels: int) -> Any:
    if isinstance(ref, bytes):
        return load_image(ref, max_pixels=max_pixels)
    found = find_image(ref, bases)
    if found is None:
        raise InputError(f"{ref}: not found (looked next to the corpus files and in their images/ folders)")
    return load_image(found, max_pixels=max_pixels)


def _label(ref: Any) -> str:
    return f"<{len(ref)} bytes>" if isinstance(ref, bytes) else str(ref)


def _merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"refs": 0, "images": 0, "rows": 0, "skipped": {}}
    kinds: Counter[str] = Counter()
    for part in parts:
        for key in ("refs", "images", "rows"):
            out[key] += part[key]
        for kind, entry in part["skipped"].items():
            kinds[kind] += entry["count"]
            out["skipped"].setdefault(kind, {"count": 0, "example": entry["example"]})
    for kind, n in kinds.items():
        out["skipped"][kind]["count"] = n
    return out
