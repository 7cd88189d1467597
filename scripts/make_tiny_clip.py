"""Write a tiny random-weights open_clip model as a local-dir: folder (offline demo and tests).

    python scripts/make_tiny_clip.py OUT_DIR [--seed 0]

Its neighbours are meaningless: it exists so that the pipeline runs offline.
"""

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.tiny_clip import make_tiny_clip  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_tiny_clip(a.out, seed=a.seed))
