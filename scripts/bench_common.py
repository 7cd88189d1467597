"""Helpers for the benchmarks: peak-memory sampling and fast stand-in encoders.

The stand-ins produce pseudo-random unit vectors (seeded by the batch) at
memory speed, so a benchmark can push the full 1.96M-prompt corpus through
the real build pipeline on 2 CPU cores to measure the pipeline's own memory
and time. They say nothing about quality or model speed.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import numpy as np

from nearest_prompt.encoders.clip import ClipInfo
from nearest_prompt.encoders.minilm import MiniLMInfo


def memory_status() -> dict[str, int]:
    """This process's VmRSS, RssAnon, RssFile, RssShmem and VmHWM from /proc/self/status, in bytes."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                found[key] = int(line.split()[1]) * 1024
    return found


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds in a thread.

    ``peak``: peak VmRSS (anonymous + file-backed pages) in bytes;
    ``peak_anon``: peak RssAnon (heap, arrays, FAISS structures: what cannot
    be reclaimed without swap). ``by_stage``: both peaks per build stage when
    ``follow_build_stages()`` was called (stages come from the
    ``build stage: NAME`` log records of ``indexer.build``).
    """

    def __init__(self, interval: float = 0.2):
        m = memory_status()
        self.interval, self._stop = interval, threading.Event()
        self.peak, self.peak_anon = m.get("VmRSS", 0), m.get("RssAnon", 0)
        self.stage, self.by_stage = "start", {}

    def follow_build_stages(self) -> PeakRSS:
        import logging

        owner = self

        class _Stages(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                msg = record.getMessage()
                if msg.startswith("build stage: "):
                    owner._sample()
                    owner.stage = msg.split(": ", 1)[1]

        logger = logging.getLogger("nearest_prompt.indexer.build")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(_Stages())
        return self

    def _sample(self) -> None:
        m = memory_status()
        rss, anon = m.get("VmRSS", 0), m.get("RssAnon", 0)
        self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
        old = self.by_stage.get(self.stage, (0, 0))
        self.by_stage[self.stage] = (max(old[0], rss), max(old[1], anon))

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def _vectors(texts: list[str], dim: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32("\x00".join(texts[:4]).encode()) + len(texts))
    v = rng.standard_normal((len(texts), dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class FakeMiniLM:
    def __init__(self, dim: int = 384):
        self.dim = dim
        self.info = MiniLMInfo(model="stand-in (random vectors)", dim=dim, max_seq_length=256, weights="fake")

    def encode(self, texts, *, batch_size: int = 64) -> np.ndarray:
        return _vectors(list(texts), self.dim)


class FakeClipText:
    """Random text vectors under a given ClipInfo (so a real image encoder can query the store)."""

    def __init__(self, info: ClipInfo | None = None, dim: int = 1024):
        self.info = info or ClipInfo(model="stand-in (random vectors)", pretrained=None, embed_dim=dim,
                                     context_length=77, model_cfg={"embed_dim": dim}, preprocess={},
                                     weights="fake")
        self.dim = self.info.embed_dim

    def encode_text(self, texts, *, batch_size: int = 64) -> np.ndarray:
        return _vectors(list(texts), self.dim)
