"""Text-route study: quality as the competition scores it, on the routes that need no CLIP (docs/quality.md).

    python scripts/text_route_study.py prepare [--pool 200000] [--heldout 1000]   # split + MiniLM embeddings (resumable)
    python scripts/text_route_study.py report  [--sizes 10000,50000,100000,200000]  # the tables of docs/quality.md

The split, carved from the shared corpus with seed 0:
  held-out = 1000 random Discord prompts + 1000 random songjein_chatgpt_generated
             prompts (written in the style of the competition's test prompts)
             + the 7 competition sample prompts;
  pool     = random prompts from the rest, in a random order, so that its first
             N rows are a random corpus of size N (nested: 10k in 100k in 200k).
The held-out prompts are split in two halves by hash: "tune" (choose k, p, T)
and "test" (report). Everything is cached under runs/text_study/.
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

from text_route_report import OUT, is_test, report  # noqa: E402  (the report reads what prepare writes)

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.paths import shared_data_dir  # noqa: E402
from nearest_prompt.encoders.minilm import load_minilm  # noqa: E402
from nearest_prompt.indexer.shards import embed_in_shards  # noqa: E402


def prepare(pool_size: int, heldout_per_group: int, *, split_only: bool = False) -> None:
    data = shared_data_dir()
    table = pq.read_table(data / "prompts" / "sd_prompts.parquet")
    prompts = table.column("prompt").to_pylist()
    source = np.asarray(table.column("source").to_pylist())
    rng = np.random.default_rng(0)
    discord = np.flatnonzero(source == "sd_discord_bartman")
    gpt = np.flatnonzero(source == "songjein_chatgpt_generated")
    held = np.concatenate([rng.choice(discord, heldout_per_group, replace=False),
                           rng.choice(gpt, heldout_per_group, replace=False)])
    rest = np.setdiff1d(np.arange(len(prompts)), held)
    pool = rng.permutation(rest)[:pool_size]
    with open(data / "eval" / "kaggle_sample" / "prompts.csv", newline="") as f:
        kaggle = [r["prompt"] for r in csv.DictReader(f)]
    OUT.mkdir(parents=True, exist_ok=True)
    held_prompts = [prompts[i] for i in held] + kaggle
    held_groups = ["discord"] * heldout_per_group + ["chatgpt_style"] * heldout_per_group + ["kaggle"] * len(kaggle)
    pq.write_table(pa.table({"prompt": held_prompts, "group": held_groups}), OUT / "heldout.parquet")
    pq.write_table(pa.table({"prompt": [prompts[i] for i in pool]}), OUT / "pool.parquet")
    for test, name in ((True, "test"), (False, "tune")):  # the halves the report uses, as prompt files for `eval`
        sel = [p for p in held_prompts if is_test(p) == test]
        pq.write_table(pa.table({"prompt": sel}), OUT / f"heldout_{name}.parquet")
    if split_only:  # the composer study (scripts/compose_study.sh) builds a store from the split instead
        print(f"wrote the split to {OUT}: {len(held_prompts)} held-out, {len(pool)} pool prompts")
        return
    minilm = load_minilm()
    enc = lambda b: minilm.encode(b, batch_size=len(b))  # noqa: E731
    embed_in_shards(held_prompts, encode=enc, dim=384, folder=OUT / "heldout_minilm", shard_size=5000,
                    batch_size=64, dtype=np.float16, desc="held-out MiniLM", progress=True)
    pool_prompts = [prompts[i] for i in pool]
    embed_in_shards(pool_prompts, encode=enc, dim=384, folder=OUT / "pool_minilm", shard_size=10_000,
                    batch_size=64, dtype=np.float16, desc="pool MiniLM", progress=True)
    print(f"prepared {OUT}: {len(held_prompts)} held-out, {len(pool_prompts)} pool prompts")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--pool", type=int, default=200_000)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--split-only", action="store_true", help="write the split, embed nothing")
    r = sub.add_parser("report")
    r.add_argument("--sizes", default="10000,50000,100000,200000")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.pool, a.heldout, split_only=a.split_only)
    else:
        report([int(s) for s in a.sizes.split(",")])
