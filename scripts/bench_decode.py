"""Image decoding throughput in threads: one lock around every decode (how a process-wide limit had to be
guarded while each call set its own) against ``load_image`` as it is (no shared state), 1 and 4 threads.

    python scripts/bench_decode.py [--images 224] [--threads 1,4] [--rounds 3]

Images: the 7 competition PNGs (512x512) repeated, as bytes in memory; each is decoded to RGB with the
decompression-bomb check at the default limit. Prints the median of ``--rounds`` runs per row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.paths import shared_data_dir  # noqa: E402
from nearest_prompt.encoders.images import load_image  # noqa: E402

LOCK = threading.Lock()


def locked(data: bytes):
    with LOCK:
        return load_image(data)


def rate(decode, blobs: list[bytes], threads: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode, blobs))
        times.append(time.perf_counter() - t)
    return len(blobs) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=224)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    files = sorted((shared_data_dir() / "eval" / "kaggle_sample" / "images").glob("*.png"))
    blobs = [files[i % len(files)].read_bytes() for i in range(a.images)]
    load_image(blobs[0])  # warm up
    import os

    print(f"{a.images} images (512x512 PNG), {os.cpu_count()} cores, median of {a.rounds} rounds")
    print("| decoding | threads | images/s |")
    print("|---|---|---|")
    for threads in (int(x) for x in a.threads.split(",")):
        for name, fn in (("one lock around every decode (baseline)", locked), ("load_image, no shared state", load_image)):
            print(f"| {name} | {threads} | {rate(fn, blobs, threads, a.rounds):,.1f} |")


if __name__ == "__main__":
    main()
