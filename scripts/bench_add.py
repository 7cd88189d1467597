"""Adding to a store against rebuilding it, and filtered search against exact filtered search.

    python scripts/bench_add.py [--rows 1000000] [--add 10000] [--dim 768] [--work runs/bench_add]

The corpus is the last ``rows + add`` prompts of the shared corpus (so its ``source`` column holds every
source): a store is built from the first ``rows``, then the last ``add`` are added to it (``indexer.add``),
and a store of all of them is built from scratch (the rebuild an addition saves). Stand-in encoders
(``devkit.standin``: clustered vectors seeded by each text) stand for MiniLM and a CLIP text tower of ``--dim``
dimensions, so the figures are the index machinery's (reading, dedup, FAISS, files), not a model's.

Then, on the grown store, each filter over ``source`` is searched as the service searches it
(``Retriever.search(..., where=...)``) and exactly (numpy over the stored vectors of the matching rows), for
500 queries (stored vectors moved by a random offset): recall@10 of the filtered search, and its queries/s.
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
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_common import memory_status  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402
from devkit.standin import StandInClip, StandInMiniLM  # noqa: E402

FILTERS = ("source=sd_discord_bartman", "source=songjein_28th_real", "source in (songjein_chatgpt_generated,krea_1k)",
           "source in (i2p_lexica,promptcharm)")


def corpus(rows: int, add: int, work: Path) -> dict[str, Path]:
    pf = pq.ParquetFile(shared_data_dir() / "prompts" / "sd_prompts.parquet")
    total = pf.metadata.num_rows
    table = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet").slice(total - rows - add)
    paths = {name: work / f"{name}.parquet" for name in ("base", "new", "union")}
    pq.write_table(table.slice(0, rows), paths["base"])
    pq.write_table(table.slice(rows), paths["new"])
    pq.write_table(table, paths["union"])
    return paths


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def filtered_recall(path: Path, clip, minilm, *, queries: int = 500, seed: int = 0) -> list[dict]:
    from nearest_prompt.common.topk import merge_topk
    from nearest_prompt.retriever import Retriever
    from nearest_prompt.retriever.search import FILTER_EXACT_MAX

    r = Retriever.open(path, clip=clip, minilm=minilm)
    vectors = r.store.vectors["clip"]
    rng = np.random.default_rng(seed)
    q = np.asarray(vectors[np.sort(rng.choice(r.rows, queries, replace=False))], dtype=np.float32)
    noise = rng.standard_normal(q.shape).astype(np.float32)
    q += 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out = []
    for expr in FILTERS:
        allowed = r.store.allowed(expr)
        rows = np.flatnonzero(allowed)
        best_s = np.full((queries, 10), -np.inf, np.float32)
        best_i = np.full((queries, 10), -1, np.int64)
        for start in range(0, len(rows), 65_536):  # exact: every matching row scored
            part = rows[start:start + 65_536]
            s = q @ np.asarray(vectors[part], dtype=np.float32).T
            best_s, best_i = merge_topk(best_s, best_i, s, np.broadcast_to(part, s.shape), 10)
        nb, secs = timed(r.search, q, k=10, where=expr)
        want = min(10, len(rows))
        recall = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / want for a, b in zip(nb.ids, best_i)]) if want \
            else float((nb.ids < 0).all())  # nothing matches: the answer must be empty
        out.append({"where": expr, "rows": int(len(rows)), "fraction": len(rows) / r.rows,
                    "path": "exact over the matching rows" if len(rows) <= FILTER_EXACT_MAX else "faiss IDSelector",
                    "recall_at_10": float(recall), "qps": queries / secs,
                    "full_results": bool((nb.ids >= 0).sum(axis=1).min() >= want)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--add", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--work", type=Path, default=Path("runs/bench_add"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from nearest_prompt import index_store, indexer

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    paths = corpus(args.rows, args.add, args.work)
    clip, minilm = StandInClip(args.dim), StandInMiniLM()
    config = indexer.BuildConfig(shard_size=100_000, batch_size=8192)
    base, t_base = timed(indexer.build, [paths["base"]], args.work / "store", config=config, clip=clip,
                         minilm=minilm, progress=False)
    added, t_add = timed(indexer.add, [paths["new"]], args.work / "store", clip=clip, minilm=minilm,
                         progress=False, batch_size=8192)
    rss_add = memory_status()["VmHWM"]
    union, t_union = timed(indexer.build, [paths["union"]], args.work / "union", config=config, clip=clip,
                           minilm=minilm, progress=False)
    grown = index_store.open_store(args.work / "store")
    filters = filtered_recall(args.work / "store", clip, minilm)
    result = {"rows": base.rows, "added": added.added, "dim": args.dim, "build_s": t_base, "add_s": t_add,
              "rebuild_s": t_union, "rebuild_rows": union.rows, "peak_rss_gib_after_add": rss_add / 2**30,
              "indexes": {s: [grown.manifest.indexes[s].type, grown.manifest.indexes[s].params,
                              grown.manifest.indexes[s].recall_at_10] for s in ("clip", "minilm")},
              "notes": added.notes, "filters": filters}
    print(f"{args.rows:,} prompts + {args.add:,} added, CLIP dim {args.dim}, stand-in encoders, "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| what | seconds |\n|---|---|")
    print(f"| build the {base.rows:,}-prompt store | {t_base:.0f} |")
    print(f"| add {added.added:,} prompts to it (`nearest-prompt add`) | {t_add:.0f} |")
    print(f"| rebuild: build all {union.rows:,} from scratch | {t_union:.0f} |")
    print(f"indexes after the addition: {result['indexes']}; notes: {added.notes or 'none'}")
    print("\n| where | rows | path | recall@10 vs exact filtered | q/s (500 queries, batch) | k results |")
    print("|---|---|---|---|---|---|")
    for f in filters:
        print(f"| `{f['where']}` | {f['rows']:,} ({f['fraction']:.2%}) | {f['path']} | {f['recall_at_10']:.3f} | "
              f"{f['qps']:.0f} | {'always' if f['full_results'] else 'not always'} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    pa.set_cpu_count(os.cpu_count() or 1)
    main()
