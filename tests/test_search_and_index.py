"""Search against an exact numpy oracle; index types against exact recall."""

from pathlib import Path

import numpy as np
import pytest

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.topk import recall_at_k
from nearest_prompt.index_store.reader import read_index
from nearest_prompt.index_store.refine import RefinedIndex
from nearest_prompt.indexer.faiss_index import IVF_TYPES, build_index, plan_index
from nearest_prompt.indexer.shards import ShardedMatrix
from nearest_prompt.retriever import search

from .conftest import seen_recall_queries, unit


def _shards(tmp_path, x, size):
    paths = []
    for s, start in enumerate(range(0, len(x), size)):
        p = tmp_path / f"{s:05d}.npy"
        np.save(p, x[start:start + size])
        paths.append(p)
    return ShardedMatrix(paths)


def _build(tmp_path, vectors, plan, **kw):
    """build_index to a file, then open it as a store opens it (lists on disk, or memory-mapped; the refine
    stage over the float16 vectors a store keeps)."""
    path = tmp_path / f"{plan.type}.faiss"
    stored = tmp_path / "vectors.npy"
    np.save(stored, np.asarray(vectors[:], dtype=np.float16))
    info = build_index(vectors, plan, path=path, refine_path=stored, **kw)
    index = read_index(path, ondisk=plan.type in IVF_TYPES)
    if info["params"].get("refine"):
        index = RefinedIndex(index, np.load(stored, mmap_mode="r"), k_factor=info["params"]["k_factor"])
    return index, info


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
    base_index = index.base if isinstance(index, RefinedIndex) else index
    tuned = faiss.downcast_index(index).hnsw.efSearch if kind == "hnsw" else faiss.extract_index_ivf(base_index).nprobe
    assert tuned == info["params"][knob]  # the file searches with the knob the build tuned
    exact, _ = _oracle(base, queries, 10)
    recall = recall_at_k(got, exact)
    assert recall >= 0.9, (kind, recall, info)  # ivfpq too: its refine stage rescores exactly
    assert abs(info["recall_at_10"] - recall) < 0.15, (info, recall)  # the recorded estimate is honest
    assert ("reaches recall@10" in caplog.text) == (info["recall_at_10_low"] < 0.95)  # warned iff short


