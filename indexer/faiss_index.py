"""Choose, train and fill the FAISS index of a space (unit vectors, inner product), and tune its search knobs.

Types: ``flat`` (exact), ``hnsw`` (HNSW-Flat, in memory), and three IVF types whose lists are written to disk
a block at a time with faiss's own parts (``ivf_blocks``): ``ivf`` (IVF-Flat, ``4d`` bytes a vector),
``ivfsq8`` (8-bit scalar codes, ``d`` bytes) and ``ivfpq`` (product-quantised codes, ``m`` bytes, whose
``k_factor * k`` best candidates are scored again exactly against float16 vectors kept on disk:
``index_store.refine``). ``auto`` picks exact search up to 100,000 vectors and, above that, the first of
ivf, ivfsq8, ivfpq whose resident bytes (codes, ids, quantizer) fit the memory budget; ivfpq takes the most
bytes a code that fits (``d/4``, ``d/8``, ``d/16``, ``d/32``): finer codes rank the candidates better, so the
refine stage reads fewer rows from disk a query. IVF has ``nlist`` = 4 sqrt(n) lists (faiss's guideline
for this range), at most what a k-means sample of ``MAX_TRAIN_BYTES`` trains; from ``HNSW_MIN_NLIST`` lists
the coarse quantizer is an HNSW graph over the centroids (faster assignment at build and at search).

IVF is trained on a seeded random sample, never on the first rows. At build time the search knobs (``nprobe``,
with ``k_factor`` for ivfpq, ``efSearch`` for HNSW) are raised until recall@10 against exact search reaches
0.95 on sampled queries (stored vectors, as they are and moved by a random offset of norm 0.5, each scored
without the row it was made from, and held to a lower confidence bound: ``recall_queries``); they and the
measured recall are recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.quiet import c_stdout_silenced
from nearest_prompt.index_store.knobs import quantizer_ef
from nearest_prompt.index_store.refine import Rows, rerank

from .ivf_blocks import BoundedIVF, MapBlocks, append_ondisk, imbalance, ivfdata_path, open_ivf, write_ondisk
from .recall_queries import Recall, RecallQueries, recall_queries
from .shards import ShardedMatrix, float_blocks

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 100_000
PQ_MIN_ROWS = 16
ADD_CHUNK = 65_536
IVF_TYPES = ("ivf", "ivfsq8", "ivfpq")
TRAIN_PER_LIST = 40  # k-means training rows per IVF list (faiss warns below 39)
MAX_TRAIN_BYTES = 1 << 30  # float32 k-means sample at most: caps nlist (6,553 lists at d=1024, 8,738 at d=768)
HNSW_MIN_NLIST = 1_024  # from this many lists the coarse quantizer is an HNSW graph (a flat scan of 1,024 centroids
# of 768 floats takes longer than a walk of efSearch 16 over them)
HNSW_M = 32
# The coarse quantizer's graph is built with a wide candidate list (faiss's default is 40): a better-connected
# graph finds a query's nearest lists with a narrower walk, which every search pays for, while the build pays
# once, over nlist points only.
QUANTIZER_EF_CONSTRUCTION = 200
ENCODER_TRAIN_ROWS = 65_536  # rows that train the SQ / PQ encoder
TARGET_RECALL = 0.95
KMEANS_ITERATIONS = 10  # coarse k-means; faiss's default 25 costs 2.5x for little recall
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REFINE_MIN_NPROBE = 8
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (64, 128, 256, 512, 1024)
# An HNSW quantizer's efSearch tried at each nprobe, as multiples of knobs.quantizer_ef(nprobe): where the graph
# walk, not the lists probed, is what misses (centroids with little structure among them), a wider walk to few
# lists costs less than probing more lists at the narrow walk, which misses as much.
QUANTIZER_EF_STEPS = (1, 1.5, 2)
BUILD_EF_SEARCH = 128  # the HNSW quantizer's efSearch while rows are assigned to lists
PQ_DIVISORS = (4, 8, 16, 32)  # ivfpq's bytes a code: d/4 when it fits the budget, else d/8, d/16, d/32


@dataclass(frozen=True)
class IndexPlan:
    type: str
    params: dict[str, Any]
    note: str | None = field(default=None, compare=False)  # said once, when the plan is built

    def estimated_bytes(self, n: int, d: int) -> int:
        """Resident bytes when searching: codes and ids (or vectors), plus the coarse quantizer."""
        p = self.params
        quantizer = p.get("nlist", 0) * (d * 4 + (HNSW_M * 2 * 4 if p.get("quantizer") == "hnsw" else 0))
        if self.type == "flat":
            return n * d * 4
        if self.type == "hnsw":
            return n * (d * 4 + p["M"] * 2 * 4)
        if self.type == "ivf":
            return n * (d * 4 + 8) + quantizer
        if self.type == "ivfsq8":
            return n * (d + 8) + quantizer
        return n * (p["m"] * p["nbits"] // 8 + 8) + quantizer

    def disk_bytes(self, n: int, d: int) -> int:
        """Bytes kept on disk and paged in per query only: the float16 vectors of ivfpq's refine stage."""
        return n * d * 2 if self.type == "ivfpq" and self.params.get("refine") else 0


