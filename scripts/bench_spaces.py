"""What a CLIP space costs: build time and bytes a prompt per space, and the latency of a search of one space, a
cascade and a fusion, side by side in one run.

    python scripts/bench_spaces.py [--prompts 100000] [--dims 768,1024] [--queries 200] [--work runs/bench_spaces]

Two stores are built from the same first --prompts prompts of the shared corpus: one with a single CLIP space
(the baseline) and one with a space per dimension in --dims, through ``indexer.build`` as a store build runs
it. Stand-in encoders (``devkit.standin``: each text's vector depends on the text alone, clustered by its
first word) stand for MiniLM and for CLIP text towers of those widths, so the figures are the spaces'
machinery (embedding shards, indexes, files, exact rescoring), not a model's: with real models each space
adds its model's forward passes (docs/scale.md counts their FLOPs). Searches run on query vectors made by the
same stand-ins (texts held out of the store), through ``Retriever.search`` with a ``SearchPlan``: single
queries (one per call) and one batch; the plans' query embedding is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # devkit

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402
from devkit.standin import StandInClip, StandInMiniLM  # noqa: E402


def build(corpus: Path, out: Path, dims: list[int]) -> tuple[float, dict]:
    from nearest_prompt import index_store, indexer

    names = [f"d{d}" for d in dims]
    clips = {name: StandInClip(d, name=name) for name, d in zip(names, dims)}
    config = indexer.BuildConfig(spaces=tuple(f"{n}=local-dir:/stand-in/{n}" for n in names), max_fragments=0)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    indexer.build([corpus], out, config=config, clip=clips, minilm=StandInMiniLM(), progress=False)
    seconds = time.perf_counter() - t
    store = index_store.open_store(out)
    rows = store.rows
    per_space = {}
    for name in [*store.spaces, "minilm"]:
        files = [f for f in store.manifest.files if f.split(".")[0] == name]
        info = store.manifest.indexes[name]
        per_space[name] = {"disk_bytes_per_prompt": sum(store.manifest.files[f].bytes for f in files) / rows,
                           "index": f"{info.type} {info.params}", "recall_at_10": info.recall_at_10,
                           "ram_bytes_per_prompt": (info.ram_bytes or 0) / rows}
    return seconds, {"rows": rows, "seconds": store.manifest.build["seconds"], "spaces": per_space}


def search_timings(out: Path, dims: list[int], texts: list[str]) -> dict:
    from nearest_prompt.retriever import Retriever, SearchPlan

    names = [f"d{d}" for d in dims]
    clips = {name: StandInClip(d, name=name) for name, d in zip(names, dims)}
    r = Retriever(Retriever.open(out).store, clip=clips[names[0]], minilm=StandInMiniLM(),
                  clips={n: c for n, c in clips.items() if n != names[0]})
    a, b = names[0], names[-1]
    plans = {f"space {a}": SearchPlan(space=a), f"space {b}": SearchPlan(space=b),
             f"cascade {b}:60,{a}": SearchPlan.parse(cascade=f"{b}:60,{a}"),
             f"fuse {a},{b}": SearchPlan.parse(fuse=f"{a},{b}")}
    queries = r.embed_queries(texts, names)
    out_rows = {}
    for label, plan in plans.items():
        r.search({s: q[:5] for s, q in queries.items()}, k=10, plan=plan)  # warm
        t = time.perf_counter()
        for i in range(len(texts)):
            r.search({s: q[i:i + 1] for s, q in queries.items()}, k=10, plan=plan)
        single = (time.perf_counter() - t) / len(texts)
        t = time.perf_counter()
        r.search(queries, k=10, plan=plan)
        batch = len(texts) / (time.perf_counter() - t)
        out_rows[label] = {"single_ms": 1000 * single, "batch_qps": batch}
    return out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--dims", default="768,1024")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default="runs/bench_spaces")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dims = [int(d) for d in a.dims.split(",")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet", columns=["prompt"])
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"prompt": table.column("prompt").slice(0, a.prompts)}), corpus)
    held_out = table.column("prompt").slice(a.prompts, a.queries).to_pylist()
    one_s, one = build(corpus, work / "one", dims[:1])
    many_s, many = build(corpus, work / "many", dims)
    timings = search_timings(work / "many", dims, held_out)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "prompts": a.prompts, "builds": {"one space": {"seconds": one_s, **one},
                                               f"{len(dims)} spaces": {"seconds": many_s, **many}},
              "searches": timings}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    print(f"{many['rows']:,} prompts (first {a.prompts:,} of the shared corpus, stand-in encoders), "
          f"{result['machine']}, {result['date']}")
    print("| build | seconds | of which embedding CLIP text | of which indexes |")
    print("|---|---|---|---|")
    for label, (s, info) in {"one space": (one_s, one), f"{len(dims)} spaces": (many_s, many)}.items():
        print(f"| {label} | {s:.1f} | {info['seconds'].get('clip', 0):.1f} | {info['seconds'].get('index', 0):.1f} |")
    print("| space | index | recall@10 | RAM B/prompt | disk B/prompt |")
    print("|---|---|---|---|---|")
    for name, sp in many["spaces"].items():
        print(f"| {name} | {sp['index']} | {sp['recall_at_10']:.3f} | {sp['ram_bytes_per_prompt']:,.0f} | "
              f"{sp['disk_bytes_per_prompt']:,.0f} |")
    print("| search (k = 10) | single query ms | batch q/s |")
    print("|---|---|---|")
    for label, t in timings.items():
        print(f"| {label} | {t['single_ms']:.2f} | {t['batch_qps']:,.0f} |")


if __name__ == "__main__":
    main()
