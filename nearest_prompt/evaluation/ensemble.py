"""Blend our predicted vectors with other models' vectors (ensembles).

``blend_predictions([ours, theirs], weights=[0.4, 0.6])`` returns, per row,
``normalise(sum_s w_s * v_s)``. With ``confidences`` (one array per source,
or None for a source without one), each source's weight becomes
``w_s * confidence_s ** power`` row by row, so our vector counts for more
where its neighbours agree. Inputs need not be unit vectors; they are
normalised first so that the weights mean what they say.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nearest_prompt.common.atomic import check_writable
from nearest_prompt.common.errors import InputError


def blend_predictions(vectors: Sequence[np.ndarray], *, weights: Sequence[float] | None = None,
                      confidences: Sequence[np.ndarray | None] | None = None, power: float = 1.0) -> np.ndarray:
    if not vectors:
        raise InputError("nothing to blend")
    shapes = {np.shape(v) for v in vectors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"all predictions must have the same [n, d] shape, got {sorted(shapes)}")
    weights = [1.0] * len(vectors) if weights is None else list(weights)
    if len(weights) != len(vectors) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError(f"need one non-negative weight per input (not all zero), got {weights}", param="weights")
    confidences = list(confidences) if confidences is not None else [None] * len(vectors)
    if len(confidences) != len(vectors):
        raise InputError("need one confidence array (or None) per input", param="confidence")
    n = len(vectors[0])
    total = np.zeros(np.shape(vectors[0]), dtype=np.float64)
    for v, w, c in zip(vectors, weights, confidences):
        v = np.asarray(v, dtype=np.float64)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        unit = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
        row_w = np.full(n, float(w)) if c is None else float(w) * np.clip(np.asarray(c, np.float64), 0, None) ** power
        total += row_w[:, None] * unit
    norm = np.linalg.norm(total, axis=1, keepdims=True)
    return np.divide(total, norm, out=np.zeros_like(total), where=norm > 0).astype(np.float32)


def blend_files(inputs: Sequence[str | Path], out: str | Path, *, weights: Sequence[float] | None = None,
                confidences: Sequence[str | Path | None] | None = None, power: float = 1.0) -> list[str]:
    """Blend prediction files (``.csv`` submissions or ``.npy`` + ``.ids.txt``), aligned by image id, into
    ``out`` (one of the two kinds); ``confidences``: per input a ``*.confidence.csv`` from predict, or None.
    Returns the image ids, in the order of the first input. ``out`` may not be one of the inputs."""
    from .inputs import check_prediction_path, read_confidence, read_predictions, write_predictions
    from .submission import ids_path

    out = check_writable(check_prediction_path(out))
    if not inputs:
        raise InputError("nothing to blend: give prediction files", param="inputs")
    own = [Path(p).resolve() for p in inputs] + [ids_path(p).resolve() for p in inputs if str(p).endswith(".npy")]
    own += [Path(c).resolve() for c in confidences or [] if c is not None]
    if out.resolve() in own or (out.suffix == ".npy" and ids_path(out).resolve() in own):
        raise InputError(f"{out} is one of the inputs; write the blend to a new file", param="out")
    if confidences is not None and len(confidences) != len(inputs):
        raise InputError("need one confidence file (or none) per input", param="confidence")
    loaded = [read_predictions(p) for p in inputs]
    ids = loaded[0][0]
    vectors = []
    for (these, vecs), name in zip(loaded, inputs):
        if set(these) != set(ids) or len(these) != len(ids):
            raise InputError(f"{name} does not hold the same image ids as {inputs[0]}", param="inputs")
        if vecs.shape[1] != loaded[0][1].shape[1]:
            raise InputError(f"{name} holds {vecs.shape[1]}-d vectors, {inputs[0]} {loaded[0][1].shape[1]}-d",
                             param="inputs")
        pos = {img: i for i, img in enumerate(these)}
        vectors.append(vecs[[pos[img] for img in ids]])
    conf = None if confidences is None else [None if c is None else read_confidence(Path(c), ids) for c in confidences]
    blended = blend_predictions(vectors, weights=weights, confidences=conf, power=power)
    write_predictions(out, ids, np.asarray(blended))
    return ids
