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
    """File descriptor 1 points to /dev/null for the duration (Python's own ``sys.stdout`` is flushed first, C's
    buffered output last).
    Process-wide: use it around short library calls, never around work that prints on purpose."""
    fd = 1  # C's stdout, whatever Python's sys.stdout is now (a test's capture may be another descriptor)
    sys.stdout.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        _flush_c_stdio()  # what printf buffered (stdout is fully buffered when it is not a terminal) goes too
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _flush_c_stdio() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask: nothing buffered there to lose
        pass
