"""Cleaning, exact dedup, and near dedup against a brute-force oracle."""

import numpy as np
import pytest

from indexer import dedup
from indexer.clean import ExactDeduper, clean_prompt

from .conftest import unit


def test_clean_prompt():
    assert clean_prompt("  a \t cat\n\non  a mat ") == "a cat on a mat"
    for bad in (None, 3, 2.5, float("nan"), b"bytes", ["x"], "   ", "\n\t"):
        assert clean_prompt(bad) is None


def test_exact_dedup_is_case_and_whitespace_insensitive_and_keeps_first():
    d = ExactDeduper()
    out = d.feed(["A  Cat", "a cat", " a cat ", "A CAT\n", "a dog", None, 7, "", "a dog"])
    assert out == ["A Cat", "a dog"]
    st = d.stats
    assert (st.values_read, st.not_text, st.empty, st.exact_duplicates, st.unique) == (9, 2, 1, 4, 2)
    assert d.feed(["A DOG", "a bird"]) == ["a bird"]  # state carries across batches
    assert d.feed(["x1", "x2", "x3", "x4"], max_new=2) == ["x1", "x2"]
    assert d.stats.values_read == 11 + 2  # stopped consuming at the limit


def _oracle_keep(v, threshold):
    """The documented rule over all pairs, O(n^2)."""
    sims = v @ v.T
    keep = np.ones(len(v), bool)
    for i in range(len(v)):
        if keep[i]:
            keep[(np.arange(len(v)) > i) & (sims[i] > threshold)] = False
    return keep


def _families(rng, n_fam, per, d, spread):
    centers = unit(rng.normal(size=(n_fam, d)))
    v = unit(np.repeat(centers, per, axis=0) + spread * rng.normal(size=(n_fam * per, d)))
    return v[rng.permutation(len(v))]


@pytest.mark.parametrize("threshold", [0.9, 0.95])
def test_near_dedup_matches_oracle_exact_path(rng, threshold):
    v = _families(rng, 60, 5, 48, 0.04)
    keep = dedup.near_duplicate_keep(v, threshold=threshold)
    np.testing.assert_array_equal(keep, _oracle_keep(v, threshold))
    assert 0 < keep.sum() < len(v)


def test_near_dedup_matches_oracle_ivf_path(rng, monkeypatch):
    monkeypatch.setattr(dedup, "EXACT_MAX_ROWS", 100)  # force the IVF path used above 100k rows
    v = _families(rng, 300, 4, 32, 0.03)
    keep = dedup.near_duplicate_keep(v, threshold=0.95)
    np.testing.assert_array_equal(keep, _oracle_keep(v, 0.95))


def test_near_dedup_chain_keeps_ends():
    # a ~ b ~ c but a !~ c: b goes (its earlier neighbour a is kept), c stays
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3)])
    c = np.array([np.cos(0.6), np.sin(0.6)])
    keep = dedup.near_duplicate_keep(np.stack([a, b, c]).astype(np.float32), threshold=float(np.cos(0.35)))
    assert keep.tolist() == [True, False, True]


def test_near_dedup_on_real_minilm(minilm):
    prompts = ["a cat sitting on a red mat, highly detailed, 4k",
               "a cat sitting on a red mat, highly detailed, 8k",
               "portrait of an astronaut riding a horse on mars",
               "a cat sitting on a red mat, highly detailed, 4k, trending on artstation"]
    v = minilm.encode(prompts)
    keep = dedup.near_duplicate_keep(v, threshold=0.95)
    assert keep.tolist()[:3] == [True, False, True]
    assert dedup.near_duplicate_keep(v, threshold=0.9999).all()
