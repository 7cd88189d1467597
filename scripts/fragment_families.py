"""The classic mode's fragment families on a real vocabulary: how many fragments each family gets, and a
sample of each.

    python scripts/fragment_families.py [--prompts 100000] [--sample 8]

The vocabulary is mined as a build mines it (``indexer.fragments``, at least 3 prompts a fragment) from the
first --prompts prompts of the shared corpus; no model is needed.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

import pyarrow.parquet as pq  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402
from nearest_prompt.composer.families import FAMILIES, family  # noqa: E402
from nearest_prompt.indexer.fragments import mine_fragments  # noqa: E402


def vocabulary(n: int) -> list[str]:
    pf = pq.ParquetFile(shared_data_dir() / "prompts" / "sd_prompts.parquet")
    blocks, rows = [], 0
    for g in range(pf.num_row_groups):
        col = pf.read_row_group(g, columns=["prompt"]).column(0).slice(0, n - rows)
        blocks += col.chunks
        rows += len(col)
        if rows >= n:
            break
    return mine_fragments(blocks, min_count=3, max_fragments=100_000).fragments.to_pylist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=8)
    a = ap.parse_args()
    by_family: dict[str, list[str]] = defaultdict(list)
    fragments = vocabulary(a.prompts)
    for f in fragments:
        by_family[family(f)].append(f)
    rng = random.Random(0)
    print(f"{len(fragments):,} fragments from the first {a.prompts:,} prompts")
    print("| family | fragments | a sample |")
    print("|---|---|---|")
    for name in FAMILIES:
        got = by_family[name]
        sample = "; ".join(rng.sample(got, min(a.sample, len(got))))
        print(f"| {name} | {len(got):,} | {sample} |")


if __name__ == "__main__":
    main()
