"""Atomic writes: the one write-to-temp-then-replace helper, and the directory swap of a store.

Every file the project writes goes through ``atomic_path``: the content is written to a temporary
sibling (same suffix, so numpy and matplotlib pick the right format), fsynced, and moved over the
target with ``os.replace``; a failure removes the temporary file. Readers see the old file or the
new one, never half of one.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

TMP_MARK = ".tmp-"  # temporary siblings are named .NAME.tmp-XXXXXXXX[.suffix]


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


def temp_sibling(path: str | os.PathLike, *, suffix: str | None = None) -> Path:
    """A fresh hidden name beside ``path`` (``.NAME.tmp-XXXXXXXX`` + ``suffix``)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}{suffix if suffix is not None else ''}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it is fsynced and moved to
    ``path`` atomically, on an exception it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_sibling(path, suffix=path.suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None and " requested and " in str(e):  # numpy's short write ("N requested and M written")
            raise OSError(errno.ENOSPC, f"No space left on device ({e})", str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def existing_folder(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (where a new file would land)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def make_parent(path: str | os.PathLike) -> Path | None:
    """Create the folder ``path`` goes into when it does not exist yet; returns the folder created (the caller
    says so), or None."""
    parent = Path(path).parent
    if parent.is_dir():
        return None
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def check_folder_writable(path: str | os.PathLike, *, param: str = "out") -> None:
    """Refuse, before any work, a place for new files and folders (``path``, created later under its nearest
    existing ancestor) that this user cannot write to: a read-only filesystem, a folder without permission."""
    path = Path(path).expanduser().absolute()
    folder = existing_folder(path)
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is not a directory", param=param)
    probe = temp_sibling(folder / "probe")
    try:  # access() would not see a read-only mount for root; creating a folder does
        probe.mkdir()
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e} in {folder}; choose another location",
                         param=param) from None
    probe.rmdir()


def check_writable(path: str | os.PathLike, *, param: str = "out") -> Path:
    """Refuse, before any work, an output file that cannot be written: a directory, or a folder (or its
    nearest existing ancestor, the folder being created later) that this user cannot write to."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name", param=param)
    folder = existing_folder(path.parent)
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is not a directory", param=param)
    probe = temp_sibling(folder / path.name)
    try:  # access() would not see a read-only mount for root; creating a file does
        probe.touch(exist_ok=False)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e} in {folder}; choose another location",
                         param=param) from None
    probe.unlink(missing_ok=True)
    return path


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
