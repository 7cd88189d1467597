"""Search at scale, side by side in one run: the index ``auto`` plans for the memory budget (built by the code a
store build runs), autofaiss's ``build_index`` under the same memory limit, and exact blockwise search (the
ground truth), on synthetic clustered unit vectors; ``numpy`` (brute force with the float32 matrix in memory,
where it fits) on request.

    python scripts/bench_scale.py --rows 1000000 --dim 768 --memory-budget 4 --queries 1000 --json runs/scale_1m.json
        [--work runs/bench_scale] [--methods ours,autofaiss,exact,numpy] [--autofaiss-python runs/autofaiss-venv/bin/python]
        [--reuse-build]   (search ours' index in --work again; its build figures as its build recorded them)

Data: 4,096 random unit centres; each point a centre plus Gaussian noise (cosine about 0.8 to its centre),
normalised, written as float16 shards of a million rows, generated a block at a time (never all in memory);
the queries are fresh points of the same distribution. Synthetic vectors, not real CLIP embeddings: the
figures measure the indexes, not image-to-prompt quality.

autofaiss runs from its own virtual environment, since its pins are not ours: ``python -m venv
runs/autofaiss-venv && runs/autofaiss-venv/bin/pip install autofaiss 'pyarrow<15' faiss-cpu==1.7.4``
(autofaiss 2.18 imports pyarrow against numpy 1, and calls ``faiss.OPQMatrix`` with keywords that faiss 1.8
and later refuse).

Each build and each search runs in a process of its own, whose peak resident memory is reported twice: VmHWM
(every resident page, file pages of mapped or freshly written files included: the kernel can drop those)
and the peak of RssAnon sampled every 0.2 s (heap, arrays, faiss structures: what cannot be dropped). Per
method the JSON holds recall_at_10, build_s, build_rss_gib, build_anon_gib, search_rss_gib, search_anon_gib,
single_qps (one query per call, over the --queries queries), batch_qps (one call of --queries),
ram_bytes_per_vector and disk_bytes_per_vector. Ours reads its index from disk, so its search starts with its
files evicted from the page cache: single_cold_qps (the first 100 queries) and batch_cold_qps from there, then
single_qps and batch_qps, the same queries again with the pages they read in the cache (as in a server that has
been answering a while).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

SHARD_ROWS = 1_000_000
GEN_ROWS = 250_000  # rows generated at a time
CENTRES = 4096
SINGLE_COLD = 100  # single queries timed from a cold page cache
K = 10


def _vmhwm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


ANON_SAMPLER = """
import threading
def _anon():
    return int([l for l in open("/proc/self/status") if l.startswith("RssAnon")][0].split()[1]) * 1024
PEAK_ANON = [_anon()]
def _sample():
    import time
    while True:
        PEAK_ANON[0] = max(PEAK_ANON[0], _anon())
        time.sleep(0.2)
threading.Thread(target=_sample, daemon=True).start()
"""
exec(ANON_SAMPLER)  # noqa: S102 - the same sampler runs in the autofaiss processes (their scripts start with it)


def _peak_anon() -> int:
    PEAK_ANON[0] = max(PEAK_ANON[0], _anon())  # noqa: F821 - defined by ANON_SAMPLER
    return PEAK_ANON[0]  # noqa: F821


def _emit(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


# -- data -----------------------------------------------------------------------------------------------
def make_data(work: Path, n: int, d: int, q: int) -> tuple[list[Path], np.ndarray]:
    """Float16 shards of n clustered unit vectors in work/data (made once), and q float32 queries."""
    folder = work / "data"
    meta = {"rows": n, "dim": d, "centres": CENTRES, "seed": 0, "shard_rows": SHARD_ROWS}
    done = folder / "meta.json"
    paths = [folder / f"{s:05d}.npy" for s in range(-(-n // SHARD_ROWS))]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def points(m: int, gen: np.random.Generator) -> np.ndarray:
        block = centres[gen.integers(0, CENTRES, m)]
        block += gen.standard_normal((m, d), dtype=np.float32) * (0.75 / np.sqrt(d))
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    if not (done.is_file() and json.loads(done.read_text()) == meta and all(p.is_file() for p in paths)):
        folder.mkdir(parents=True, exist_ok=True)
        for s, path in enumerate(paths):
            rows = min(SHARD_ROWS, n - s * SHARD_ROWS)
            out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=(rows, d))
            gen = np.random.default_rng(1000 + s)
            for a in range(0, rows, GEN_ROWS):
                out[a:a + GEN_ROWS] = points(min(GEN_ROWS, rows - a), gen)
            out.flush()
            del out
            os.replace(path.with_suffix(".tmp.npy"), path)
            print(f"data: shard {s + 1} of {len(paths)}", file=sys.stderr, flush=True)
        done.write_text(json.dumps(meta))
    return paths, points(q, np.random.default_rng(7))


def ground_truth(work: Path, paths: list[Path], queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact top-10 ids of the queries (made once) and the seconds it took."""
    from nearest_prompt.common.topk import exact_knn
    from nearest_prompt.indexer.shards import ShardedMatrix

    cache = work / f"exact_{len(queries)}.npz"
    if cache.is_file():
        z = np.load(cache)
        if z["ids"].shape == (len(queries), K):
            return z["ids"], float(z["seconds"])
    t = time.perf_counter()
    _, ids = exact_knn(queries, ShardedMatrix(paths), K, block_rows=GEN_ROWS)
    seconds = time.perf_counter() - t
    np.savez(cache, ids=ids, seconds=seconds)
    return ids, seconds


