"""Cheap, stable fingerprints of model weight files, and file checksums (whole and per block)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_EDGE = 4 << 20  # bytes hashed from each end of a weights file


def weights_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the size plus the first and last 4 MiB of a weights file.

    Reading a multi-GB checkpoint in full at every query start would cost
    seconds; the edges plus the size tell checkpoints apart in practice.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            h.update(f.read(_EDGE))
    return "edges-sha256:" + h.hexdigest()


def file_digests(path: str | os.PathLike, *, block_bytes: int, chunk: int = 8 << 20) -> tuple[str, list[str]]:
    """One read of the file: its sha256, and the sha256 of each ``block_bytes`` block (the last one shorter)."""
    if block_bytes % chunk:
        chunk = block_bytes
    whole = hashlib.sha256()
    blocks: list[str] = []
    block = hashlib.sha256()
    in_block = 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            whole.update(data)
            block.update(data)
            in_block += len(data)
            if in_block == block_bytes:
                blocks.append(block.hexdigest())
                block, in_block = hashlib.sha256(), 0
    if in_block or not blocks:
        blocks.append(block.hexdigest())
    return whole.hexdigest(), blocks


def block_sha256(path: str | os.PathLike, index: int, *, block_bytes: int) -> str:
    """sha256 of block ``index`` (``block_bytes`` long, the last one shorter) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(index * block_bytes)
        left = block_bytes
        while left and (data := f.read(min(left, 8 << 20))):
            h.update(data)
            left -= len(data)
    return h.hexdigest()