def test_auto_plan_by_size_and_budget():
    assert plan_index(50_000, 1024).type == "flat"
    assert plan_index(500_000, 1024, memory_budget_gb=4).type == "ivf"
    assert plan_index(2_000_000, 1024, memory_budget_gb=4).type == "ivfsq8"
    pq = plan_index(2_000_000, 1024, memory_budget_gb=1)
    assert pq.type == "ivfpq" and pq.params["m"] == 256 and pq.params["refine"] == "float16"  # d/4 bytes fit
    assert plan_index(2_000_000, 1024, memory_budget_gb=0.5).params["m"] == 128  # d/4 does not, d/8 does
    assert plan_index(20_000_000, 768, memory_budget_gb=1).params["m"] == 24  # d/32: only that fits
    for n, d, budget in [(500_000, 1024, 4), (2_000_000, 1024, 4), (2_000_000, 384, 1), (10_000_000, 1024, 3),
                         (10_000_000, 768, 3)]:
        plan = plan_index(n, d, memory_budget_gb=budget)
        assert plan.estimated_bytes(n, d) <= budget * 2**30 and plan.note is None, (n, d, budget, plan)
    over = plan_index(100_000_000, 1024, memory_budget_gb=1)
    assert over.type == "ivfpq" and "over the budget" in over.note  # said once, when it is built
    assert plan_index(10, 8, index_type="hnsw").type == "hnsw"
    # nlist = 4 sqrt(N) until the k-means sample (40 float32 rows per list) would pass 1 GiB; an HNSW coarse
    # quantizer from 1,024 lists
    assert plan_index(500_000, 1024).params["nlist"] == int(4 * 500_000 ** 0.5)
    assert plan_index(500_000, 1024).params["quantizer"] == "hnsw"
    assert plan_index(50_000, 64, index_type="ivf").params["quantizer"] == "flat"  # 894 lists
    assert plan_index(10_000_000, 1024).params["nlist"] == 2**30 // (40 * 4 * 1024)
    assert plan_index(10_000_000, 1024).params["quantizer"] == "hnsw"
    assert plan_index(120, 16, index_type="ivfpq").params["nbits"] == 6  # 2^nbits <= training points
    tiny = plan_index(10, 16, index_type="ivfpq")
    assert tiny.type == "flat" and "at least 16" in tiny.note  # too few rows for PQ at all


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
@pytest.mark.parametrize("quantizer", ["flat", "hnsw"])
def test_ondisk_ivf_answers_as_faiss_add(kind, quantizer, tmp_path, rng, monkeypatch):
    """Blocks added to copies of the trained index and merged by faiss.contrib.ondisk answer exactly what
    the same index after add() of every row answers: the same codes, in the same order within each list."""
    import faiss

    from nearest_prompt.indexer import ivf_blocks
    from nearest_prompt.indexer.faiss_index import IndexPlan, new_index

    monkeypatch.setattr(ivf_blocks, "ADD_CHUNK", 700)  # several blocks: list order across blocks
    x = unit(rng.normal(size=(3000, 32)))
    base = plan_index(3000, 32, index_type=kind)
    plan = IndexPlan(kind, {**base.params, "quantizer": quantizer})
    ours = new_index(plan, 32)
    ours.train(x[:2000])
    theirs = faiss.clone_index(ours)  # one trained index (an HNSW graph is not rebuilt the same twice)
    ivf_blocks.write_ondisk(tmp_path / "ours.faiss", ours, _shards(tmp_path, x, 650))
    theirs.add(x)
    opened = ivf_blocks.open_ivf(tmp_path / "ours.faiss")
    assert ours.ntotal == 0 and opened.ntotal == 3000 and (tmp_path / "ours.ivfdata").stat().st_size > 0
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(opened).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    stored = read_index(tmp_path / "ours.faiss", ondisk=True)  # as a store opens it: without prefetch threads
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(stored).invlists).prefetch_nthread == 0
    q = unit(rng.normal(size=(40, 32)))
    for nprobe in (1, 4, plan.params["nlist"]):
        opened.nprobe = theirs.nprobe = faiss.extract_index_ivf(stored).nprobe = nprobe
        want = theirs.search(q, 10)
        for got in (opened.search(q, 10), stored.search(q, 10)):
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


def test_ondisk_ivf_with_mostly_empty_lists_and_a_moved_folder(tmp_path, rng):
    import shutil

    import faiss

    from nearest_prompt.indexer import ivf_blocks
    from nearest_prompt.indexer.faiss_index import new_index

    x = unit(rng.normal(size=(2000, 16)))
    plan = plan_index(2000, 16, index_type="ivf")
    index = new_index(plan, 16)
    index.train(x)
    few = x[:3]  # three rows: most lists empty
    (tmp_path / "a").mkdir()
    ivf_blocks.write_ondisk(tmp_path / "a" / "ix.faiss", index, few, final_path=tmp_path / "b" / "ix.faiss")
    shutil.move(tmp_path / "a", tmp_path / "elsewhere")  # neither where it was written nor where it was meant
    ours = ivf_blocks.open_ivf(tmp_path / "elsewhere" / "ix.faiss")
    index.add(few)
    q = unit(rng.normal(size=(10, 16)))
    ours.nprobe = index.nprobe = plan.params["nlist"]
    np.testing.assert_array_equal(ours.search(q, 3)[1], index.search(q, 3)[1])
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(ours).invlists).filename == \
        str(tmp_path / "elsewhere" / "ix.ivfdata")


