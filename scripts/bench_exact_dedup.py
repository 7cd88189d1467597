"""Exact dedup memory: our on-disk dedup (``indexer.exact_dedup``) vs an in-memory set of digests.

    python scripts/bench_exact_dedup.py [--copies 1,5] [--limit N]

For each number of copies C, a parquet file holds the shared corpus C times
(copy k > 0 with the suffix " #k", so every copy is new text) and then the
first copy once more verbatim (all exact duplicates): (C + 1) x 1.96M values,
C x 1.96M unique. Both methods read it in the same batches, clean and key
every value the same way and stream the unique prompts out (counted and
hashed, not kept); each runs in its own process, which reports its time and
its peak RSS (VmHWM). The baseline is what the build did before: a Python
set of 16-byte digests, one entry per unique prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from bench_common import memory_status  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402

GiB = 2 ** 30


def make_corpus(path: Path, copies: int) -> int:
    """The corpus ``copies`` times with distinct suffixes, then its first copy again; returns the rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    base = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet", columns=["prompt"]).column(0).cast(pa.string())
    rows = 0
    with pq.ParquetWriter(str(path), pa.schema([("prompt", pa.string())])) as w:
        for k in list(range(copies)) + [0]:
            col = base if k == 0 else pc.binary_join_element_wise(base, pa.scalar(f"#{k}"), " ")
            w.write_table(pa.table({"prompt": col}), row_group_size=100_000)
            rows += len(col)
    return rows


def run_ours(path: Path, limit: int | None) -> dict:
    from nearest_prompt.indexer.exact_dedup import ExactDedup
    from nearest_prompt.indexer.readers import check_sources

    with tempfile.TemporaryDirectory(prefix="np-bench-dedup-") as tmp:
        d = ExactDedup(check_sources([path]), folder=Path(tmp) / "w", limit=limit)
        return _consume((block.to_pylist() for block in d.blocks()), d.stats)


def run_set(path: Path, limit: int | None) -> dict:
    from nearest_prompt.common.text import CleanStats, clean_prompt, dedup_key
    from nearest_prompt.indexer.readers import check_sources, iter_values

    seen: set[bytes] = set()
    stats = CleanStats()

    def blocks():
        for values in iter_values(check_sources([path])[0]):
            out = []
            for v in values:
                if limit is not None and stats.unique >= limit:
                    break
                stats.values_read += 1
                text = clean_prompt(v)
                if text is None:
                    continue
                key = dedup_key(text)
                if key in seen:
                    stats.exact_duplicates += 1
                    continue
                seen.add(key)
                stats.unique += 1
                out.append(text)
            yield out
            if limit is not None and stats.unique >= limit:
                return

    return _consume(blocks(), stats)


def _consume(blocks, stats) -> dict:
    t = time.perf_counter()
    h = hashlib.sha256()
    for block in blocks:
        for p in block:
            h.update(p.encode())
            h.update(b"\0")
    return {"seconds": time.perf_counter() - t, "unique": stats.unique, "values_read": stats.values_read,
            "sha256": h.hexdigest()[:16], "peak_rss": memory_status()["VmHWM"]}


def child(method: str, path: Path, limit: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(path)] + ([] if limit is None else ["--limit", str(limit)])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", default="1,5", help="comma-separated copy counts (default 1,5)")
    ap.add_argument("--limit", type=int, default=None, help="stop after this many unique prompts")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, path = args.child
        print(json.dumps((run_ours if method == "ours" else run_set)(Path(path), args.limit)))
        return
    print(f"{'values':>11} {'unique':>11} | {'ours s':>7} {'ours GiB':>8} | {'set s':>7} {'set GiB':>8} | same", flush=True)
    for copies in map(int, args.copies.split(",")):
        with tempfile.TemporaryDirectory(prefix="np-bench-corpus-") as tmp:
            path = Path(tmp) / "corpus.parquet"
            rows = make_corpus(path, copies)
            a, b = child("ours", path, args.limit), child("set", path, args.limit)
            same = (a["sha256"], a["unique"]) == (b["sha256"], b["unique"])
            print(f"{rows:>11,} {a['unique']:>11,} | {a['seconds']:>7.1f} {a['peak_rss'] / GiB:>8.2f} | "
                  f"{b['seconds']:>7.1f} {b['peak_rss'] / GiB:>8.2f} | {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
