"""Keeping a C library's own printing off standard output (where JSON answers go): faiss prints progress
lines ("resizing FILE to N bytes", "updating ondisk filename") with printf while it builds or opens on-disk
indexes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """File descriptor 1 points to /dev/null for the duration (Python's own ``sys.stdout`` is flushed first).
    Process-wide: use it around short library calls, never around work that prints on purpose."""
    try:
        fd = sys.stdout.fileno() if hasattr(sys.stdout, "fileno") else 1
    except (OSError, ValueError):  # a replaced stdout without a file (tests): the real descriptor is 1
        fd = 1
    sys.stdout.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