@pytest.mark.parametrize("budget", [1, 30_000, 1 << 30])
def test_bounded_ivf_search_equals_in_memory_search_within_its_mapping_budget(budget, tmp_path, rng):
    from nearest_prompt.indexer import ivf_blocks
    from nearest_prompt.indexer.faiss_index import new_index

    x = unit(rng.normal(size=(4000, 24)))
    plan = plan_index(4000, 24, index_type="ivfsq8")
    index = new_index(plan, 24)
    index.train(x)
    ivf_blocks.write_ondisk(tmp_path / "ix.faiss", index, x)
    index.add(x)
    mapped = ivf_blocks.BoundedIVF(tmp_path / "ix.faiss", max_mapped_bytes=budget)
    q = unit(rng.normal(size=(300, 24)))
    for nprobe in (1, 5):
        index.nprobe = nprobe
        d, i = mapped.search(q, 7, nprobe=nprobe)
        want_d, want_i = index.search(q, 7)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d)
        rows, ids, dist = mapped.range_search(q, 0.3, nprobe=nprobe)
        lims, _, want_ids = index.range_search(q, 0.3)
        want = {(r, int(j)) for r in range(len(q)) for j in want_ids[lims[r]:lims[r + 1]]}
        assert set(zip(rows.tolist(), ids.tolist())) == want and len(rows) == len(want) and (dist > 0.3).all()
        probes = mapped._quantizer.search(q, nprobe)[1]
        groups = list(mapped._groups(probes[:, 0], probes))
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(q)))
        for g in groups:
            touched = mapped.list_bytes[np.unique(probes[g])].sum()
            assert len(g) == 1 or touched <= budget
        assert (len(groups) == len(q)) == (budget == 1)


def test_the_refine_stage_rescores_exactly(tmp_path, rng):
    """ivfpq's candidates rescored against the stored vectors: the scores are the float16 vectors' exact
    inner products, best first; with every row a candidate the answer is exact search's."""
    import faiss

    from nearest_prompt.indexer.faiss_index import IndexPlan

    x = unit(rng.normal(size=(3000, 32)))
    plan = plan_index(3000, 32, index_type="ivfpq")
    index, info = _build(tmp_path, x, plan, seed=0)
    stored = np.load(tmp_path / "vectors.npy").astype(np.float32)
    q = unit(rng.normal(size=(30, 32)))
    scores, ids = index.search(q, 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, stored[ids]), atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    everything = RefinedIndex(index.base, np.load(tmp_path / "vectors.npy", mmap_mode="r"), k_factor=300)
    faiss.extract_index_ivf(everything.base).nprobe = plan.params["nlist"]
    exact = np.argsort(-(q @ stored.T), axis=1, kind="stable")[:, :10]
    assert recall_at_k(everything.search(q, 10)[1], exact) == 1.0
    assert IndexPlan("ivfpq", info["params"]).disk_bytes(3000, 32) == 3000 * 32 * 2
    assert info["ram_bytes"] < 3000 * 32 * 4 and info["disk_bytes"] > 3000 * 32 * 2


