"""Search benchmark: our index types vs numpy brute force, on synthetic clustered unit vectors.

    python scripts/bench_search.py [--sizes 100000,1000000,2000000] [--dims 1024,384] [--queries 1000]

For each (N, d): queries/s for single queries and for batches of 1,000, and
recall@10 against exact search, for numpy brute force (the baseline), FAISS
flat, and each index type as ``indexer.faiss_index.build_index`` builds it
(IVF trained on a random sample, nprobe/efSearch tuned to recall 0.95 at
build). HNSW is built only up to --hnsw-max rows and IVF-Flat up to --ivf-max rows
(their builds are slow on 2 cores, and IVF-Flat at 2M x 1024 is 8 GB beside the 8 GB data).
Data: 4,096 random unit centres, points = centre + noise (cosine ~0.8 to their
centre), normalised; queries are fresh points from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from nearest_prompt.common.topk import exact_knn, recall_at_k


def make_data(n: int, d: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def points(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 100_000):
            e = min(s + 100_000, m)
            block = centres[rng.integers(0, len(centres), e - s)]
            block += rng.standard_normal((e - s, d), dtype=np.float32) * (0.75 / np.sqrt(d))
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[s:e] = block
        return out

    return points(n), points(q)


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: numpy brute force (BLAS matmul + argpartition, 250,000 rows at a time)."""
    return exact_knn(q, x, k, block_rows=250_000, backend="numpy")[1]


def timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench(n: int, d: int, nq: int, hnsw_max: int, ivf_max: int, types: list[str]) -> list[dict]:
    import faiss

    from nearest_prompt.indexer.faiss_index import build_index, plan_index

    x, q = make_data(n, d, nq)
    rows = []
    single = q[:50]
    t_np1 = timed(lambda: [numpy_search(x, single[i:i + 1], 10) for i in range(5)], 1) / 5
    t0 = time.perf_counter()
    exact = numpy_search(x, q, 10)
    t_npb = time.perf_counter() - t0
    rows.append({"N": n, "d": d, "method": "numpy brute force (baseline)", "build_s": 0.0,
                 "single_qps": 1 / t_np1, "batch1000_qps": nq / t_npb, "recall@10": 1.0,
                 "bytes": int(x.nbytes)})
    print(rows[-1], flush=True)
    for kind in dict.fromkeys(["flat"] + types):  # flat once, even when --types names it too
        if (kind == "hnsw" and n > hnsw_max) or (kind == "ivf" and n > ivf_max):
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            info = build_index(x, plan_index(n, d, index_type=kind), path=f"{tmp}/index", seed=0)
            build_s = time.perf_counter() - t0
            index = faiss.read_index(f"{tmp}/index")  # in memory: times search, not page faults
            nbytes = os.path.getsize(f"{tmp}/index")
        t1 = timed(lambda index=index: [index.search(single[i:i + 1], 10) for i in range(len(single))], 1) / len(single)
        t0 = time.perf_counter()
        _, got = index.search(q, 10)
        tb = time.perf_counter() - t0
        rows.append({"N": n, "d": d, "method": f"faiss {kind} {info['params']}", "build_s": build_s,
                     "single_qps": 1 / t1, "batch1000_qps": nq / tb, "recall@10": recall_at_k(got, exact),
                     "recall@10_at_build": info["recall_at_10"], "bytes": nbytes,
                     "speedup_single_vs_numpy": t_np1 / t1})
        print(rows[-1], flush=True)
        del index
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,2000000")
    ap.add_argument("--dims", default="1024,384")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--types", default="ivf,ivfsq8,ivfpq,hnsw")
    ap.add_argument("--hnsw-max", type=int, default=100_000)
    ap.add_argument("--ivf-max", type=int, default=1_000_000)
    ap.add_argument("--out", default="runs/bench_search.json")
    a = ap.parse_args()
    import faiss

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "faiss_threads": faiss.omp_get_max_threads(), "numpy": np.__version__, "faiss": faiss.__version__}
    print(meta)
    results = []
    for d in [int(v) for v in a.dims.split(",")]:
        for n in [int(v) for v in a.sizes.split(",")]:
            results += bench(n, d, a.queries, a.hnsw_max, a.ivf_max, a.types.split(","))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print("\n| N | d | method | build s | single q/s | batch-1000 q/s | recall@10 | MiB | single vs numpy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['N']:,} | {r['d']} | {r['method']} | {r['build_s']:.1f} | {r['single_qps']:,.0f} | "
              f"{r['batch1000_qps']:,.0f} | {r['recall@10']:.3f} | {r['bytes'] / 2**20:,.0f} | "
              f"{r.get('speedup_single_vs_numpy', 1.0):,.0f}x |")