# -- phases, each in a process of its own ----------------------------------------------------------------------
def phase_numpy(work: Path, paths: list[Path], queries: np.ndarray, exact: np.ndarray) -> None:
    """Brute force with the whole matrix in memory as float32 (numpy: one matrix product and a partial sort per
    call): the plain baseline, where the matrix fits in memory."""
    from nearest_prompt.common.topk import recall_at_k
    from nearest_prompt.indexer.shards import ShardedMatrix

    m = ShardedMatrix(paths)
    n, d = m.shape
    matrix = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, GEN_ROWS):
        matrix[start:start + GEN_ROWS] = m[start:start + GEN_ROWS]

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ matrix.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        return None, np.take_along_axis(top, order, 1)

    search(queries[:2], K)
    t = time.perf_counter()
    for i in range(10):
        search(queries[i:i + 1], K)
    single = 10 / (time.perf_counter() - t)
    t = time.perf_counter()
    ids = np.concatenate([search(queries[s:s + 100], K)[1] for s in range(0, len(queries), 100)])
    batch = len(queries) / (time.perf_counter() - t)
    _emit(recall_at_10=recall_at_k(ids, exact), build_s=0.0, build_rss_gib=0.0, build_anon_gib=0.0,
          search_rss_gib=_vmhwm() / 2**30, search_anon_gib=_peak_anon() / 2**30, single_qps=single, batch_qps=batch,
          ram_bytes_per_vector=4.0 * d, disk_bytes_per_vector=2.0 * d,
          method="numpy brute force, the float32 matrix in memory")


def phase_exact(work: Path, paths: list[Path], queries: np.ndarray) -> None:
    from nearest_prompt.common.topk import exact_knn
    from nearest_prompt.indexer.shards import ShardedMatrix

    _, batch_s = ground_truth(work, paths, queries)
    m = ShardedMatrix(paths)
    t = time.perf_counter()
    for i in range(3):
        exact_knn(queries[i:i + 1], m, K, block_rows=GEN_ROWS)
    single_s = (time.perf_counter() - t) / 3
    n, d = m.shape
    _emit(recall_at_10=1.0, build_s=0.0, build_rss_gib=0.0, build_anon_gib=0.0, search_rss_gib=_vmhwm() / 2**30,
          search_anon_gib=_peak_anon() / 2**30,
          single_qps=1 / single_s, batch_qps=len(queries) / batch_s, ram_bytes_per_vector=0.0,
          disk_bytes_per_vector=2.0 * d, method="exact blockwise search (numpy/faiss brute force over the shards)")