@pytest.mark.parametrize("chunk_queries", [1, 3, 1000])
def test_exact_scores_of_candidates_equal_an_oracle_whatever_the_chunking(chunk_queries, tmp_path, rng, monkeypatch):
    """Each query's candidate rows scored exactly: float16 rows (faiss's fp16 kernels, over a mapped file or an
    array) and float32 rows (numpy) against a float64 oracle; -1 candidates score -inf; a row may be any
    query's candidate, in any place, and chunks of queries change nothing."""
    from nearest_prompt.index_store import refine

    x = unit(rng.normal(size=(500, 48)))
    np.save(tmp_path / "v.npy", x.astype(np.float16))
    q = unit(rng.normal(size=(7, 48)))
    cand = rng.integers(0, 500, (7, 40))
    cand[2, 5:] = -1
    cand[4, :] = 17  # one row, every place
    cand[6, -1] = -1
    monkeypatch.setattr(refine, "REFINE_CHUNK_BYTES", chunk_queries * 40 * 48 * 2)
    for vectors, dtype in [(np.load(tmp_path / "v.npy", mmap_mode="r"), np.float16),
                           (np.load(tmp_path / "v.npy"), np.float16), (x.astype(np.float32), np.float32)]:
        rows = x.astype(dtype).astype(np.float64)
        want = np.where(cand >= 0, np.einsum("qd,qkd->qk", q.astype(np.float64), rows[np.maximum(cand, 0)]), -np.inf)
        got = refine.exact_scores(vectors, q, cand)
        assert got.dtype == np.float32 and got.shape == cand.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.array_equal(np.isinf(got), cand < 0)
        scores, ids = refine.rerank(vectors, q, cand, 10)
        best = np.argsort(-want, axis=1, kind="stable")[:, :10]
        np.testing.assert_array_equal(ids, np.where(np.isfinite(np.take_along_axis(want, best, 1)),
                                                    np.take_along_axis(cand, best, 1), -1))


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_the_refine_stage_reads_rows_without_making_the_file_resident(tmp_path, rng):
    """The refine stage over a store's memory-mapped float16 file answers exactly as over the same rows in memory,
    and reads them past the map: none of the file's pages become resident in this process."""
    from nearest_prompt.index_store.refine import Rows

    x = unit(rng.normal(size=(3000, 32)))
    plan = plan_index(3000, 32, index_type="ivfpq")
    index, _ = _build(tmp_path, x, plan, seed=0)
    stored = (tmp_path / "vectors.npy").resolve()
    q = unit(rng.normal(size=(200, 32)))
    in_memory = RefinedIndex(index.base, np.load(stored), k_factor=index.k_factor)
    want = in_memory.search(q, 10)
    mapped = RefinedIndex(index.base, np.load(stored, mmap_mode="r"), k_factor=index.k_factor)
    assert mapped.rows._fd is not None and in_memory.rows._fd is None
    got = mapped.search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert _mapped_rss_kib(stored) == 0
    ids = rng.integers(0, 3000, 500)  # any order, repeats: the rows asked for, in that order
    np.testing.assert_array_equal(mapped.rows.take(ids), np.load(stored)[ids])
    view = np.load(stored, mmap_mode="r")[100:]  # a view into a map is indexed, not read from the file's start
    assert Rows(view)._fd is None
    np.testing.assert_array_equal(Rows(view).take(ids[ids < 2900]), np.load(stored)[100:][ids[ids < 2900]])


def _recall_at_walk(searcher, seen, nprobe, ef):
    """Recall@10 of ``searcher`` (a BoundedIVF) on the build's recall queries at nprobe and the quantizer's efSearch."""
    from nearest_prompt.indexer.faiss_index import set_walk

    rq = seen["rq"]
    return rq.recall(searcher.search(rq.queries, rq.width, nprobe=nprobe, configure=lambda ix: set_walk(ix, ef))[1])


