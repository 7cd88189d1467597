"""Choose, train and fill the FAISS index over unit CLIP text vectors (inner product).

Types: ``flat`` (exact), ``ivf`` (IVF-Flat), ``hnsw`` (HNSW-Flat),
``ivfsq8`` (IVF with 8-bit scalar quantisation: a quarter of IVF-Flat's
memory, nearly its recall), ``ivfpq`` (IVF with product quantisation, for
the tightest budgets). ``auto`` picks exact search for small corpora and,
above that, the first of ivf, ivfsq8, ivfpq that fits the memory budget.
IVF is trained on a seeded random sample, never on the first rows, and
filled with each inverted list allocated once (``add_presized``). At build time the search-time knob (IVF ``nprobe``,
HNSW ``efSearch``) is raised until recall@10 against exact search reaches
0.95 on sampled queries (stored vectors moved by a random offset of norm
0.5); the knob and the measured recall are recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .shards import ShardedMatrix

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 100_000
PQ_MIN_ROWS = 16
ADD_CHUNK = 65_536
ENCODE_CHUNK = 16_384  # rows encoded at a time by add_presized (transient memory: about 3 blocks)
RECALL_QUERIES = 500
TARGET_RECALL = 0.95
KMEANS_ITERATIONS = 10  # coarse k-means; faiss's default 25 costs 2.5x for little recall
QUERY_NOISE = 0.5  # norm of the random offset added to sampled stored vectors to make recall queries


@dataclass(frozen=True)
class IndexPlan:
    type: str
    params: dict[str, Any]

    def estimated_bytes(self, n: int, d: int) -> int:
        if self.type == "flat":
            return n * d * 4
        if self.type == "ivf":
            return n * (d * 4 + 8)
        if self.type == "hnsw":
            return n * (d * 4 + self.params["M"] * 2 * 4)
        if self.type == "ivfsq8":
            return n * (d + 8)
        return n * (self.params["m"] + 8)


def plan_index(n: int, d: int, *, index_type: str = "auto", memory_budget_gb: float = 4.0) -> IndexPlan:
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
    nprobe = max(1, min(nlist, 16))
    plans = {
        "flat": IndexPlan("flat", {}),
        "ivf": IndexPlan("ivf", {"nlist": nlist, "nprobe": nprobe}),
        "hnsw": IndexPlan("hnsw", {"M": 32, "efConstruction": 80, "efSearch": 128}),
        "ivfsq8": IndexPlan("ivfsq8", {"nlist": nlist, "nprobe": nprobe}),
        # PQ k-means needs at least 2^nbits training points: fewer bits for tiny corpora
        "ivfpq": IndexPlan("ivfpq", {"nlist": nlist, "nprobe": nprobe, "m": _pq_m(d),
                                     "nbits": max(1, min(8, n.bit_length() - 1))}),
    }
    if index_type == "ivfpq" and n < PQ_MIN_ROWS:
        log.warning("--index-type ivfpq needs at least %d prompts, the corpus has %d: using exact flat search",
                    PQ_MIN_ROWS, n)
        return plans["flat"]
    if index_type != "auto":
        return plans[index_type]
    if n <= FLAT_MAX_ROWS:
        return plans["flat"]
    budget = memory_budget_gb * (1 << 30)
    for name in ("ivf", "ivfsq8"):
        if plans[name].estimated_bytes(n, d) <= budget:
            return plans[name]
    return plans["ivfpq"]


def _pq_m(d: int) -> int:
    for m in (d // 4, d // 8, d // 16, d // 2, 8, 4, 2, 1):
        if m >= 1 and d % m == 0 and m <= 256:
            return m
    return 1


def _new_index(plan: IndexPlan, d: int) -> Any:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if plan.type == "flat":
        return faiss.IndexFlatIP(d)
    if plan.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, plan.params["M"], ip)
        index.hnsw.efConstruction = plan.params["efConstruction"]
        index.hnsw.efSearch = plan.params["efSearch"]
        return index
    quantizer = faiss.IndexFlatIP(d)
    if plan.type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, plan.params["nlist"], ip)
    elif plan.type == "ivfsq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, plan.params["nlist"], faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, plan.params["nlist"], plan.params["m"], plan.params["nbits"], ip)
    index.nprobe = plan.params["nprobe"]
    index.cp.niter = KMEANS_ITERATIONS
    return index


def build_index(vectors: ShardedMatrix, plan: IndexPlan, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train (on a random sample), fill in row order (faiss id == row), measure recall@10."""
    import faiss

    n, d = vectors.shape
    index = _new_index(plan, d)
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        size = min(n, max(plan.params["nlist"] * 40, 10_000))
        sample = np.sort(rng.choice(n, size=size, replace=False))
        index.train(np.asarray(vectors[sample], dtype=np.float32))
    if plan.type in ("ivf", "ivfsq8", "ivfpq"):
        add_presized(index, vectors)
    else:
        for _, block in vectors.chunks(ADD_CHUNK):
            index.add(block)
    params = dict(plan.params)
    recall = 1.0 if plan.type == "flat" else _tune(index, plan, params, vectors, rng)
    info = {"type": plan.type, "params": params, "factory": type(index).__name__, "metric": "inner_product",
            "dim": d, "ntotal": int(index.ntotal), "recall_at_10": round(recall, 4)}
    log.info("FAISS index %s %s over %d vectors (recall@10 %.3f)", plan.type, params, n, recall)
    if recall < TARGET_RECALL:
        finer = {"ivfpq": "ivfsq8 or ivf", "ivfsq8": "ivf"}.get(plan.type)
        log.warning("the %s index reaches recall@10 %.3f only (target %.2f) at its widest search setting%s",
                    plan.type, recall, TARGET_RECALL,
                    f"; raise --memory-budget or choose --index-type {finer}" if finer else "")
    return index, info


