"""Search against an exact numpy oracle; index types against exact recall."""

from pathlib import Path

import numpy as np
import pytest

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.topk import recall_at_k
from nearest_prompt.index_store.reader import _read_index
from nearest_prompt.indexer.faiss_index import build_index, plan_index
from nearest_prompt.indexer.shards import ShardedMatrix
from nearest_prompt.retriever import search

from .conftest import unit


def _shards(tmp_path, x, size):
    paths = []
    for s, start in enumerate(range(0, len(x), size)):
        p = tmp_path / f"{s:05d}.npy"
        np.save(p, x[start:start + size])
        paths.append(p)
    return ShardedMatrix(paths)


def _build(tmp_path, vectors, plan, **kw):
    """build_index to a file, then open it as a store opens it (memory-mapped)."""
    path = tmp_path / f"{plan.type}.faiss"
    info = build_index(vectors, plan, path=path, **kw)
    return _read_index(path), info


def _oracle(base, queries, k):
    s = queries @ base.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


def test_flat_search_equals_numpy_oracle(tmp_path, rng):
    base = unit(rng.normal(size=(2000, 32)))
    queries = unit(rng.normal(size=(50, 32)))
    index, info = _build(tmp_path, _shards(tmp_path, base, 300), plan_index(2000, 32, index_type="flat"))
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
    import faiss

    # clustered data, like real embeddings; recall measured here with an independent oracle
    centers = unit(rng.normal(size=(64, 64)))
    base = unit(centers[rng.integers(0, 64, 20_000)] + 0.08 * rng.normal(size=(20_000, 64)))
    queries = unit(base[rng.choice(20_000, 200, replace=False)] + 0.06 * rng.normal(size=(200, 64)))
    plan = plan_index(20_000, 64, index_type=kind)
    index, info = _build(tmp_path, _shards(tmp_path, base, 4096), plan, seed=0)
    got = search(index, queries, k=10).ids
    knob = {"hnsw": "efSearch"}.get(kind, "nprobe")
    tuned = faiss.downcast_index(index).hnsw.efSearch if kind == "hnsw" else faiss.extract_index_ivf(index).nprobe
    assert tuned == info["params"][knob]  # the file searches with the knob the build tuned
    exact, _ = _oracle(base, queries, 10)
    recall = recall_at_k(got, exact)
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
    # nlist = 4 sqrt(N) until the k-means sample (40 float32 rows per list) would pass 1 GiB
    assert plan_index(2_000_000, 1024).params["nlist"] == int(4 * 2_000_000 ** 0.5)
    assert plan_index(10_000_000, 1024).params["nlist"] == 2**30 // (40 * 4 * 1024)
    assert plan_index(120, 16, index_type="ivfpq").params["nbits"] == 6  # 2^nbits <= training points
    assert plan_index(10, 16, index_type="ivfpq").type == "flat"  # too few rows for PQ at all


def test_search_masks_faiss_padding(tmp_path, rng):
    base = unit(rng.normal(size=(400, 16)))
    plan = plan_index(400, 16, index_type="ivf")
    index, _ = _build(tmp_path, _shards(tmp_path, base, 400), plan)
    index.nprobe = 1  # one small list: fewer than k hits, faiss pads with -1
    nb = search(index, unit(rng.normal(size=(20, 16))), k=100)
    assert (nb.ids == -1).any()
    assert np.all(np.isneginf(nb.scores[nb.ids == -1]))
    assert np.all(np.isfinite(nb.scores[nb.ids >= 0]))


def test_k_larger_than_index_is_refused(tmp_path, rng):
    index, _ = _build(tmp_path, _shards(tmp_path, unit(rng.normal(size=(5, 8))), 5), plan_index(5, 8))
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
def test_ivf_file_equals_faiss_add_then_write_index(kind, tmp_path, rng, monkeypatch):
    import faiss

    from nearest_prompt.indexer import ivf_file
    from nearest_prompt.indexer.faiss_index import new_index

    monkeypatch.setattr(ivf_file, "ENCODE_CHUNK", 1000)  # several blocks: list order across blocks
    x = unit(rng.normal(size=(3000, 32)))
    plan = plan_index(3000, 32, index_type=kind)
    ours, theirs = new_index(plan, 32), new_index(plan, 32)
    ours.train(x[:2000])
    theirs.train(x[:2000])
    sizes = ivf_file.write_ivf_file(tmp_path / "ours", ours, _shards(tmp_path, x, 700))
    theirs.add(x)
    faiss.write_index(theirs, str(tmp_path / "theirs"))
    assert ours.ntotal == 0 and sizes.sum() == 3000
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()


def test_ivf_file_with_mostly_empty_lists_reads_back_as_faiss_add(tmp_path, rng):
    import faiss

    from nearest_prompt.indexer import ivf_file
    from nearest_prompt.indexer.faiss_index import new_index

    x = unit(rng.normal(size=(2000, 16)))
    plan = plan_index(2000, 16, index_type="ivf")
    index = new_index(plan, 16)
    index.train(x)
    few = x[:3]  # three rows: most lists empty (faiss itself would store the sizes sparsely)
    ivf_file.write_ivf_file(tmp_path / "ours", index, few)
    index.add(few)
    ours = faiss.read_index(str(tmp_path / "ours"))
    q = unit(rng.normal(size=(10, 16)))
    ours.nprobe = index.nprobe = plan.params["nlist"]
    np.testing.assert_array_equal(ours.search(q, 3)[1], index.search(q, 3)[1])


@pytest.mark.parametrize("budget", [1, 30_000, 1 << 30])
def test_mapped_ivf_search_equals_in_memory_search_within_its_mapping_budget(budget, tmp_path, rng):
    import faiss

    from nearest_prompt.indexer import ivf_file
    from nearest_prompt.indexer.faiss_index import new_index

    x = unit(rng.normal(size=(4000, 24)))
    plan = plan_index(4000, 24, index_type="ivfsq8")
    index = new_index(plan, 24)
    index.train(x)
    ivf_file.write_ivf_file(tmp_path / "ix", index, x)
    index.add(x)
    mapped = ivf_file.MappedIVF(tmp_path / "ix", max_mapped_bytes=budget)
    q = unit(rng.normal(size=(300, 24)))
    for nprobe in (1, 5):
        index.nprobe = nprobe
        d, i = mapped.search(q, 7, nprobe=nprobe)
        want_d, want_i = index.search(q, 7)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d)
        probes = mapped.quantizer.search(q, nprobe)[1]
        groups = list(mapped._groups(probes))
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(q)))
        for g in groups:
            touched = mapped.list_bytes[np.unique(probes[g])].sum()
            assert len(g) == 1 or touched <= budget
        assert (len(groups) == len(q)) == (budget == 1)
    assert faiss.read_index(str(tmp_path / "ix")).ntotal == 4000
