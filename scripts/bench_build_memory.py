"""Build memory: the full shared corpus through our streaming build vs a naive in-memory build.

    python scripts/bench_build_memory.py [--limit N] [--dim 1024] [--skip-naive]

Both use stand-in encoders (random vectors, see bench_common) so that 1.96M
prompts fit in minutes on 2 CPU cores; model memory is not included (MiniLM
~90 MB, ViT-H-14 text tower ~1.4 GB fp32, both constant in corpus size).
Ours: ``indexer.build`` (streaming reads, shards, FAISS near-dedup, index
chosen by a 4 GiB budget), with its peak RSS per build stage (sampled every
0.2 s; "anon" is RssAnon, the part that is not file pages) and its exact
peak (VmHWM). Naive: read the whole parquet, dedup with a set, embed
everything into two in-memory matrices, exact flat index. Then the store is
opened and the RSS right after open, and after 100 searches, is compared
with its size on disk (memory-mapping).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from bench_common import FakeClipText, FakeMiniLM, PeakRSS, memory_status  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402

GiB = 2 ** 30


def ours(limit: int | None, dim: int, out: Path) -> dict:
    from nearest_prompt import indexer
    shutil.rmtree(out, ignore_errors=True)
    cfg = indexer.BuildConfig(limit=limit, shard_size=100_000, batch_size=8192)
    t = time.perf_counter()
    with PeakRSS().follow_build_stages() as peak:
        r = indexer.build([shared_data_dir() / "prompts" / "sd_prompts.parquet"], out, config=cfg,
                          clip=FakeClipText(dim=dim), minilm=FakeMiniLM(), progress=True)
    return {"rows": r.rows, "seconds": time.perf_counter() - t, "peak_rss": memory_status()["VmHWM"],
            "peak_anon": peak.peak_anon, "by_stage": peak.by_stage}


def naive(limit: int | None, dim: int) -> dict:
    """In a subprocess, so its memory does not count against ours."""
    code = f"""
import sys, time, numpy as np, pyarrow.parquet as pq, faiss
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).resolve().parents[1])!r}]
from bench_common import FakeClipText, FakeMiniLM
from devkit.paths import shared_data_dir
t = time.perf_counter()
prompts = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet").column("prompt").to_pylist()
seen, uniq = set(), []
for p in prompts:
    k = " ".join(p.split()).casefold()
    if k not in seen:
        seen.add(k); uniq.append(p)
uniq = uniq[:{limit!r}] if {limit!r} else uniq
mini = np.concatenate([FakeMiniLM().encode(uniq[i:i + 8192]) for i in range(0, len(uniq), 8192)])
clip = np.concatenate([FakeClipText(dim={dim}).encode_text(uniq[i:i + 8192]) for i in range(0, len(uniq), 8192)])
index = faiss.IndexFlatIP({dim}); index.add(clip)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]  # own address space only
print(len(uniq), time.perf_counter() - t, int(hwm) * 1024)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows, secs, peak = p.stdout.split()
    return {"rows": int(rows), "seconds": float(secs), "peak_rss": int(peak)}


def open_rss(out: Path) -> dict:

    code = f"""
import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).resolve().parents[1])!r}]
from bench_common import memory_status
import faiss, numpy as np, pyarrow
from nearest_prompt import index_store
from nearest_prompt.index_store.reader import is_memory_mapped
before = memory_status()["VmRSS"]
s = index_store.open_store({str(out)!r}, verify="size")
opened = memory_status()["VmRSS"]
q = s.minilm[np.random.default_rng(0).choice(s.rows, 100, replace=False)].astype(np.float32)
s.indexes['minilm'].search(q, 10)
s.indexes['clip'].search(np.random.default_rng(1).standard_normal((100, s.indexes['clip'].d), dtype=np.float32), 10)
m = memory_status()
mapped = [int(is_memory_mapped(s.indexes[space])) for space in ("clip", "minilm")]
print(before, opened, m["VmRSS"], m["RssAnon"], *mapped)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, searched, searched_anon, m1, m2 = map(int, p.stdout.split())
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"store_bytes": size, "rss_before_open": before, "rss_after_open": after, "rss_after_search": searched,
            "anon_after_search": searched_anon,
            "mapped": bool(m1 and m2)}


def print_open(o: dict) -> None:
    print(f"open : store {o['store_bytes'] / GiB:.2f} GiB on disk; RSS {o['rss_before_open'] / GiB:.2f} GiB "
          f"before open (imports), {o['rss_after_open'] / GiB:.2f} GiB after open, "
          f"{o['rss_after_search'] / GiB:.2f} GiB after 100 searches in each index (anonymous "
          f"{o['anon_after_search'] / GiB:.2f} GiB, the rest is file pages); "
          f"both indexes memory-mapped: {o['mapped']}")


def print_naive(n: dict) -> None:
    print(f"naive: {n['rows']:,} prompts in {n['seconds']:.0f} s, peak RSS {n['peak_rss'] / GiB:.2f} GiB "
          "(no near-dedup, exact flat index)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--only-naive", action="store_true")
    ap.add_argument("--open-only", action="store_true", help="only the open/search part, on an existing --out")
    ap.add_argument("--out", default="runs/bench_full_store")
    a = ap.parse_args()
    out = Path(a.out)
    if a.only_naive:
        print_naive(naive(a.limit, a.dim))
        sys.exit(0)
    if a.open_only:
        print_open(open_rss(out))
        sys.exit(0)
    r = ours(a.limit, a.dim, out)
    print(f"ours : {r['rows']:,} prompts in {r['seconds']:.0f} s, peak RSS {r['peak_rss'] / GiB:.2f} GiB "
          f"(VmHWM), peak anonymous {r['peak_anon'] / GiB:.2f} GiB (sampled)")
    print("| stage | peak RSS GiB | peak anon GiB |\n|---|---|---|")
    for stage, (rss, anon) in r["by_stage"].items():
        print(f"| {stage} | {rss / GiB:.2f} | {anon / GiB:.2f} |")
    print_open(open_rss(out))
    if not a.skip_naive:
        print_naive(naive(a.limit, a.dim))
