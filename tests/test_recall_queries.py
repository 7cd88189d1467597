"""The build's recall measurement holds each query's source row out: a numpy oracle for the queries' exact
neighbours, and a build whose recorded recall is recomputed here from the index as a store opens it."""

import faiss
import numpy as np
import pytest

from nearest_prompt.index_store.reader import read_index
from nearest_prompt.indexer import faiss_index as fi
from nearest_prompt.indexer.recall_queries import CONFIDENCE_Z, QUERY_NOISES, recall_queries, without_sources

from .conftest import seen_recall_queries, unit


def _clustered(rng, n, d, clusters):
    centers = unit(rng.normal(size=(clusters, d)))
    return unit(centers[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d)) / np.sqrt(d))


def _held_out_oracle(queries, x, sources, k):
    """Top-k ids by numpy over every row but each query's source row (``sources`` None: over every row)."""
    s = queries.astype(np.float64) @ x.T.astype(np.float64)
    if sources is not None:
        s[np.arange(len(queries)), sources] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_recall_queries_are_offsets_of_their_source_rows_whose_exact_neighbours_leave_the_source_out(rng):
    x = _clustered(rng, 3000, 32, 40)
    rq = recall_queries(x, np.random.default_rng(0))
    assert rq.k == 10 and rq.width == 11 and rq.pool(4) == 41
    assert len(set(rq.sources.tolist())) == len(rq.sources) == 1000  # 500 of each kind, each from a row of its own
    assert np.bincount(rq.kinds).tolist() == [500] * len(QUERY_NOISES)
    assert np.allclose(np.linalg.norm(rq.queries, axis=1), 1, atol=1e-5)
    cos = np.einsum("qd,qd->q", rq.queries, x[rq.sources])  # a unit row moved by its kind's norm, normalised
    for kind, noise in enumerate(QUERY_NOISES):
        c = cos[rq.kinds == kind]
        if noise == 0:
            assert np.allclose(c, 1, atol=1e-5)  # the stored row itself: a query like the stored vectors
        else:
            assert (c >= (1 - noise) / (1 + noise) - 1e-6).all() and (c < 1 - 1e-3).all()
    assert not (rq.exact == rq.sources[:, None]).any()
    oracle = _held_out_oracle(rq.queries, x, rq.sources, 10)
    same = [set(a) == set(b) for a, b in zip(rq.exact.tolist(), oracle.tolist(), strict=True)]
    assert sum(same) >= len(same) - 1  # float32 faiss against float64 numpy: at most one near-tie at the 10th


def test_the_measure_drops_the_source_row_and_keeps_the_order_of_the_rest(rng):
    x = _clustered(rng, 2000, 16, 20)
    rq = recall_queries(x, np.random.default_rng(1))
    full = np.argsort(-(rq.queries @ x.T), axis=1, kind="stable")
    with_source = (full[:, :11] == rq.sources[:, None]).any(axis=1)
    assert with_source.mean() > 0.5  # the source row is usually among the nearest (else this test shows nothing)
    assert rq.recall(full[:, :11]).mean > 0.99  # the exact ranking, source dropped: every true neighbour
    # Ten ids with the source among them hold only nine neighbours: the measure counts what users would get.
    want = np.mean([len(set(r[r != s][:10]) & set(e)) / 10
                    for r, s, e in zip(full[:, :10], rq.sources, rq.exact, strict=True)])
    assert rq.recall(full[:, :10]).mean == pytest.approx(want, abs=1e-9) and want < rq.recall(full[:, :11]).mean
    ids = np.array([[5, 7, 9, 11], [3, 4, 8, 1]])
    np.testing.assert_array_equal(without_sources(ids, np.array([7, 2]), 3), [[5, 9, 11], [3, 4, 8]])


def test_the_recall_a_build_records_leaves_every_query_s_source_row_out(tmp_path, rng, monkeypatch):
    """An IVF-SQ8 build with an HNSW quantizer: its recorded recall@10 is what the opened index finds (11 ids,
    the source row dropped) of each tuning query's exact top-10 without its source row, by a numpy oracle."""
    seen = seen_recall_queries(monkeypatch)
    x = _clustered(rng, 12_000, 64, 30)
    base = fi.plan_index(12_000, 64, index_type="ivfsq8")
    plan = fi.IndexPlan("ivfsq8", {**base.params, "quantizer": "hnsw"})
    path = tmp_path / "ivfsq8.faiss"
    info = fi.build_index(x, plan, path=path, seed=0)
    rq = seen["rq"]
    index = read_index(path, ondisk=True)
    held_out = _held_out_oracle(rq.queries, x, rq.sources, 10)
    everything = _held_out_oracle(rq.queries, x, None, 10)

    def recall(nprobe):
        faiss.extract_index_ivf(index).nprobe = nprobe
        got = index.search(rq.queries, 11)[1].tolist()
        without = np.mean([len(set([i for i in row if i != s][:10]) & set(e)) / 10
                           for row, s, e in zip(got, rq.sources.tolist(), held_out.tolist(), strict=True)])
        counted = np.mean([len(set(row[:10]) & set(e)) / 10 for row, e in zip(got, everything.tolist(), strict=True)])
        return without, counted

    without, counted = recall(info["params"]["nprobe"])
    assert abs(without - info["recall_at_10"]) <= 3 / 10_000  # 3 ids of 10,000: float32 faiss, float64 numpy
    without, counted = recall(1)
    assert counted > without + 0.01  # with the source row counted as a neighbour found, recall reads higher


def test_a_target_is_held_to_each_kind_of_query_less_two_standard_errors(rng):
    """``Recall.low``: for each kind of query its mean recall less CONFIDENCE_Z standard errors, the lowest of
    them; ``mean``: over every query. Found ids that miss more for one kind pull ``low`` down by that kind."""
    x = _clustered(rng, 3000, 32, 40)
    rq = recall_queries(x, np.random.default_rng(2))
    found = np.array(rq.exact)
    found[::3, 7:] = -1  # every third query misses its last three neighbours ...
    found[(rq.kinds == 1) & (np.arange(len(found)) % 5 == 0), 2:] = -1  # ... and some of the moved ones eight
    each = np.array([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), rq.exact.tolist(), strict=True)])
    bounds = [each[rq.kinds == k].mean() - CONFIDENCE_Z * each[rq.kinds == k].std() / np.sqrt((rq.kinds == k).sum())
              for k in range(len(QUERY_NOISES))]
    got = rq.recall(found)
    assert got.mean == pytest.approx(each.mean(), abs=1e-9)
    assert got.low == pytest.approx(min(bounds), abs=1e-9) and bounds[1] < bounds[0]
    assert got.reaches(got.low) and not got.reaches(got.low + 1e-6) and got.low < got.mean


def test_recall_at_k_is_faiss_contribs_intersection_measure_and_the_mean_of_its_terms(rng):
    from faiss.contrib.evaluation import knn_intersection_measure

    from nearest_prompt.common.topk import recall_at_k, recall_each

    exact = np.stack([rng.choice(50, 10, replace=False) for _ in range(200)])
    got = np.stack([rng.choice(50, 10, replace=False) for _ in range(200)])
    got[::4, 6:] = -1  # padding, as faiss returns it
    assert recall_at_k(got, exact) == pytest.approx(knn_intersection_measure(got, exact), abs=1e-12)
    np.testing.assert_allclose(recall_each(got, exact), [len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
    with pytest.raises(ValueError, match="equal shapes"):
        recall_each(got[:, :9], exact)