def phase_ours_build(work: Path, paths: list[Path], budget: float) -> None:
    from nearest_prompt.indexer.faiss_index import build_index, plan_index
    from nearest_prompt.indexer.shards import ShardedMatrix, float_blocks

    m = ShardedMatrix(paths)
    n, d = m.shape
    out = work / "ours"
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    plan = plan_index(n, d, memory_budget_gb=budget)
    vectors = out / "vectors.npy"  # what a store keeps beside the index (clip.npy), written as a build writes it
    header = {"descr": "<f2", "fortran_order": False, "shape": (n, d)}
    with open(vectors, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for _, block in float_blocks(m, GEN_ROWS):
            f.write(block.astype(np.float16).data)
    info = build_index(m, plan, path=out / "index.faiss", refine_path=vectors, seed=0)
    build_s = time.perf_counter() - t
    (out / "info.json").write_text(json.dumps(info))
    built = {"build_s": build_s, "build_rss_gib": _vmhwm() / 2**30, "build_anon_gib": _peak_anon() / 2**30,
             "date": time.strftime("%Y-%m-%d")}
    (out / "build.json").write_text(json.dumps(built))  # what --reuse-build reports
    _emit(**built, info=info, note=plan.note)


def _evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (the kernel drops clean pages no process maps)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _singles(search, queries: np.ndarray) -> float:
    t = time.perf_counter()
    for i in range(len(queries)):
        search(queries[i:i + 1], K)
    return len(queries) / (time.perf_counter() - t)


def _batch(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, ids = search(queries, K)
    return len(queries) / (time.perf_counter() - t), ids


def _time_search(search, queries: np.ndarray) -> dict:
    """From a cold page cache (the caller evicted the files): single queries, the batch; then both again with the
    pages they read in the cache."""
    single_cold = _singles(search, queries[:SINGLE_COLD])
    batch_cold, _ = _batch(search, queries)
    single = _singles(search, queries)
    batch, ids = _batch(search, queries)
    return {"single_cold_qps": single_cold, "batch_cold_qps": batch_cold, "single_qps": single, "batch_qps": batch,
            "ids": ids}


def phase_ours_search(work: Path, queries: np.ndarray, exact: np.ndarray) -> None:
    from nearest_prompt.common.topk import recall_at_k
    from nearest_prompt.index_store.reader import read_index
    from nearest_prompt.index_store.refine import RefinedIndex

    out = work / "ours"
    info = json.loads((out / "info.json").read_text())
    files = [p for p in out.iterdir() if p.suffix in (".faiss", ".ivfdata", ".npy")]
    _evict(files)
    index = read_index(out / "index.faiss", ondisk=info["type"].startswith("ivf"))
    if info["params"].get("refine"):
        index = RefinedIndex(index, np.load(out / "vectors.npy", mmap_mode="r"), k_factor=info["params"]["k_factor"])
    timed = _time_search(index.search, queries)
    ids = timed.pop("ids")
    n = info["ntotal"]
    disk = sum(p.stat().st_size for p in files)
    _emit(recall_at_10=recall_at_k(ids, exact), search_rss_gib=_vmhwm() / 2**30, search_anon_gib=_peak_anon() / 2**30,
          **timed,
          ram_bytes_per_vector=info["ram_bytes"] / n, disk_bytes_per_vector=disk / n,
          method=f"ours: {info['type']} {info['params']}")


AUTOFAISS_BUILD = ANON_SAMPLER + """
import json, sys, time
from autofaiss import build_index
data, out, budget, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
build_index(embeddings=data, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget + "G", current_memory_available="20G", metric_type="ip", nb_cores=cores,
            verbose=30)
seconds = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("RESULT " + json.dumps({"build_s": seconds, "build_rss_gib": int(hwm) * 1024 / 2**30,
                             "build_anon_gib": max(PEAK_ANON[0], _anon()) / 2**30}), flush=True)
"""

AUTOFAISS_SEARCH = ANON_SAMPLER + """
import json, os, sys, time
import numpy as np, faiss
out, queries, exact, single_n = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3]), int(sys.argv[4])
infos = json.load(open(out + "/infos.json"))
index = faiss.read_index(out + "/knn.index")
faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
index.search(queries[:5], 10)
t = time.perf_counter()
for i in range(single_n):
    index.search(queries[i:i + 1], 10)
single = single_n / (time.perf_counter() - t)
t = time.perf_counter()
_, ids = index.search(queries, 10)
batch = len(queries) / (time.perf_counter() - t)
recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), exact.tolist())]))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
n = index.ntotal
size = os.path.getsize(out + "/knn.index")
print("RESULT " + json.dumps({"recall_at_10": recall, "single_qps": single, "batch_qps": batch,
      "search_rss_gib": int(hwm) * 1024 / 2**30, "search_anon_gib": max(PEAK_ANON[0], _anon()) / 2**30,
      "ram_bytes_per_vector": size / n, "disk_bytes_per_vector": size / n,
      "method": "autofaiss " + infos["index_key"] + " " + infos["index_param"]}), flush=True)
"""


def _run(cmd: list[str], **kw) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    found = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not found:
        raise SystemExit(f"{cmd[:4]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    sys.stderr.write(p.stderr[-2000:])
    return found[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--memory-budget", type=float, default=4.0, metavar="GB")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--json", required=True)
    ap.add_argument("--work", default="runs/bench_scale")
    ap.add_argument("--methods", default="ours,autofaiss,exact")
    ap.add_argument("--autofaiss-python", default="runs/autofaiss-venv/bin/python")
    ap.add_argument("--reuse-build", action="store_true",
                    help="search ours' index in --work again without building it (its build figures as recorded)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work) / f"{a.rows}x{a.dim}"
    paths, queries = make_data(work, a.rows, a.dim, a.queries)
    if a.phase:
        exact, _ = ground_truth(work, paths, queries) if a.phase in ("exact", "numpy", "ours-search") else (None, 0)
        {"exact": lambda: phase_exact(work, paths, queries), "numpy": lambda: phase_numpy(work, paths, queries, exact),
         "ours-build": lambda: phase_ours_build(work, paths, a.memory_budget),
         "ours-search": lambda: phase_ours_search(work, queries, exact)}[a.phase]()
        return
    import faiss

    me = [sys.executable, __file__, "--rows", str(a.rows), "--dim", str(a.dim), "--memory-budget",
          str(a.memory_budget), "--queries", str(a.queries), "--work", a.work, "--json", a.json]
    exact, _ = ground_truth(work, paths, queries)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
               "date": time.strftime("%Y-%m-%d"), "faiss": faiss.__version__, "rows": a.rows, "dim": a.dim,
               "memory_budget_gib": a.memory_budget, "queries": a.queries, "data": "synthetic clustered unit vectors",
               "methods": {}}
    methods = a.methods.split(",")
    if "exact" in methods:
        results["methods"]["exact"] = _run(me + ["--phase", "exact"])
    if "numpy" in methods:
        results["methods"]["numpy"] = _run(me + ["--phase", "numpy"])
    if "ours" in methods:
        recorded = work / "ours" / "build.json"
        if a.reuse_build and not recorded.is_file():
            raise SystemExit(f"--reuse-build: {recorded} is missing; run without --reuse-build to build ours first")
        built = json.loads(recorded.read_text()) if a.reuse_build else _run(me + ["--phase", "ours-build"])
        searched = _run(me + ["--phase", "ours-search"])
        results["methods"]["ours"] = {**{k: v for k, v in built.items() if k != "info"}, **searched}
    if "autofaiss" in methods:
        out = work / "autofaiss"
        out.mkdir(parents=True, exist_ok=True)
        np.save(work / "queries.npy", queries)
        np.save(work / "exact.npy", exact)
        built = _run([a.autofaiss_python, "-c", AUTOFAISS_BUILD, str(work / "data"), str(out),
                      f"{a.memory_budget:g}", str(os.cpu_count())])
        searched = _run([a.autofaiss_python, "-c", AUTOFAISS_SEARCH, str(out), str(work / "queries.npy"),
                         str(work / "exact.npy"), str(len(queries))])
        results["methods"]["autofaiss"] = {**built, **searched}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"{a.rows:,} x {a.dim}, memory budget {a.memory_budget:g} GiB, {a.queries} queries, {results['machine']}, "
          f"faiss {results['faiss']}, {results['date']}")
    print("| method | recall@10 | build s | build peak GiB (RSS / anonymous) | search peak GiB (RSS / anonymous) | "
          "RAM B/vector | disk B/vector | single q/s | batch q/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["methods"].values():
        cold = {k: f" ({_qps(r[k + '_cold_qps'])} cold)" if k + "_cold_qps" in r else "" for k in ("single", "batch")}
        print(f"| {r['method']} | {r['recall_at_10']:.3f} | {r['build_s']:.0f} | {r['build_rss_gib']:.2f} / "
              f"{r.get('build_anon_gib', 0):.2f} | {r['search_rss_gib']:.2f} / {r.get('search_anon_gib', 0):.2f} | "
              f"{r['ram_bytes_per_vector']:.0f} | {r['disk_bytes_per_vector']:.0f} | {_qps(r['single_qps'])}{cold['single']} | "
              f"{_qps(r['batch_qps'])}{cold['batch']} |")


def _qps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


if __name__ == "__main__":
    main()
