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

from nearest_prompt.common.errors import InputError, StoreError
from nearest_prompt.index_store.format import MINILM

from .search import Neighbors

SCHEMES = ("power", "softmax")
BLEND_CHUNK = 512  # queries whose neighbour vectors are gathered at once


@dataclass(frozen=True, kw_only=True)
class Weighting:
    scheme: str = "power"
    power: float = 6.0
    eps: float = 1e-6
    temperature: float = 0.01

    def validate(self) -> Weighting:
        if self.scheme not in SCHEMES:
            raise InputError(f"weighting must be one of {', '.join(SCHEMES)}, got {self.scheme!r}", param="weighting")
        for name in ("power", "eps", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}", param=name)
        return self


@dataclass(frozen=True)
class Prediction:
    vectors: np.ndarray  # float32 [n, 384], unit (or zero where confidence == 0)
    confidence: np.ndarray  # float32 [n] in [0, 1]
    neighbors: Neighbors

    @property
    def top_score(self) -> np.ndarray:
        """The best neighbour's similarity per query (NaN for a query without neighbours), for ensembles."""
        return np.where(self.neighbors.valid[:, 0], self.neighbors.scores[:, 0], np.nan)


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


def neighbor_shares(neighbors: Neighbors, weighting: Weighting) -> np.ndarray:
    """Each neighbour's share of its query's blended prediction: ``neighbor_weights`` normalised to sum to 1
    per query (float64 [n, k]; rows without a neighbour are 0)."""
    w = neighbor_weights(neighbors, weighting)
    total = w.sum(axis=1, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)


def blend(neighbors: Neighbors, minilm: np.ndarray, weighting: Weighting) -> Prediction:
    """Weighted sum of the neighbours' rows of ``minilm`` [rows, 384] (any float dtype)."""
    vectors, confidence = blend_weights(neighbors.ids, neighbor_weights(neighbors, weighting), minilm)
    return Prediction(vectors=vectors, confidence=confidence, neighbors=neighbors)


def blend_weights(ids: np.ndarray, weights: np.ndarray, minilm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit ``sum_i w_i minilm[ids_i]`` per row and its confidence; ids == -1 must carry weight 0.

    A row id may appear several times in a row (e.g. fused neighbour sets):
    its weights simply add up.
    """
    valid = ids >= 0
    if np.any(weights[~valid] != 0):
        raise ValueError("padding neighbours (id -1) must have weight 0")
    n, k = ids.shape
    summed = np.empty((n, minilm.shape[1]), dtype=np.float64)
    for s in range(0, n, BLEND_CHUNK):  # bounded memory: BLEND_CHUNK x k neighbour vectors at a time
        rows = np.where(valid[s:s + BLEND_CHUNK], ids[s:s + BLEND_CHUNK], 0)
        vecs = np.asarray(minilm[rows.ravel()], dtype=np.float32).reshape(len(rows), k, -1)
        if not np.isfinite(vecs).all():
            bad = rows[~np.isfinite(vecs).all(axis=-1)][0]
            raise StoreError(f"the MiniLM vector of row {bad} is not finite: the store's {MINILM} is damaged; "
                             "check it with 'nearest-prompt info --index DIR --verify', and rebuild it if that fails")
        summed[s:s + len(rows)] = np.einsum("nk,nkd->nd", weights[s:s + BLEND_CHUNK].astype(np.float32), vecs)
    norm = np.linalg.norm(summed, axis=1)
    total = weights.sum(axis=1)
    safe = norm > 0
    vectors = np.zeros(summed.shape, dtype=np.float32)
    vectors[safe] = (summed[safe] / norm[safe, None]).astype(np.float32)
    confidence = np.where(total > 0, norm / np.where(total > 0, total, 1.0), 0.0)
    return vectors, np.clip(confidence, 0, 1).astype(np.float32)


def fuse(parts: list[tuple[Neighbors, float]], minilm: np.ndarray, weighting: Weighting) -> Prediction:
    """Fuse several neighbour sets per query (e.g. an image query and caption queries).

    Rule: within each part the weights are normalised to sum to 1, then
    scaled by the part's weight; the parts' neighbour lists are joined (a
    prompt found by several parts adds its weights up) and blended as one.
    A part with no valid neighbour for a query contributes nothing to it.
    """
    if not parts:
        raise ValueError("fuse needs at least one neighbour set")
    ids, weights = [], []
    for nb, part_weight in parts:
        if part_weight < 0:
            raise InputError(f"fusion weights must be non-negative, got {part_weight}", param="caption_weight")
        weights.append(neighbor_shares(nb, weighting) * part_weight)
        ids.append(nb.ids)
    joined = Neighbors(ids=np.concatenate(ids, axis=1),
                       scores=np.concatenate([nb.scores for nb, _ in parts], axis=1))
    vectors, confidence = blend_weights(joined.ids, np.concatenate(weights, axis=1), minilm)
    return Prediction(vectors=vectors, confidence=confidence, neighbors=joined)


def drop_neighbors(neighbors: Neighbors, drop: np.ndarray, *, k: int) -> Neighbors:
    """Remove the neighbours marked in ``drop`` [n, K] (e.g. exact copies of a held-out
    query), keep the order of the rest, and cut to ``k`` columns (padding with -1)."""
    keep = neighbors.valid & ~drop
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(np.where(keep, neighbors.ids, -1), order, 1)
    scores = np.take_along_axis(np.where(keep, neighbors.scores, -np.inf), order, 1).astype(np.float32)
    return Neighbors(ids=ids, scores=scores)
