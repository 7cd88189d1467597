"""Neighbour weighting and blending: hand-computed values, padding, confidence."""

import numpy as np
import pytest

from nearest_prompt.common.errors import InputError
from nearest_prompt.retriever import Neighbors, Weighting, blend, neighbor_weights

from .conftest import unit


def test_power_weights_match_formula():
    s = np.array([[0.9, 0.5, 0.1]], np.float32)
    nb = Neighbors(ids=np.array([[0, 1, 2]]), scores=s)
    w = neighbor_weights(nb, Weighting(power=6, eps=1e-6))
    expect = 1.0 / ((1.0 - s.astype(np.float64)) ** 6 + 1e-6)
    np.testing.assert_allclose(w, expect, rtol=1e-6)


def test_softmax_weights_match_formula():
    s = np.array([[0.30, 0.28, 0.20]], np.float32)
    nb = Neighbors(ids=np.array([[0, 1, 2]]), scores=s)
    w = neighbor_weights(nb, Weighting(scheme="softmax", temperature=0.01))
    e = np.exp(s.astype(np.float64) / 0.01)
    np.testing.assert_allclose(w / w.sum(), e / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("scheme", ["power", "softmax"])
def test_padded_neighbours_get_no_weight(scheme, rng):
    minilm = unit(rng.normal(size=(5, 384)))
    ids = np.array([[3, 1, -1, -1]])
    scores = np.array([[0.8, 0.6, -np.inf, -np.inf]], np.float32)
    padded = blend(Neighbors(ids, scores), minilm, Weighting(scheme=scheme))
    trimmed = blend(Neighbors(ids[:, :2], scores[:, :2]), minilm, Weighting(scheme=scheme))
    np.testing.assert_allclose(padded.vectors, trimmed.vectors, atol=1e-6)
    assert padded.confidence[0] == pytest.approx(trimmed.confidence[0], abs=1e-6)
    # row 0 of minilm (where -1 would wrongly index) must not leak in
    assert not np.allclose(padded.vectors[0], unit(minilm[0]))


def test_blend_is_unit_weighted_sum_and_confidence_is_mean_cosine(rng):
    minilm = unit(rng.normal(size=(10, 384)))
    ids = np.array([[2, 5, 7], [1, 1, 1]])
    scores = np.array([[0.9, 0.7, 0.3], [0.5, 0.4, 0.3]], np.float32)
    pred = blend(Neighbors(ids, scores), minilm, Weighting())
    w = neighbor_weights(Neighbors(ids, scores), Weighting())
    v0 = (w[0, :, None] * minilm[ids[0]]).sum(0)
    np.testing.assert_allclose(pred.vectors[0], v0 / np.linalg.norm(v0), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pred.vectors, axis=1), 1.0, atol=1e-6)
    mean_cos = (w[0] * (minilm[ids[0]] @ pred.vectors[0])).sum() / w[0].sum()
    assert pred.confidence[0] == pytest.approx(mean_cos, abs=1e-5)
    assert pred.confidence[1] == pytest.approx(1.0, abs=1e-6)  # all neighbours agree


def test_no_valid_neighbour_gives_zero_vector_and_zero_confidence(rng):
    minilm = unit(rng.normal(size=(3, 384)))
    pred = blend(Neighbors(np.full((1, 2), -1), np.full((1, 2), -np.inf, np.float32)), minilm, Weighting())
    assert not pred.vectors.any() and pred.confidence[0] == 0.0


@pytest.mark.parametrize("bad", [dict(scheme="mean"), dict(power=0), dict(temperature=-1), dict(eps=0)])
def test_bad_weighting_options(bad):
    with pytest.raises(InputError):
        Weighting(**bad).validate()


def test_blend_in_chunks_equals_one_pass(rng, monkeypatch):
    from nearest_prompt.retriever import weighting

    minilm = unit(rng.normal(size=(200, 384))).astype(np.float16)
    ids = rng.integers(-1, 200, size=(37, 9))
    scores = np.where(ids >= 0, rng.uniform(0, 1, size=ids.shape), -np.inf).astype(np.float32)
    nb = Neighbors(ids, scores)
    one = blend(nb, minilm, Weighting())
    monkeypatch.setattr(weighting, "BLEND_CHUNK", 5)
    chunked = blend(nb, minilm, Weighting())
    np.testing.assert_allclose(chunked.vectors, one.vectors, atol=1e-6)
    np.testing.assert_allclose(chunked.confidence, one.confidence, atol=1e-6)
