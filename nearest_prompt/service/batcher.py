"""Micro-batching: requests arriving within ``max_wait`` share one call of ``run`` (one CLIP forward
pass), up to ``max_batch`` items; a bounded queue refuses the overflow instead of growing a backlog.

``submit(items)`` returns the results of ``run`` for those items, in order. ``run`` is called on one
worker thread (the encoder is not re-entrant, and torch uses all cores for one batch anyway), with a
list of ``(key, item)`` pairs: items of one batch may belong to different keys (e.g. two models
around a reload), and ``run`` gets them grouped by key.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """More items are waiting than the queue holds: the client should retry later."""


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, run: Callable[[Hashable, list[Any]], Sequence[Any]], *, max_batch: int, max_wait_s: float,
                 queue_size: int, on_batch: Callable[[int], None] | None = None):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._jobs: list[_Job] = []
        self._waiting = 0  # items queued, not yet taken into a batch
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._waiting

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, key: Hashable, items: list[Any]) -> list[Any]:
        if not items:
            return []
        if len(items) > self.queue_size:
            raise ValueError(f"{len(items)} images in one request, more than this server queues at once "
                             f"({self.queue_size}); send fewer per request")
        if self._waiting + len(items) > self.queue_size:
            raise QueueFull(f"{self._waiting} images are waiting for the encoder (limit {self.queue_size})")
        job = _Job(key, list(items), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._waiting += len(items)
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._jobs:
                continue
            if self._waiting < self.max_batch and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # let others join this batch
            batch: list[_Job] = []
            size = 0
            while self._jobs and (not batch or size + len(self._jobs[0].items) <= self.max_batch):
                job = self._jobs.pop(0)
                batch.append(job)
                size += len(job.items)
            self._waiting -= size
            if self._jobs:
                self._wakeup.set()
            live = [j for j in batch if not j.future.done()]  # a timed-out request is not worked for
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._pool, self._run_grouped, live)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, r in zip(live, results):
                if not j.future.done():
                    j.future.set_result(r)

    def _run_grouped(self, jobs: list[_Job]) -> list[list[Any]]:
        """One ``run`` call per key, results split back per job."""
        out: dict[int, list[Any]] = {}
        keys: dict[Hashable, list[_Job]] = {}
        for j in jobs:
            keys.setdefault(j.key, []).append(j)
        for key, group in keys.items():
            items = [it for j in group for it in j.items]
            if self.on_batch:
                self.on_batch(len(items))
            results = list(self.run(key, items))
            start = 0
            for j in group:
                out[id(j)] = results[start:start + len(j.items)]
                start += len(j.items)
        return [out[id(j)] for j in jobs]
