"""Search against an exact numpy oracle; index types against exact recall."""

from pathlib import Path

import numpy as np
import pytest

from indexer.faiss_index import build_index, plan_index
from indexer.shards import ShardedMatrix
from nearest_prompt.errors import InputError
from retriever import search

from .conftest import unit


def _shards(tmp_path, x, size):
    paths = []
    for s, start in enumerate(range(0, len(x), size)):
        p = tmp_path / f"{s:05d}.npy"
        np.save(p, x[start:start + size])
        paths.append(p)
    return ShardedMatrix(paths)


def _oracle(base, queries, k):
    s = queries @ base.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


def test_flat_search_equals_numpy_oracle(tmp_path, rng):
    base = unit(rng.normal(size=(2000, 32)))
    queries = unit(rng.normal(size=(50, 32)))
    index, info = build_index(_shards(tmp_path, base, 300), plan_index(2000, 32, index_type="flat"))
    nb = search(index, queries, k=10)
    ids, scores = _oracle(base, queries, 10)
    np.testing.assert_array_equal(nb.ids, ids)
    np.testing.assert_allclose(nb.scores, scores, atol=1e-5)
    assert info["recall_at_10"] == 1.0 and info["ntotal"] == 2000


def test_sharded_matrix_rows_match_concatenation(tmp_path, rng):
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    m = _shards(tmp_path, x, 128)
    idx = np.sort(rng.choice(1000, 77, replace=False))
    np.testing.assert_array_equal(m[idx], x[idx])
    np.testing.assert_array_equal(m[120:300], x[120:300])
    assert m.shape == (1000, 8)


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "hnsw", "ivfpq"])
def test_approximate_index_recall_against_exact(kind, tmp_path, rng, caplog):
    # clustered data, like real embeddings; recall measured here with an independent oracle
    centers = unit(rng.normal(size=(64, 64)))
    base = unit(centers[rng.integers(0, 64, 20_000)] + 0.08 * rng.normal(size=(20_000, 64)))
    queries = unit(base[rng.choice(20_000, 200, replace=False)] + 0.06 * rng.normal(size=(200, 64)))
    plan = plan_index(20_000, 64, index_type=kind)
    index, info = build_index(_shards(tmp_path, base, 4096), plan, seed=0)
    got = search(index, queries, k=10).ids
    exact, _ = _oracle(base, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    floor = 0.5 if kind == "ivfpq" else 0.9
    assert recall >= floor, (kind, recall, info)
    assert abs(info["recall_at_10"] - recall) < 0.15, (info, recall)  # the recorded estimate is honest
    assert ("reaches recall@10" in caplog.text) == (info["recall_at_10"] < 0.95)  # warned iff short


def test_auto_plan_by_size_and_budget():
    assert plan_index(50_000, 1024).type == "flat"
    assert plan_index(500_000, 1024, memory_budget_gb=4).type == "ivf"
    assert plan_index(2_000_000, 1024, memory_budget_gb=4).type == "ivfsq8"
    assert plan_index(2_000_000, 1024, memory_budget_gb=1).type == "ivfpq"
    for n, d, budget in [(500_000, 1024, 4), (2_000_000, 1024, 4), (2_000_000, 384, 1), (10_000_000, 1024, 3)]:
        plan = plan_index(n, d, memory_budget_gb=budget)
        assert plan.estimated_bytes(n, d) <= budget * 2**30 or plan.type == "ivfpq"
    assert plan_index(10, 8, index_type="hnsw").type == "hnsw"
    assert plan_index(120, 16, index_type="ivfpq").params["nbits"] == 6  # 2^nbits <= training points
    assert plan_index(10, 16, index_type="ivfpq").type == "flat"  # too few rows for PQ at all


def test_search_masks_faiss_padding(tmp_path, rng):
    base = unit(rng.normal(size=(400, 16)))
    plan = plan_index(400, 16, index_type="ivf")
    index, _ = build_index(_shards(tmp_path, base, 400), plan)
    index.nprobe = 1  # one small list: fewer than k hits, faiss pads with -1
    nb = search(index, unit(rng.normal(size=(20, 16))), k=100)
    assert (nb.ids == -1).any()
    assert np.all(np.isneginf(nb.scores[nb.ids == -1]))
    assert np.all(np.isfinite(nb.scores[nb.ids >= 0]))


def test_k_larger_than_index_is_refused(tmp_path, rng):
    index, _ = build_index(_shards(tmp_path, unit(rng.normal(size=(5, 8))), 5), plan_index(5, 8))
    with pytest.raises(InputError, match="larger than the index"):
        search(index, unit(rng.normal(size=(1, 8))), k=6)
    with pytest.raises(InputError, match="shape"):
        search(index, np.zeros((1, 9), np.float32), k=1)


def test_sharded_matrix_keeps_no_mapping_open(tmp_path, rng):
    x = rng.normal(size=(300, 4)).astype(np.float32)
    m = _shards(tmp_path, x, 100)
    np.testing.assert_array_equal(m[np.array([5, 150, 299])], x[[5, 150, 299]])
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    assert str(tmp_path) not in maps  # every read unmapped its shards before returning


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "ivfpq"])
def test_presized_add_builds_the_same_index_as_faiss_add(kind, tmp_path, rng, monkeypatch):
    import faiss

    from indexer import faiss_index
    from indexer.faiss_index import _new_index, add_presized

    monkeypatch.setattr(faiss_index, "ENCODE_CHUNK", 1000)  # several chunks: list order across chunks

    x = unit(rng.normal(size=(3000, 32)))
    plan = plan_index(3000, 32, index_type=kind)
    ours, theirs = _new_index(plan, 32), _new_index(plan, 32)
    ours.train(x[:2000])
    theirs.train(x[:2000])
    add_presized(ours, _shards(tmp_path, x, 700))
    theirs.add(x)
    assert ours.ntotal == theirs.ntotal == 3000
    a = faiss.extract_index_ivf(ours).invlists
    b = faiss.extract_index_ivf(theirs).invlists
    for list_no in range(plan.params["nlist"]):
        assert a.list_size(list_no) == b.list_size(list_no)
        size = a.list_size(list_no)
        if size:
            np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_ids(list_no), size),
                                          faiss.rev_swig_ptr(b.get_ids(list_no), size))
            np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_codes(list_no), size * a.code_size),
                                          faiss.rev_swig_ptr(b.get_codes(list_no), size * b.code_size))
    q = unit(rng.normal(size=(20, 32)))
    np.testing.assert_array_equal(ours.search(q, 10)[1], theirs.search(q, 10)[1])
