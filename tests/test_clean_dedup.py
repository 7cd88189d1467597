"""Cleaning, exact dedup, and near dedup against a brute-force oracle."""

import json

import numpy as np
import pytest

from nearest_prompt.common.text import clean_prompt
from nearest_prompt.indexer import dedup, exact_dedup, readers
from nearest_prompt.indexer.exact_dedup import ExactDedup
from nearest_prompt.indexer.readers import check_sources

from .conftest import unit


def test_clean_prompt():
    assert clean_prompt("  a \t cat\n\non  a mat ") == "a cat on a mat"
    for bad in (None, 3, 2.5, float("nan"), b"bytes", ["x"], "   ", "\n\t"):
        assert clean_prompt(bad) is None


def _jsonl(path, values):
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return check_sources([path])


def _dedup(sources, tmp_path, **kw):
    d = ExactDedup(sources, folder=tmp_path / "work", **kw)
    blocks = list(d.blocks())
    assert not (tmp_path / "work").exists()  # bucket files and mask removed
    return [p for b in blocks for p in b.to_pylist()], d.stats, d.scanned


def test_exact_dedup_is_case_and_whitespace_insensitive_and_keeps_first(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", ["A  Cat", "a cat", " a cat ", "A CAT\n", "a dog", None, 7, "", "a dog"])
    out, st, _ = _dedup(src, tmp_path)
    assert out == ["A Cat", "a dog"]
    assert (st.values_read, st.not_text, st.empty, st.exact_duplicates, st.unique) == (9, 2, 1, 4, 2)
    src2 = _jsonl(tmp_path / "b.jsonl", ["A DOG", "a bird", "x1", "x2", "x3", "x4"])
    assert _dedup(src + src2, tmp_path)[0] == ["A Cat", "a dog", "a bird", "x1", "x2", "x3", "x4"]  # across files
    out, st, _ = _dedup(src + src2, tmp_path, limit=5)
    assert out == ["A Cat", "a dog", "a bird", "x1", "x2"]
    assert st.values_read == 9 + 4 and st.unique == 5  # stopped consuming at the limit


def _oracle_unique(values, limit=None):
    """First occurrence of each key, in order, from a plain set."""
    seen, out = set(), []
    for v in values:
        text = clean_prompt(v)
        if text is None or (key := text.casefold()) in seen:
            continue
        seen.add(key)
        out.append(text)
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("limit", [None, 1, 37, 400, 10_000])
def test_exact_dedup_matches_set_oracle_over_batches_and_buckets(tmp_path, rng, monkeypatch, limit):
    # few buckets and tiny batches: buckets hold many records of many batches, and a limit takes several
    # rounds of reading (heavy duplication: each round finds few new prompts)
    monkeypatch.setattr(exact_dedup, "BUCKETS", 4)
    monkeypatch.setattr(readers, "BATCH", 7)
    words = [f"w{i}" for i in range(500)]
    values = [words[i] if i % 3 else words[i].upper() + "  " for i in rng.zipf(1.3, size=3000) % 500]
    values[::50] = [None] * len(values[::50])
    src = _jsonl(tmp_path / "z.jsonl", values)
    out, st, scanned = _dedup(src, tmp_path, limit=limit)
    assert out == _oracle_unique(values, limit)
    assert st.unique == len(out) and st.values_read == st.not_text + st.empty + st.exact_duplicates + st.unique
    if limit is None or limit > len(out):
        assert st.values_read == scanned == len(values)
    else:  # pass 1 stopped early: at most twice what was needed, rounded up to a batch
        assert st.values_read <= scanned <= max(2 * st.values_read, limit) + readers.BATCH
        assert scanned < len(values)


def test_exact_dedup_holds_one_bucket_at_a_time(tmp_path, monkeypatch):
    # the records are gathered a bucket at a time; no bucket holds much more than its share
    monkeypatch.setattr(readers, "BATCH", 10_000)  # several runs
    sizes = []
    real = exact_dedup.ExactDedup._sorted_buckets

    def spy(self, records):
        for rec, new in real(self, records):
            sizes.append(len(rec))
            yield rec, new

    monkeypatch.setattr(exact_dedup.ExactDedup, "_sorted_buckets", spy)
    src = _jsonl(tmp_path / "u.jsonl", [f"prompt {i}" for i in range(51_200)])
    out, _, _ = _dedup(src, tmp_path)
    assert out == [f"prompt {i}" for i in range(51_200)]
    assert len(sizes) == exact_dedup.BUCKETS and sum(sizes) == 51_200
    assert max(sizes) < 1.5 * 51_200 / exact_dedup.BUCKETS


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


@pytest.mark.parametrize("exact_max", [100_000, 10])
def test_a_family_of_forty_variants_keeps_one(rng, monkeypatch, exact_max):
    """Every pair above the threshold counts (range search), however large the family: forty variants of one
    prompt keep one, on the exact path and on the IVF path."""
    monkeypatch.setattr(dedup, "EXACT_MAX_ROWS", exact_max)
    centre = rng.normal(size=32)
    family = centre + 0.01 * rng.normal(size=(40, 32))
    others = rng.normal(size=(60, 32))
    v = np.concatenate([family, others]).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    keep = dedup.near_duplicate_keep(v, threshold=0.95)
    np.testing.assert_array_equal(keep, _oracle_keep(v, 0.95))
    assert keep[:40].sum() == 1 and keep[40:].all()


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


def test_exact_dedup_statistics_are_counted_in_the_object_callers_hold(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\nb\na\n\n")
    d = ExactDedup(check_sources([path]), folder=tmp_path / "w")
    held = d.stats  # taken before blocks() runs, as a caller (the exact-dedup benchmark) does
    for _ in range(2):  # a second pass starts afresh, in the same object
        assert [p for block in d.blocks() for p in block.to_pylist()] == ["a", "b"]
        assert held is d.stats and (held.values_read, held.unique, held.exact_duplicates, held.empty) == (4, 2, 1, 1)