def _float_blocks(vectors: ShardedMatrix | np.ndarray, rows: int):
    """(start, float32 block) pairs over any row-sliceable matrix (a ShardedMatrix or an array)."""
    for start in range(0, len(vectors), rows):
        yield start, np.ascontiguousarray(vectors[start:start + rows], dtype=np.float32)


def add_presized(index: Any, vectors: ShardedMatrix | np.ndarray) -> None:
    """``index.add`` for every row of ``vectors``, with each inverted list allocated once at its final size.

    ``IndexIVF.add`` grows each list by reallocation; the freed buffers stay
    in the heap, which about doubles the resident memory of an IVF build. Here
    a first pass assigns every row to its list (as ``add`` does), the lists
    are sized from the counts, and a second pass encodes the rows and writes
    them in place, in row order within each list: the same index as ``add``.
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if ivf.ntotal or not isinstance(lists, faiss.ArrayInvertedLists):
        raise ValueError("add_presized fills an empty IVF index with array inverted lists")
    n = len(vectors)
    list_nos = np.empty(n, dtype=np.int64)
    for start, block in _float_blocks(vectors, ENCODE_CHUNK):
        list_nos[start:start + len(block)] = ivf.quantizer.assign(block, 1).ravel()
    counts = np.bincount(list_nos, minlength=ivf.nlist)
    for list_no in np.flatnonzero(counts).tolist():
        lists.resize(list_no, int(counts[list_no]))
    filled = np.zeros(ivf.nlist, dtype=np.int64)
    for start, block in _float_blocks(vectors, ENCODE_CHUNK):
        order = np.argsort(list_nos[start:start + len(block)], kind="stable")  # by list, row order within
        nos, ids = list_nos[start:start + len(block)][order], order.astype(np.int64) + start
        block = np.ascontiguousarray(block[order])
        codes = np.empty((len(block), lists.code_size), dtype=np.uint8)
        ivf.encode_vectors(len(block), faiss.swig_ptr(block), faiss.swig_ptr(nos), faiss.swig_ptr(codes), False)
        del block
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(nos)) + 1, [len(nos)]])
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            list_no = int(nos[a])
            lists.update_entries(list_no, int(filled[list_no]), b - a, faiss.swig_ptr(ids[a:b]),
                                 faiss.swig_ptr(codes[a:b]))
            filled[list_no] += b - a
    ivf.ntotal = index.ntotal = n


def _tune(index: Any, plan: IndexPlan, params: dict[str, Any], vectors: ShardedMatrix,
          rng: np.random.Generator) -> float:
    """Raise nprobe / efSearch until recall@10 >= TARGET_RECALL (or the knob is maxed out)."""
    queries, exact = _recall_queries(vectors, rng)
    if plan.type == "hnsw":
        knob, values = "efSearch", [v for v in (64, 128, 256, 512, 1024) if v >= 10]
    else:
        knob, values = "nprobe", sorted({min(v, plan.params["nlist"]) for v in (8, 16, 32, 64, 128, 256, 512)})
    recall = 0.0
    for value in values:
        set_search_param(index, knob, value)
        recall = _recall(index, queries, exact)
        params[knob] = value
        if recall >= TARGET_RECALL:
            break
    return recall


def set_search_param(index: Any, knob: str, value: int) -> None:
    import faiss

    if knob == "efSearch":
        faiss.downcast_index(index).hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index).nprobe = value


def _recall_queries(vectors: ShardedMatrix, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sampled stored vectors moved by random offsets of norm QUERY_NOISE, and their exact top-10 ids."""
    import faiss

    n, d = vectors.shape
    k = min(10, n)
    q_idx = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))
    queries = np.asarray(vectors[q_idx], dtype=np.float32)
    noise = rng.normal(size=queries.shape).astype(np.float32)
    queries += QUERY_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    exact_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start, block in vectors.chunks(ENCODE_CHUNK):
        s, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([exact_scores, s], axis=1)
        cand_i = np.concatenate([exact_ids, i + start], axis=1)
        best = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        exact_scores = np.take_along_axis(cand_s, best, 1)
        exact_ids = np.take_along_axis(cand_i, best, 1)
    return queries, exact_ids


def _recall(index: Any, queries: np.ndarray, exact_ids: np.ndarray) -> float:
    _, got = index.search(queries, exact_ids.shape[1])
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, exact_ids))
    return hits / float(exact_ids.size)
