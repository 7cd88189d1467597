"""Ray's overhead on one machine: the same slice built locally and with ``--engine ray`` (a local Ray
runtime on this machine's cores), in one run.

    python scripts/bench_ray_build.py [--prompts 20000] [--shard-size 2000]

Models: the real all-MiniLM-L6-v2 and the tiny random-weights CLIP (so that MiniLM, the real cost on
CPU, dominates); near-dedup on; index auto. Each build runs in its own process (``nearest-prompt
build``), timed whole; prints prompts/s of each, their ratio (ray / local; the target is at least 0.8),
and whether the two stores hold the same prompts and MiniLM matrix.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.paths import shared_data_dir  # noqa: E402
from devkit.tiny_clip import make_tiny_clip  # noqa: E402

RUNS = Path("runs/bench_ray")
NP = str(Path(sys.executable).parent / "nearest-prompt")


def build(engine: str, corpus: Path, clip: Path, shard_size: int) -> tuple[float, Path]:
    out = RUNS / f"store_{engine}"
    t = time.perf_counter()
    subprocess.run([NP, "build", "--prompts", str(corpus), "--out", str(out), "--clip", f"local-dir:{clip}",
                    "--shard-size", str(shard_size), "--engine", engine, "--clean", "-q"], check=True)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--shard-size", type=int, default=2_000)
    a = ap.parse_args()
    import numpy as np
    import pyarrow.parquet as pq

    from nearest_prompt import index_store
    RUNS.mkdir(parents=True, exist_ok=True)
    corpus = RUNS / f"slice_{a.prompts}.txt"
    table = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet", columns=["prompt"])
    corpus.write_text("\n".join(p.replace("\n", " ") for p in table.column(0).slice(0, a.prompts).to_pylist()) + "\n")
    clip = make_tiny_clip(RUNS / "tiny_clip")
    local_s, local = build("local", corpus, clip, a.shard_size)
    ray_s, ray = build("ray", corpus, clip, a.shard_size)
    sl, sr = index_store.open_store(local), index_store.open_store(ray)
    same = sl.prompts(range(sl.rows)) == sr.prompts(range(sr.rows)) and np.array_equal(sl.minilm, sr.minilm)
    n = a.prompts
    print(f"{n:,} prompts (shards of {a.shard_size:,}), MiniLM real, CLIP tiny random, {os.cpu_count()} CPU cores")
    print(f"local: {local_s:.1f} s = {n / local_s:.1f} prompts/s")
    print(f"ray  : {ray_s:.1f} s = {n / ray_s:.1f} prompts/s (local Ray runtime, start-up included)")
    print(f"ratio ray / local: {local_s / ray_s:.2f} (target at least 0.8); same prompts and MiniLM matrix: {same}")


if __name__ == "__main__":
    main()
