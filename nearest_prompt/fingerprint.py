"""Cheap, stable fingerprints of model weight files and file checksums."""

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


def file_sha256(path: str | os.PathLike, *, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