def ivf_nlist(n: int, d: int) -> int:
    """4 sqrt(n) lists, at most n / 39 (faiss's minimum of training points per list) and at most what a
    k-means sample of MAX_TRAIN_BYTES can train (so training memory is bounded whatever the corpus)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1, MAX_TRAIN_BYTES // (TRAIN_PER_LIST * 4 * d)))


def _pq_m(d: int, divisor: int) -> int:
    for m in (d // divisor, d // (divisor * 2), 8, 4, 2, 1):
        if m >= 1 and d % m == 0:
            return m
    return 1


def plan_index(n: int, d: int, *, index_type: str = "auto", memory_budget_gb: float = 4.0) -> IndexPlan:
    """The index for ``n`` vectors of ``d`` dimensions (pure: nothing is built or said)."""
    nlist = ivf_nlist(n, d)
    ivf = {"nlist": nlist, "nprobe": max(1, min(nlist, 16)), "quantizer": "hnsw" if nlist >= HNSW_MIN_NLIST else "flat",
           "lists": "ondisk"}
    nbits = max(1, min(8, n.bit_length() - 1))  # PQ k-means needs 2^nbits training points: fewer for tiny corpora

    def pq(divisor: int) -> IndexPlan:
        return IndexPlan("ivfpq", {**ivf, "m": _pq_m(d, divisor), "nbits": nbits, "refine": "float16", "k_factor": 16})

    plans = {
        "flat": IndexPlan("flat", {}),
        "ivf": IndexPlan("ivf", dict(ivf)),
        "hnsw": IndexPlan("hnsw", {"M": HNSW_M, "efConstruction": 80, "efSearch": 128}),
        "ivfsq8": IndexPlan("ivfsq8", dict(ivf)),
        "ivfpq": pq(PQ_DIVISORS[0]),
    }
    if index_type == "ivfpq" and n < PQ_MIN_ROWS:
        return IndexPlan("flat", {}, note=f"index_type ivfpq needs at least {PQ_MIN_ROWS} vectors, there are {n}: "
                                          "exact flat search instead")
    if index_type != "auto":
        return plans[index_type]
    if n <= FLAT_MAX_ROWS:
        return plans["flat"]
    budget = memory_budget_gb * (1 << 30)
    candidates = [plans["ivf"], plans["ivfsq8"], *(pq(div) for div in PQ_DIVISORS)]
    for plan in candidates:
        if plan.estimated_bytes(n, d) <= budget:
            return plan
    smallest = candidates[-1]
    return IndexPlan(smallest.type, smallest.params,
                     note=f"even {smallest.type} with {smallest.params['m']}-byte codes needs "
                          f"{smallest.estimated_bytes(n, d) / 2**30:.2f} GiB of memory, over the budget of "
                          f"{memory_budget_gb:g} GiB; raise memory_budget_gb (--memory-budget)")


def new_index(plan: IndexPlan, d: int) -> Any:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    p = plan.params
    if plan.type == "flat":
        return faiss.IndexFlatIP(d)
    if plan.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, p["M"], ip)
        index.hnsw.efConstruction = p["efConstruction"]
        index.hnsw.efSearch = p["efSearch"]
        return index
    if p.get("quantizer") == "hnsw":
        quantizer = faiss.IndexHNSWFlat(d, HNSW_M, ip)
        quantizer.hnsw.efConstruction = QUANTIZER_EF_CONSTRUCTION
    else:
        quantizer = faiss.IndexFlatIP(d)
    if plan.type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, p["nlist"], ip)
    elif plan.type == "ivfsq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, p["nlist"], faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, p["nlist"], p["m"], p["nbits"], ip)
    index.own_fields = True
    quantizer.this.disown()
    index.nprobe = p["nprobe"]
    index.cp.niter = KMEANS_ITERATIONS
    return index


def build_index(vectors: ShardedMatrix | np.ndarray, plan: IndexPlan, *, path: str | Path, seed: int = 0,
                map_blocks: MapBlocks | None = None, refine_path: str | Path | None = None,
                final_path: str | Path | None = None) -> dict[str, Any]:
    """Train (on a random sample), fill in row order (faiss id == row), write to ``path``, tune, measure recall@10.

    IVF types go to disk a block at a time (``ivf_blocks.write_ondisk``, the block work on ``map_blocks``)
    and are tuned through bounded memory maps; ivfpq's refine stage reads ``refine_path``, a float16 .npy of
    the same rows that the caller wrote. Flat and HNSW are built in memory and then written. ``final_path``:
    where ``path`` will live once its folder is moved into place. Returns the manifest entry. The plan's
    ``note`` is the caller's to say.
    """
    import faiss

    n, d = vectors.shape
    index = new_index(plan, d)
    rng = np.random.default_rng(seed)
    params = dict(plan.params)
    if plan.type in IVF_TYPES:
        train_ivf(index, vectors, rng=rng)
        if params.get("quantizer") == "hnsw":
            set_walk(index, BUILD_EF_SEARCH)
        write_ondisk(path, index, vectors, map_blocks=map_blocks, final_path=final_path)
        refine = np.load(refine_path, mmap_mode="r") if plan.type == "ivfpq" and params.get("refine") else None
        recall = _tune_ivf(BoundedIVF(path), plan, params, vectors, rng, refine)
        _write_knobs(path, params, final_path=final_path)
    else:
        for _, block in float_blocks(vectors, ADD_CHUNK):
            index.add(block)
        if plan.type == "hnsw":
            def search(q: np.ndarray, k: int, value: int):
                faiss.downcast_index(index).hnsw.efSearch = value
                return index.search(q, k)
            recall = _raise_until(search, recall_queries(vectors, rng), EF_SEARCHES, params, "efSearch")
        else:
            recall = Recall(1.0, 1.0)
        faiss.write_index(index, str(path))
    info = _info(path, plan.type, params, type(faiss.downcast_index(index)).__name__, n, d, recall)
    if plan.type in IVF_TYPES:
        info["imbalance_at_training"] = info["imbalance"]
    log.debug("FAISS index %s %s over %d vectors (recall@10 %.3f)", plan.type, params, n, recall.mean)
    _warn_recall(plan.type, recall)
    return info


def _info(path: str | Path, kind: str, params: dict[str, Any], factory: str, n: int, d: int,
          recall: Recall) -> dict[str, Any]:
    """The manifest entry of an index file written at ``path``."""
    files = [Path(path)] + ([ivfdata_path(path)] if kind in IVF_TYPES else [])
    plan = IndexPlan(kind, params)
    info = {"type": kind, "params": params, "factory": factory, "metric": "inner_product", "dim": d,
            "ntotal": int(n), "recall_at_10": round(recall.mean, 4), "recall_at_10_low": round(recall.low, 4),
            "ram_bytes": int(plan.estimated_bytes(n, d)),
            "disk_bytes": int(sum(f.stat().st_size for f in files) + plan.disk_bytes(n, d))}
    if kind in IVF_TYPES:
        info["imbalance"] = round(imbalance(open_ivf(path)), 4)
    return info


def _warn_recall(kind: str, recall: Recall) -> None:
    if not recall.reaches(TARGET_RECALL):
        finer = {"ivfpq": "ivfsq8 or ivf", "ivfsq8": "ivf"}.get(kind)
        log.warning("the %s index reaches recall@10 %.3f (%.3f at its lower confidence bound) only (target %.2f) "
                    "at its widest search setting%s", kind, recall.mean, recall.low, TARGET_RECALL,
                    f"; raise memory_budget_gb (--memory-budget) or choose index_type {finer}" if finer else "")


def extend_index(old_path: str | Path, info: dict[str, Any], vectors: ShardedMatrix | np.ndarray, *,
                 path: str | Path, all_vectors: ShardedMatrix | np.ndarray, seed: int = 0,
                 map_blocks: MapBlocks | None = None, refine_path: str | Path | None = None,
                 final_path: str | Path | None = None) -> dict[str, Any]:
    """The index file ``old_path`` (manifest entry ``info``) with the rows of ``vectors`` added after its own,
    without retraining, written to ``path``: IVF lists copied with the new rows appended (``append_ondisk``);
    flat and HNSW read, added to and written. Recall@10 is measured again on ``all_vectors`` (every row, old
    and new: the oracle) at the recorded knobs; below the target they are tuned again, as at build. Returns
    the new manifest entry (``imbalance_at_training`` kept from ``info``). ``old_path`` is only read."""
    import faiss

    kind, params = info["type"], dict(info["params"])
    n, d = all_vectors.shape
    rng = np.random.default_rng(seed)
    if kind in IVF_TYPES:
        append_ondisk(old_path, vectors, path, map_blocks=map_blocks, final_path=final_path)
        refine = np.load(refine_path, mmap_mode="r") if params.get("refine") else None
        searcher = BoundedIVF(path)
        recall = _ivf_recall(searcher, params, recall_queries(all_vectors, rng), refine)
        if not recall.reaches(TARGET_RECALL):
            log.info("recall@10 fell to %.3f with the added rows: tuning the search knobs again", recall.mean)
            recall = _tune_ivf(searcher, IndexPlan(kind, params), params, all_vectors, rng, refine)
            _write_knobs(path, params, final_path=final_path)
        opened = open_ivf(path)  # kept alive while its inner index is looked at
        factory = type(faiss.downcast_index(faiss.extract_index_ivf(opened))).__name__
        del opened
    else:
        index = faiss.read_index(str(old_path))
        for _, block in float_blocks(vectors, ADD_CHUNK):
            index.add(block)
        recall = Recall(1.0, 1.0)
        if kind == "hnsw":
            def search(q: np.ndarray, k: int, value: int):
                faiss.downcast_index(index).hnsw.efSearch = value
                return index.search(q, k)
            rq = recall_queries(all_vectors, rng)
            recall = rq.recall(search(rq.queries, rq.width, params["efSearch"])[1])
            if not recall.reaches(TARGET_RECALL):
                log.info("recall@10 fell to %.3f with the added rows: tuning efSearch again", recall.mean)
                recall = _raise_until(search, rq, EF_SEARCHES, params, "efSearch")
            faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
        faiss.write_index(index, str(path))
        factory = type(faiss.downcast_index(index)).__name__
    out = _info(path, kind, params, factory, n, d, recall)
    if kind in IVF_TYPES:
        out["imbalance_at_training"] = info.get("imbalance_at_training") or info.get("imbalance")
    _warn_recall(kind, recall)
    return out


def _ivf_recall(searcher: BoundedIVF, params: dict[str, Any], rq: RecallQueries, refine: np.ndarray | None) -> Recall:
    """Recall@10 of an IVF index file at the knobs in ``params``."""

    def configure(index: Any) -> None:
        if "quantizer_ef" in params:  # else the walk the file itself records, as a store searches it
            set_walk(index, params["quantizer_ef"])

    if refine is None:
        return rq.recall(searcher.search(rq.queries, rq.width, nprobe=params["nprobe"], configure=configure)[1])
    pool = min(searcher.ntotal, rq.pool(params["k_factor"]))
    _, cand = searcher.search(rq.queries, pool, nprobe=params["nprobe"], configure=configure)
    return rq.recall(rerank(refine, rq.queries, cand, rq.width)[1])


def train_ivf(index: Any, vectors: ShardedMatrix | np.ndarray, *, rng: np.random.Generator) -> None:
    """Train an IVF index on random rows: k-means on TRAIN_PER_LIST rows per list (then the centroids go into
    the quantizer, a graph for HNSW), then the encoder (SQ ranges, PQ codebooks) on ENCODER_TRAIN_ROWS rows,
    one sample in memory at a time."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    n = len(vectors)

    def sample(size: int) -> np.ndarray:
        rows = np.sort(rng.choice(n, size=min(n, size), replace=False))
        return np.asarray(vectors[rows], dtype=np.float32)

    x = sample(max(ivf.nlist * TRAIN_PER_LIST, 10_000))
    ivf.cp.min_points_per_centroid = max(1, min(39, len(x) // ivf.nlist))  # small samples are expected, not warned
    clustering = faiss.Clustering(ivf.d, ivf.nlist, ivf.cp)
    clustering.train(x, faiss.IndexFlatIP(ivf.d))  # exact k-means, whatever the quantizer
    ivf.quantizer.add(faiss.vector_float_to_array(clustering.centroids).reshape(ivf.nlist, ivf.d))
    del x
    ivf.is_trained = False  # the quantizer is trained: faiss trains only the encoder now
    encoder_sample = sample(ENCODER_TRAIN_ROWS)
    pq = getattr(faiss.downcast_index(index), "pq", None)
    if pq is not None:
        pq.cp.min_points_per_centroid = max(1, min(39, len(encoder_sample) >> pq.nbits))
    index.train(encoder_sample)


def _write_knobs(path: str | Path, params: dict[str, Any], *, final_path: str | Path | None) -> None:
    """The tuned nprobe (and the HNSW quantizer's efSearch) into the index file's header."""
    import faiss


    with c_stdout_silenced():
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = params["nprobe"]
    if params.get("quantizer") == "hnsw":
        set_walk(index, params["quantizer_ef"])
    if final_path is not None:
        faiss.downcast_InvertedLists(ivf.invlists).filename = str(ivfdata_path(final_path))
    faiss.write_index(index, str(path))
    del index, ivf
    open_ivf(path)  # it opens as a store will open it


def set_walk(index: Any, ef: int) -> None:
    """The efSearch of the HNSW coarse quantizer of the IVF index ``index`` (or of any index wrapping one)."""
    import faiss

    faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch = ef


def quantizer_efs(nprobe: int) -> list[int]:
    """The HNSW quantizer's efSearch values that tuning tries at ``nprobe``, narrowest first."""
    return list(dict.fromkeys(int(quantizer_ef(nprobe) * m) for m in QUANTIZER_EF_STEPS))


def _tune_ivf(searcher: BoundedIVF, plan: IndexPlan, params: dict[str, Any], vectors: ShardedMatrix | np.ndarray,
              rng: np.random.Generator, refine: np.ndarray | None) -> Recall:
    """The smallest nprobe (with an HNSW quantizer, the smallest of its efSearch steps at it; with a refine stage,
    the smallest k_factor there) whose recall@10 reaches the target; else the best seen (by ``Recall.low``). One
    search of the lists per nprobe and efSearch: the refine stage reranks prefixes of its candidates (the first
    ``k_factor * k`` of more are exactly what a search for that many returns)."""

    rq = recall_queries(vectors, rng)
    hnsw = params.get("quantizer") == "hnsw"
    best: tuple[Recall, int, int | None, int] = (Recall(-1.0, -1.0), 0, None, 0)
    refine_rows = None if refine is None else Rows(refine)
    # With a refine stage every candidate is a row read from disk: from 8 lists up, the first pass is good enough
    # that k_factor stays small; without one, from a single list up.
    start = REFINE_MIN_NPROBE if refine is not None else 1
    for nprobe in sorted({min(v, params["nlist"]) for v in NPROBES if v >= start}):
        for ef in quantizer_efs(nprobe) if hnsw else [0]:
            def configure(index: Any, ef: int = ef) -> None:
                if hnsw:
                    set_walk(index, ef)

            if refine_rows is None:
                _, got = searcher.search(rq.queries, rq.width, nprobe=nprobe, configure=configure)
                tried = [(None, rq.recall(got))]
            else:
                _, cand = searcher.search(rq.queries, min(len(vectors), rq.pool(K_FACTORS[-1])), nprobe=nprobe,
                                          configure=configure)
                tried = []
                for kf in K_FACTORS:
                    _, got = rerank(refine_rows, rq.queries, cand[:, :rq.pool(kf)], rq.width)
                    tried.append((kf, rq.recall(got)))
                    if tried[-1][1].reaches(TARGET_RECALL):
                        break
            kf, recall = tried[-1]
            if recall.low > best[0].low:
                best = (recall, nprobe, kf, ef)
            if recall.reaches(TARGET_RECALL):
                break
        if best[0].reaches(TARGET_RECALL):
            break
    recall, params["nprobe"], kf, ef = best
    if hnsw:
        params["quantizer_ef"] = ef
    if kf is not None:
        params["k_factor"] = kf
    return recall


def _raise_until(search: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]], rq: RecallQueries,
                 values: tuple[int, ...], params: dict[str, Any], knob: str) -> Recall:
    """Raise ``knob`` through ``values`` until recall@10 reaches TARGET_RECALL (or the last value)."""
    recall = Recall(0.0, 0.0)
    for value in values:
        _, got = search(rq.queries, rq.width, value)
        recall = rq.recall(got)
        params[knob] = value
        if recall.reaches(TARGET_RECALL):
            break
    return recall
