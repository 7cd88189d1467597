"""Turn neighbours into one unit MiniLM vector per query, with a confidence.

Weightings (over the top-k neighbours, cosine ``s`` in CLIP space):

* ``power`` (default, the public kNN solutions of the "Stable Diffusion -
  Image to Prompts" competition): ``w = 1 / ((1 - s)^p + eps)``, p = 6,
  eps = 1e-6.
* ``softmax``: ``w = exp(s / T) / sum``, T = 0.01.

The prediction is the weighted sum of the neighbours' MiniLM vectors,
L2-normalised. Neighbours padded by faiss (id -1) get weight 0.

Confidence = ``||sum w_i v_i|| / sum w_i`` in [0, 1]: the weighted mean
cosine between the predicted vector and the neighbours' vectors, i.e. how
much the neighbours agree. A query whose neighbours all say the same thing
gets ~1; scattered neighbours give a low value. A query with no valid
neighbour gets a zero vector and confidence 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nearest_prompt.errors import InputError

from .search import Neighbors

SCHEMES = ("power", "softmax")


@dataclass(frozen=True, kw_only=True)
class Weighting:
    scheme: str = "power"
    power: float = 6.0
    eps: float = 1e-6
    temperature: float = 0.01

    def validate(self) -> "Weighting":
        if self.scheme not in SCHEMES:
            raise InputError(f"weighting must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.power <= 0 or self.eps <= 0:
            raise InputError(f"power and eps must be positive (got {self.power}, {self.eps})")
        if self.temperature <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        return self


@dataclass(frozen=True)
class Prediction:
    vectors: np.ndarray  # float32 [n, 384], unit (or zero where confidence == 0)
    confidence: np.ndarray  # float32 [n] in [0, 1]
    neighbors: Neighbors


def neighbor_weights(neighbors: Neighbors, weighting: Weighting) -> np.ndarray:
    """Non-negative float64 weights [n, k]; exactly 0 where ids == -1."""
    weighting.validate()
    valid = neighbors.valid
    s = np.where(valid, neighbors.scores, 0.0).astype(np.float64)
    if weighting.scheme == "power":
        gap = np.clip(1.0 - s, 0.0, 2.0)
        w = 1.0 / (gap ** weighting.power + weighting.eps)
    else:
        z = np.where(valid, s / weighting.temperature, -np.inf)
        top = np.max(z, axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        w = np.exp(z - top)
    return np.where(valid, w, 0.0)


def blend(neighbors: Neighbors, minilm: np.ndarray, weighting: Weighting) -> Prediction:
    """Weighted sum of the neighbours' rows of ``minilm`` [rows, 384] (any float dtype)."""
    w = neighbor_weights(neighbors, weighting)
    ids = np.where(neighbors.valid, neighbors.ids, 0)
    n, k = ids.shape
    vecs = np.asarray(minilm[ids.ravel()], dtype=np.float32).reshape(n, k, -1)
    summed = np.einsum("nk,nkd->nd", w, vecs.astype(np.float64))
    norm = np.linalg.norm(summed, axis=1)
    total = w.sum(axis=1)
    safe = norm > 0
    vectors = np.zeros_like(summed, dtype=np.float32)
    vectors[safe] = (summed[safe] / norm[safe, None]).astype(np.float32)
    confidence = np.where(total > 0, norm / np.where(total > 0, total, 1.0), 0.0)
    return Prediction(vectors=vectors, confidence=np.clip(confidence, 0, 1).astype(np.float32), neighbors=neighbors)
