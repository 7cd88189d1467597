"""Encoders whose work goes through the model workers: what the served ``Retriever`` and ``Composer`` call.

``QueuedClip`` and ``QueuedMiniLM`` look like ``ClipEncoder`` and ``MiniLMEncoder`` (``encode_text``,
``encode_images``, ``encode``, ``info``, ``count_tokens``), and ``QueuedCaptioner`` like ``Captioner``, but each
call queues its items on the model's ``ModelWorker`` and waits for them there, within the deadline of the
request it serves (``deadline``, a context variable the handlers set). So every forward pass of every
endpoint, the composer's and caption fusion's included, runs on that model's one worker thread, in passes
of at most ``max_batch`` items.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from .workers import ModelWorker

# monotonic time by which the request being served must be answered (None: no deadline)
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class TimedOut(Exception):
    """The request ran past its deadline while waiting for a model."""


def wait(worker: ModelWorker, group: Any, run: Any, items: Sequence[Any]) -> np.ndarray:
    """Queue ``items`` on ``worker`` and block until their rows are in (or the request's deadline passes:
    the job is cancelled and ``TimedOut`` raised)."""
    end = deadline.get()
    left = None if end is None else end - time.monotonic()
    if left is not None and left <= 0:
        raise TimedOut(f"the request ran out of time before its {worker.name} work")
    future = worker.submit(group, run, items)
    try:
        return future.result(timeout=left)
    except FutureTimeout:
        future.cancel()
        raise TimedOut(f"the request ran out of time waiting for the {worker.name} model") from None


class QueuedClip:
    """A ``ClipEncoder`` whose forward passes run on ``worker`` (texts and images in passes of their own)."""

    def __init__(self, encoder: Any, worker: ModelWorker):
        self.encoder, self.worker = encoder, worker
        self.info, self.tokenizer = encoder.info, encoder.tokenizer

    @property
    def dim(self) -> int:
        return self.info.embed_dim

    def encode_text(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        enc = self.encoder
        return wait(self.worker, ("clip-text", id(enc)), lambda b: enc.encode_text(b, batch_size=len(b)), texts)

    def encode_images(self, images: Sequence[Any], *, batch_size: int | None = None) -> np.ndarray:
        enc = self.encoder
        return wait(self.worker, ("clip-image", id(enc)), lambda b: enc.encode_images(b, batch_size=len(b)), images)

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.count_tokens(texts)  # the tokenizer only: no model work


class QueuedMiniLM:
    """A ``MiniLMEncoder`` whose forward passes run on ``worker``."""

    def __init__(self, encoder: Any, worker: ModelWorker):
        self.encoder, self.worker = encoder, worker
        self.info = encoder.info

    @property
    def dim(self) -> int:
        return self.info.dim

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        enc = self.encoder
        if not len(texts):
            return np.empty((0, self.dim), dtype=np.float32)
        return wait(self.worker, ("minilm", id(enc)), lambda b: enc.encode(b, batch_size=len(b)), texts)


class QueuedCaptioner:
    """A CoCa ``Captioner`` whose decoding runs on ``worker``."""

    def __init__(self, captioner: Any, worker: ModelWorker):
        self.captioner, self.worker = captioner, worker
        self.label = captioner.label

    def caption(self, images: Sequence[Any], *, batch_size: int | None = None) -> list[str]:
        cap = self.captioner
        rows = wait(self.worker, ("caption", id(cap)),
                    lambda b: np.array(cap.caption(b, batch_size=len(b)), dtype=object), images)
        return [str(c) for c in rows]
