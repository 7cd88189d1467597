"""The work folder of a build (``.NAME.build/`` beside ``out``): one build at a time, resumable, and
nothing left behind that cannot be resumed.

``WorkDir.lock()`` takes an OS lock (``flock``) on ``.NAME.build/lock``: a second build into the same
``out`` is refused with the holder's pid, host and start time, instead of wiping the first one's
shards. The lock dies with its process, so a killed build never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from nearest_prompt.common.atomic import write_bytes_atomic
from nearest_prompt.common.errors import BusyError

log = logging.getLogger(__name__)

RESUMABLE_FILES = ("prompts.arrow", "clean_stats.json", "keep.npy", "kept.arrow", "fragments.arrow",
                   "fragments.json")
SHARD_FILES = "[0-9][0-9][0-9][0-9][0-9].npy"  # a shard file, in a folder of its stage: minilm/, clip/, NAME-image/ ...


class WorkDir:
    def __init__(self, out: Path):
        self.out = out
        self.path = out.with_name(f".{out.name}.build")
        self._fd: int | None = None

    # -- the lock ---------------------------------------------------------------------------------
    def lock(self) -> WorkDir:
        lock_path = self.path / "lock"
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise BusyError(f"another build is writing {self.out} ({holder}); wait for it to finish, "
                                    "or choose another output directory", param="out") from None
                raise
            try:  # the holder before us may have removed the folder (and this file) as we opened it
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkDir:
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

    # -- resuming -----------------------------------------------------------------------------------
    def prepare(self, key: str) -> None:
        """Keep the folder's work when it was made for ``key`` (same inputs and options), else empty it."""
        state = self.path / "state.json"
        try:
            if json.loads(state.read_text()).get("key") == key:
                if self.has_resumable_work():
                    log.info("resuming the interrupted build in %s", self.path)
                return
        except (OSError, ValueError):
            pass
        if self.has_resumable_work():
            log.info("inputs or options changed since the interrupted build: starting over")
        self.clear()
        write_bytes_atomic(state, json.dumps({"key": key}).encode())

    def clear(self) -> None:
        """Remove everything in the folder but the lock."""
        for p in self.path.iterdir():
            if p.name != "lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def has_resumable_work(self) -> bool:
        return any((self.path / name).is_file() for name in RESUMABLE_FILES) or self.finished_shards() > 0

    def finished_shards(self) -> int:
        """Shard files in the shard folders (a shard file only ever appears whole)."""
        if not self.path.is_dir():
            return 0
        return sum(len(list(folder.glob(SHARD_FILES))) for folder in self.path.iterdir() if folder.is_dir())

    def size_bytes(self) -> int:
        """What the folder holds on disk now."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def after_failure(self, *, shard_totals: dict[str, int]) -> str:
        """Remove what cannot be resumed (temporary files, and the whole folder if nothing can be) and say
        what was kept; call while holding the lock."""
        for p in list(self.path.rglob(".*.tmp*")):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.path / "exact_dedup", ignore_errors=True)
        if not self.has_resumable_work():
            self.remove()
            return "nothing was kept"
        done = self.finished_shards()
        total = sum(shard_totals.values()) or done
        kept = [what for what, present in (("the deduplicated prompts", (self.path / "prompts.arrow").is_file()),
                                           (f"{done} of {total} embedding shards", total > 0)) if present]
        return (f"resumable: {' and '.join(kept)} ({self.size_bytes() / 2**20:.1f} MiB) kept in {self.path}; run the "
                "same build again to continue, or build with clean (--clean) to start afresh")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def sub(self, name: str) -> WorkDir:
        """A folder of its own inside this one (``add`` keeps its work there, beside a build's), covered by this
        folder's lock."""
        other = WorkDir(self.out)
        other.path = self.path / name
        other.path.mkdir(parents=True, exist_ok=True)
        return other

    def remove_if_idle(self) -> None:
        """Remove the folder when it holds nothing but the lock (no other work to resume)."""
        if all(p.name == "lock" for p in self.path.iterdir()):
            self.remove()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
