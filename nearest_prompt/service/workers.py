"""The one admission path for model work: a bounded admission count, and one worker thread per model that
micro-batches the jobs queued for it.

``Admission`` holds the work the server has taken on (images and texts of the requests being answered);
a request that would take it over ``capacity`` is refused at once (the service answers 503 with
``Retry-After``), so nothing ever waits in an unbounded backlog.

``ModelWorker`` runs one model's forward passes on its own thread: jobs (a list of items and the function
that encodes them) queue up; a pass takes the jobs of one group (one model object and one kind of input)
in arrival order, up to ``max_batch`` items, waiting at most ``max_wait_s`` after the first job arrived for
the pass to fill. A job larger than ``max_batch`` is split over several passes and its results are joined
in order. ``submit`` returns a ``concurrent.futures.Future``: async handlers await it
(``asyncio.wrap_future``), threads (the composer, caption fusion) call ``result()``. A cancelled job is
not worked on further.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Busy(Exception):
    """The server holds as much work as it may: retry later."""


class TooLarge(Exception):
    """One request holds more work than the server ever takes at once."""


class Admission:
    """At most ``capacity`` units of work (images, texts) held at once; thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if n > self.capacity:
            raise TooLarge(f"{n} items in one request, more than this server works on at once ({self.capacity}); "
                           "send fewer per request")
        with self._lock:
            if self.used + n > self.capacity:
                raise Busy(f"{self.used} items are being worked on (limit {self.capacity})")
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass(eq=False)
class _Job:
    group: Hashable
    run: Callable[[list[Any]], np.ndarray]
    items: list[Any]
    arrived: float
    future: Future = field(default_factory=Future)
    taken: int = 0  # items handed to passes so far
    done: int = 0  # items whose results are in
    parts: dict[int, np.ndarray] = field(default_factory=dict)  # start offset -> results of that slice


class ModelWorker:
    def __init__(self, name: str, *, max_batch: int, max_wait_s: float,
                 on_pass: Callable[[str, int], None] | None = None):
        self.name = name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_pass = on_pass
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"model-{name}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Items queued and not yet in a pass."""
        with self._cond:
            return sum(len(j.items) - j.taken for j in self._jobs)

    def submit(self, group: Hashable, run: Callable[[list[Any]], np.ndarray], items: Sequence[Any]) -> Future:
        """Queue ``items`` for ``run`` (called on this worker's thread with lists of at most ``max_batch``
        items, possibly from several jobs of the same ``group``); the future gets ``run``'s rows for these
        items, in order."""
        job = _Job(group, run, list(items), time.monotonic())
        if not job.items:
            job.future.set_result(np.zeros((0, 0), dtype=np.float32))
            return job.future
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} worker is stopped")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # -- the worker thread ---------------------------------------------------------------------------
    def _pending(self, group: Hashable) -> int:
        return sum(len(j.items) - j.taken for j in self._jobs if j.group == group)

    def _next_pass(self) -> list[tuple[_Job, int, int]] | None:
        """Wait for work, then take one pass: (job, start, stop) slices of one group, at most max_batch items."""
        with self._cond:
            while True:
                while self._jobs and self._jobs[0].future.done():  # cancelled, or failed in an earlier pass
                    self._jobs.popleft()
                if self._jobs or self._closed:
                    break
                self._cond.wait()
            if self._closed:
                return None
            first = self._jobs[0]
            deadline = first.arrived + self.max_wait_s
            while self._pending(first.group) < self.max_batch and not self._closed and not first.future.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[tuple[_Job, int, int]] = []
            room = self.max_batch
            for job in list(self._jobs):
                if room == 0:
                    break
                if job.group != first.group or job.future.done():
                    continue
                n = min(room, len(job.items) - job.taken)
                taken.append((job, job.taken, job.taken + n))
                job.taken += n
                room -= n
            self._jobs = deque(j for j in self._jobs if j.taken < len(j.items) and not j.future.done())
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._next_pass()
            if taken is None:
                return
            if not taken:
                continue
            items = [it for job, start, stop in taken for it in job.items[start:stop]]
            try:
                out = np.asarray(taken[0][0].run(items))
                if len(out) != len(items):
                    raise RuntimeError(f"the {self.name} model returned {len(out)} rows for {len(items)} items")
            except BaseException as e:  # noqa: BLE001 - every job of the pass gets the error
                for job, _, _ in taken:
                    _settle(job.future, error=e)
                continue
            if self.on_pass:
                self.on_pass(self.name, len(items))
            at = 0
            for job, start, stop in taken:
                job.parts[start] = out[at:at + stop - start]
                at += stop - start
                job.done += stop - start
                if job.done == len(job.items):
                    _settle(job.future, result=np.concatenate([job.parts[s] for s in sorted(job.parts)]))


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled meanwhile: nobody waits for it
        pass
