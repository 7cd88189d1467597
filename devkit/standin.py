"""Stand-in text encoders for tests and benchmarks of the index machinery: each text's vector depends on that
text alone (seeded by its digest), so a prompt gets the same vector whatever batch it is embedded in, and
texts sharing their first word lie near one centre (clusters, as real embeddings have). Fast: no model.
Their neighbours mean nothing; they measure plumbing and index behaviour only.
"""

from __future__ import annotations

import hashlib

import numpy as np

from nearest_prompt.encoders.clip import ClipInfo
from nearest_prompt.encoders.minilm import MiniLMInfo

CENTRES = 64


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def text_vectors(texts: list[str], dim: int, *, salt: str) -> np.ndarray:
    """Unit float32 [n, dim]: a centre chosen by the first word, plus the text's own offset."""
    centres = np.random.default_rng(_seed(salt)).standard_normal((CENTRES, dim)).astype(np.float32)
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        first = (text.split() or [""])[0].casefold()
        own = np.random.default_rng(_seed(salt + "\x00" + text)).standard_normal(dim).astype(np.float32)
        out[i] = centres[_seed(salt + first) % CENTRES] + 0.8 * own
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class StandInMiniLM:
    def __init__(self, dim: int = 384):
        self.dim = dim
        self.info = MiniLMInfo(model="stand-in (text-seeded vectors)", dim=dim, max_seq_length=256, weights="stand-in")

    def encode(self, texts, *, batch_size: int = 64) -> np.ndarray:
        return text_vectors(list(texts), self.dim, salt="minilm")


class StandInClip:
    """Text vectors only (an index built with it is queried by text vectors, not images)."""

    def __init__(self, dim: int = 64, *, name: str = "stand-in"):
        self.dim = dim
        self.info = ClipInfo(model=f"{name} (text-seeded vectors)", pretrained=None, embed_dim=dim, context_length=77,
                             model_cfg={"embed_dim": dim, "stand_in": name}, preprocess={}, weights=f"{name}-{dim}",
                             random_weights=True)

    def encode_text(self, texts, *, batch_size: int = 64) -> np.ndarray:
        return text_vectors(list(texts), self.dim, salt=self.info.weights)

    def count_tokens(self, texts) -> np.ndarray:
        return np.array([len(t.split()) + 2 for t in texts], dtype=np.int64)
