"""Choose, train and fill the FAISS index over unit CLIP text vectors (inner product).

Types: ``flat`` (exact), ``ivf`` (IVF-Flat), ``hnsw`` (HNSW-Flat),
``ivfsq8`` (IVF with 8-bit scalar quantisation: a quarter of IVF-Flat's
memory, nearly its recall), ``ivfpq`` (IVF with product quantisation, for
the tightest budgets). ``auto`` picks exact search for small corpora and,
above that, the first of ivf, ivfsq8, ivfpq that fits the memory budget.
IVF is trained on a seeded random sample, never on the first rows, and
written to disk list by list without being held in memory (``ivf_file``).
At build time the search-time knob (IVF ``nprobe``, HNSW ``efSearch``) is
raised until recall@10 against exact search reaches 0.95 on sampled queries
(stored vectors moved by a random offset of norm 0.5); the knob and the
measured recall are recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.topk import exact_knn, recall_at_k

from .ivf_file import MapBlocks, MappedIVF, set_ivf_file_nprobe, write_ivf_file
from .shards import ShardedMatrix, float_blocks

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 100_000
PQ_MIN_ROWS = 16
ADD_CHUNK = 65_536
RECALL_BLOCK = 16_384  # stored rows scored at a time for the exact recall@10 oracle
IVF_TYPES = ("ivf", "ivfsq8", "ivfpq")
TRAIN_PER_LIST = 40  # k-means training rows per IVF list
MAX_TRAIN_BYTES = 1 << 30  # float32 k-means sample at most: caps nlist (6,553 lists at d=1024)
ENCODER_TRAIN_ROWS = 65_536  # rows that train the SQ / PQ encoder
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


def ivf_nlist(n: int, d: int) -> int:
    """4 sqrt(n) lists, at most n / 39 (faiss's minimum of training points per list) and at most what a
    k-means sample of MAX_TRAIN_BYTES can train (so training memory is bounded whatever the corpus)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1, MAX_TRAIN_BYTES // (TRAIN_PER_LIST * 4 * d)))


def plan_index(n: int, d: int, *, index_type: str = "auto", memory_budget_gb: float = 4.0) -> IndexPlan:
    nlist = ivf_nlist(n, d)
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
        log.warning("index_type ivfpq needs at least %d prompts, the corpus has %d: using exact flat search",
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


def new_index(plan: IndexPlan, d: int) -> Any:
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


def build_index(vectors: ShardedMatrix | np.ndarray, plan: IndexPlan, *, path: str | Path,
                seed: int = 0, map_blocks: MapBlocks | None = None) -> dict[str, Any]:
    """Train (on a random sample), fill in row order (faiss id == row), write to ``path``, measure recall@10.

    IVF types go straight to disk (``ivf_file.write_ivf_file``) and are tuned
    through bounded memory maps, so their size never counts in memory; flat
    and HNSW are built in memory and then written. Returns the manifest entry.
    """
    import faiss

    n, d = vectors.shape
    index = new_index(plan, d)
    rng = np.random.default_rng(seed)
    params = dict(plan.params)
    if plan.type in IVF_TYPES:
        train_ivf(index, vectors, rng=rng)
        write_ivf_file(path, index, vectors, map_blocks=map_blocks)  # the block work may run on an engine
        searcher = MappedIVF(path)
        recall = _tune(lambda q, k, value: searcher.search(q, k, nprobe=value), plan, params, vectors, rng)
        set_ivf_file_nprobe(path, index, ntotal=n, nprobe=params["nprobe"])
    else:
        for _, block in float_blocks(vectors, ADD_CHUNK):
            index.add(block)
        if plan.type == "hnsw":
            def search(q: np.ndarray, k: int, value: int):
                faiss.downcast_index(index).hnsw.efSearch = value
                return index.search(q, k)
            recall = _tune(search, plan, params, vectors, rng)
        else:
            recall = 1.0
        faiss.write_index(index, str(path))
    info = {"type": plan.type, "params": params, "factory": type(index).__name__, "metric": "inner_product",
            "dim": d, "ntotal": int(n), "recall_at_10": round(recall, 4)}
    log.debug("FAISS index %s %s over %d vectors (recall@10 %.3f)", plan.type, params, n, recall)
    if recall < TARGET_RECALL:
        finer = {"ivfpq": "ivfsq8 or ivf", "ivfsq8": "ivf"}.get(plan.type)
        log.warning("the %s index reaches recall@10 %.3f only (target %.2f) at its widest search setting%s",
                    plan.type, recall, TARGET_RECALL,
                    f"; raise memory_budget_gb (--memory-budget) or choose index_type {finer}" if finer else "")
    return info


def train_ivf(index: Any, vectors: ShardedMatrix | np.ndarray, *, rng: np.random.Generator) -> None:
    """Train an IVF index on random rows: k-means on TRAIN_PER_LIST rows per list, then the encoder
    (SQ ranges, PQ codebooks) on ENCODER_TRAIN_ROWS rows, one sample in memory at a time."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    n = len(vectors)

    def sample(size: int) -> np.ndarray:
        rows = np.sort(rng.choice(n, size=min(n, size), replace=False))
        return np.asarray(vectors[rows], dtype=np.float32)

    x = sample(max(ivf.nlist * TRAIN_PER_LIST, 10_000))
    faiss.Clustering(ivf.d, ivf.nlist, ivf.cp).train(x, ivf.quantizer)  # what index.train runs first
    del x
    index.train(sample(ENCODER_TRAIN_ROWS))  # the quantizer is trained: faiss trains only the encoder


def _tune(search: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]], plan: IndexPlan,
          params: dict[str, Any], vectors: ShardedMatrix | np.ndarray, rng: np.random.Generator) -> float:
    """Raise nprobe / efSearch until recall@10 >= TARGET_RECALL (or the knob is maxed out);
    ``search(queries, k, knob_value)`` searches the index."""
    queries, exact = _recall_queries(vectors, rng)
    if plan.type == "hnsw":
        knob, values = "efSearch", [64, 128, 256, 512, 1024]
    else:
        knob, values = "nprobe", sorted({min(v, plan.params["nlist"]) for v in (8, 16, 32, 64, 128, 256, 512)})
    recall = 0.0
    for value in values:
        _, got = search(queries, exact.shape[1], value)
        recall = recall_at_k(got, exact)
        params[knob] = value
        if recall >= TARGET_RECALL:
            break
    return recall


def _recall_queries(vectors: ShardedMatrix | np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sampled stored vectors moved by random offsets of norm QUERY_NOISE, and their exact top-10 ids."""
    n, d = vectors.shape
    k = min(10, n)
    q_idx = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))
    queries = np.asarray(vectors[q_idx], dtype=np.float32)
    noise = rng.normal(size=queries.shape).astype(np.float32)
    queries += QUERY_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact_ids = exact_knn(queries, vectors, k, block_rows=RECALL_BLOCK)
    return queries, exact_ids
