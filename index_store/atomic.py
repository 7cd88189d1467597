"""Atomic file and directory replacement."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary sibling and ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a finished temporary file durable (fsync) and move it to ``path`` atomically."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst``.

    Two renames on one filesystem: the old ``dst`` is moved aside first and
    deleted only once ``src`` is in place.
    """
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if not dst.exists():
        os.replace(src, dst)
        fsync_dir(dst.parent)
        return
    aside = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, aside)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(aside, dst)
        raise
    fsync_dir(dst.parent)
    shutil.rmtree(aside, ignore_errors=True)
