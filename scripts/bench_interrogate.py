"""How long ``interrogate`` takes per image on CPU, beside plain retrieval (``query``) in the same run.

    python scripts/bench_interrogate.py --index runs/compose/store_b32_5k [--images DIR] [--repeat 3]

The store's CLIP model is loaded once (as the service and a long ``interrogate`` run keep it); then each
image of the folder (default: the 7 competition images) goes through one call at a time, for each mode and
objective, after one warm-up call. Per-image seconds: median and max over images x repeats. The baseline
row is the retrieval that every mode starts from (embed the image, search its top 10). With random CLIP
weights these are speed figures only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.paths import shared_data_dir  # noqa: E402
from nearest_prompt.composer import ComposeOptions, Composer  # noqa: E402
from nearest_prompt.encoders.images import load_image  # noqa: E402
from nearest_prompt.retriever import Retriever  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--images", default=str(shared_data_dir() / "eval" / "kaggle_sample" / "images"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    t = time.perf_counter()
    r = Retriever.open(a.index)
    r.clip, r.minilm  # noqa: B018 - loaded before timing
    load_s = time.perf_counter() - t
    images = [load_image(e.path) for e in sorted(os.scandir(a.images), key=lambda e: e.name) if e.is_file()]
    print(f"store {a.index}: {r.rows} prompts, {len(r.store.fragments or [])} fragments, CLIP {r.store.clip_info.model} "
          f"(dim {r.store.clip_info.embed_dim}); models loaded in {load_s:.1f} s; {len(images)} images x {a.repeat}")

    def retrieval(im):
        r.search(r.clip.encode_images([im]), k=10)

    runs = [("retrieval only (embed + top-10 search)", retrieval)]
    for mode in ("best", "fast", "classic"):
        for objective in ("minilm", "clip"):
            c = Composer(r, options=ComposeOptions(mode=mode, objective=objective))
            runs.append((f"interrogate --mode {mode} --objective {objective}",
                         lambda im, c=c: c.interrogate(r.clip.encode_images([im]))))
    print(f"{'what':<48}{'median s':>10}{'max s':>9}{'images/s':>10}")
    for name, fn in runs:
        fn(images[0])  # warm-up
        times = []
        for _ in range(a.repeat):
            for im in images:
                t = time.perf_counter()
                fn(im)
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{name:<48}{med:>10.3f}{max(times):>9.3f}{1 / med:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