def test_hnsw_quantizer_tuning_takes_the_first_setting_that_reaches_the_target(tmp_path, rng, monkeypatch):
    """With an HNSW coarse quantizer the build tunes nprobe and the graph walk's efSearch together: the setting it
    records is the first, in the order it tries them (nprobe up; at each, efSearch up through its steps), whose
    recall@10 on the tuning queries reaches the target; every earlier one falls short. A store opens with both."""
    import faiss

    from nearest_prompt.indexer import faiss_index as fi
    from nearest_prompt.indexer.ivf_blocks import BoundedIVF

    seen = seen_recall_queries(monkeypatch)
    monkeypatch.setattr(fi, "quantizer_ef", lambda nprobe: nprobe)  # the narrowest walk: the graph misses lists
    centers = unit(rng.normal(size=(400, 96)))  # many near-orthogonal clusters: a hard graph to walk
    x = unit(centers[rng.integers(0, 400, 12_000)] + 0.5 * rng.normal(size=(12_000, 96)) / np.sqrt(96))
    base = plan_index(12_000, 96, index_type="ivfsq8")
    plan = fi.IndexPlan("ivfsq8", {**base.params, "quantizer": "hnsw"})
    index, info = _build(tmp_path, x, plan, seed=0)
    p = info["params"]
    order = [(n, ef) for n in sorted({min(v, p["nlist"]) for v in fi.NPROBES}) for ef in fi.quantizer_efs(n)]
    chosen = order.index((p["nprobe"], p["quantizer_ef"]))
    assert p["quantizer_ef"] > p["nprobe"]  # these data need the wider walk (else this test shows nothing)
    searcher = BoundedIVF(tmp_path / "ivfsq8.faiss")

    def recall(nprobe, ef):
        return _recall_at_walk(searcher, seen, nprobe, ef)

    assert recall(p["nprobe"], p["quantizer_ef"]).mean == pytest.approx(info["recall_at_10"], abs=1e-4)
    assert recall(p["nprobe"], p["quantizer_ef"]).low == pytest.approx(info["recall_at_10_low"], abs=1e-4)
    assert info["recall_at_10_low"] >= fi.TARGET_RECALL
    assert not any(recall(*setting).reaches(fi.TARGET_RECALL) for setting in order[:chosen])
    opened = faiss.extract_index_ivf(index)
    graph = faiss.downcast_index(opened.quantizer).hnsw
    assert (opened.nprobe, graph.efSearch) == (p["nprobe"], p["quantizer_ef"])
    assert graph.efConstruction == fi.QUANTIZER_EF_CONSTRUCTION  # the graph was built wide


def test_extending_an_index_without_a_recorded_walk_measures_it_at_the_walk_its_file_holds(tmp_path, rng,
                                                                                            monkeypatch):
    """A manifest entry without ``quantizer_ef`` (an HNSW quantizer's walk tuned before it was recorded): adding
    rows measures recall@10 at the efSearch in the index file's header, the walk a store searches with."""

    from nearest_prompt.indexer import faiss_index as fi
    from nearest_prompt.indexer.ivf_blocks import BoundedIVF

    centers = unit(rng.normal(size=(300, 64)))
    x = unit(centers[rng.integers(0, 300, 12_000)] + 0.5 * rng.normal(size=(12_000, 64)) / np.sqrt(64))
    base = plan_index(10_000, 64, index_type="ivfsq8")
    plan = fi.IndexPlan("ivfsq8", {**base.params, "quantizer": "hnsw"})
    _, info = _build(tmp_path, x[:10_000], plan, seed=0)
    old = tmp_path / "ivfsq8.faiss"
    walk = 3 * fi.quantizer_ef(info["params"]["nprobe"])  # not what knobs.quantizer_ef gives: the file's own
    fi._write_knobs(old, {**info["params"], "quantizer_ef": walk}, final_path=None)
    info["params"].pop("quantizer_ef")
    seen = seen_recall_queries(monkeypatch)
    new = tmp_path / "new" / "ivfsq8.faiss"
    new.parent.mkdir()
    extended = fi.extend_index(old, info, x[10_000:], path=new, all_vectors=x, seed=1)
    assert "quantizer_ef" not in extended["params"]  # not tuned again: the recall held
    searcher = BoundedIVF(new)

    def recall(ef):
        return _recall_at_walk(searcher, seen, info["params"]["nprobe"], ef)

    assert extended["recall_at_10"] == pytest.approx(recall(walk).mean, abs=1e-4)
    narrow = fi.quantizer_ef(info["params"]["nprobe"])
    assert recall(narrow).mean != pytest.approx(recall(walk).mean, abs=1e-4)  # else this test shows nothing
