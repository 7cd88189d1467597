"""Predict end to end: images/s with a profile split, vs a naive per-image loop; peak RSS.

    python scripts/bench_predict.py [--images 1000] [--arch ViT-B-32] [--store-rows 100000] [--big 16000]

CLIP: architecture --arch with random weights (speed only), saved and loaded as
local-dir:. The store holds the first --store-rows prompts of the shared
corpus with stand-in text vectors (bench_common) under that CLIP's identity,
so the real image encoder can query it. Images: the 7 competition images
hard-linked to --images files. Ours: the Retriever path in batches of 16,
timed per stage (decode, preprocess, CLIP image encoder, search, blend).
Baseline: one image at a time, numpy brute-force search. Then the
``nearest-prompt predict`` command's peak RSS for --images files, and, with the
tiny CLIP, for --images vs --big generated images (bounded memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from bench_common import FakeClipText, FakeMiniLM  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402

RUNS = Path("runs/bench_predict")


def make_store(clip_dir: Path, rows: int, name: str) -> tuple[Path, object]:
    from nearest_prompt import indexer
    from nearest_prompt.encoders.clip import load_clip, parse_clip_spec

    enc = load_clip(parse_clip_spec(f"local-dir:{clip_dir}"), device="cpu")
    out = RUNS / name
    if not (out / "manifest.json").exists():
        indexer.build([shared_data_dir() / "prompts" / "sd_prompts.parquet"], out,
                      config=indexer.BuildConfig(limit=rows, near_dup_threshold=None, shard_size=100_000,
                                                 batch_size=8192),
                      clip=FakeClipText(info=enc.info), minilm=FakeMiniLM(), progress=False)
    return out, enc


def link_images(n: int, folder: Path) -> list[Path]:
    src = sorted((shared_data_dir() / "eval" / "kaggle_sample" / "images").glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i:05d}.png"
        if not p.exists():
            os.link(src[i % len(src)], p)
        out.append(p)
    return out


def profiled(r, paths: list[Path], k: int, batch: int = 16) -> dict:
    import torch

    from nearest_prompt.encoders.images import load_image
    from nearest_prompt.retriever.weighting import Weighting, blend

    t = dict.fromkeys(("decode", "preprocess", "clip_image_encoder", "search", "blend"), 0.0)
    enc = r.clip
    start = time.perf_counter()
    for s in range(0, len(paths), batch):
        t0 = time.perf_counter()
        ims = [load_image(p) for p in paths[s:s + batch]]
        t1 = time.perf_counter()
        pix = torch.stack([enc.preprocess(im) for im in ims])
        t2 = time.perf_counter()
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(enc.model.encode_image(pix).float(), dim=-1).numpy()
        t3 = time.perf_counter()
        nb = r.search(emb, k=k)
        t4 = time.perf_counter()
        blend(nb, r.store.minilm, Weighting())
        t5 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[key] += dt
    total = time.perf_counter() - start
    return {"images_per_s": len(paths) / total, "seconds": total, "split": {k_: v / total for k_, v in t.items()}}


def naive(r, paths: list[Path], k: int) -> dict:
    import torch
    from PIL import Image

    enc = r.clip
    xb = r.store.indexes['clip'].reconstruct_n(0, r.store.indexes['clip'].ntotal)
    minilm = np.asarray(r.store.minilm, dtype=np.float32)
    start = time.perf_counter()
    for p in paths:
        im = Image.open(p).convert("RGB")
        with torch.inference_mode():
            q = torch.nn.functional.normalize(enc.model.encode_image(enc.preprocess(im)[None]).float(), dim=-1)
        s = xb @ q.numpy()[0]
        top = np.argsort(-s)[:k]
        w = 1 / ((1 - s[top]) ** 6 + 1e-6)
        v = (w[:, None] * minilm[top]).sum(0)
        v /= np.linalg.norm(v)
    total = time.perf_counter() - start
    return {"images_per_s": len(paths) / total, "seconds": total}


def cli_peak_rss(store: Path, folder: Path, out: Path, k: int) -> tuple[float, float]:
    """Run ``nearest-prompt predict`` in a child that reports its own peak RSS (ru_maxrss) on exit."""
    # VmHWM of the child's own address space: ru_maxrss would include the parent's RSS at fork on Linux
    code = ("import sys; from nearest_prompt.cli.main import main; rc = main(sys.argv[1:]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print('PEAK', hwm, file=sys.stderr); sys.exit(rc)")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, "predict", "--index", str(store), str(folder), "--out", str(out),
                        "--k", str(k), "-q"], check=True, capture_output=True, text=True)
    secs = time.perf_counter() - t
    peak = int(next(line.split()[1] for line in p.stderr.splitlines() if line.startswith("PEAK")))
    return peak * 1024, secs


def make_generated(n: int, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        p = folder / f"gen{i:05d}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--store-rows", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--big", type=int, default=16_000)
    ap.add_argument("--rss-only", action="store_true", help="skip the speed comparison")
    a = ap.parse_args()
    import open_clip
    import torch

    from devkit.tiny_clip import make_tiny_clip
    from nearest_prompt.encoders.clip import save_local_dir
    from nearest_prompt.retriever import Retriever

    RUNS.mkdir(parents=True, exist_ok=True)
    clip_dir = RUNS / f"clip-{a.arch}"
    if not (clip_dir / "open_clip_config.json").exists():
        torch.manual_seed(0)
        save_local_dir(open_clip.create_model(a.arch), clip_dir, model_cfg=open_clip.get_model_config(a.arch))
    store, enc = make_store(clip_dir, a.store_rows, f"store-{a.arch}-{a.store_rows}")
    paths = link_images(a.images, RUNS / "images")
    r = Retriever.open(store, clip=enc)
    print(f"{a.images} images (7 competition images repeated), store {r.rows:,} prompts "
          f"({r.store.manifest.index('clip').type}), CLIP {a.arch} random weights, CPU {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, k={a.k}")
    if not a.rss_only:
        ours = profiled(r, paths, a.k)
        base = naive(r, paths[: max(50, a.images // 10)], a.k)
        print(f"ours : {ours['images_per_s']:.1f} images/s; split " +
              ", ".join(f"{k} {v:.1%}" for k, v in ours["split"].items()))
        print(f"naive: {base['images_per_s']:.1f} images/s (one image at a time, numpy brute force; "
              f"{max(50, a.images // 10)} images)")
    peak, secs = cli_peak_rss(store, RUNS / "images", RUNS / "pred.csv", a.k)
    print(f"CLI  : nearest-prompt predict over {a.images} images: {secs:.0f} s, peak RSS {peak / 2**30:.2f} GiB")

    tiny_dir = make_tiny_clip(RUNS / "clip-tiny")
    tiny_store, _ = make_store(tiny_dir, 10_000, "store-tiny-10000")
    make_generated(a.big, RUNS / "gen")
    small = RUNS / "gen_small"
    small.mkdir(exist_ok=True)
    for p in sorted((RUNS / "gen").glob("*.png"))[: a.images]:
        if not (small / p.name).exists():
            os.link(p, small / p.name)
    for folder, n in ((small, a.images), (RUNS / "gen", a.big)):
        peak, secs = cli_peak_rss(tiny_store, folder, RUNS / f"gen{n}.npy", 50)
        print(f"CLI  : tiny CLIP, {n:,} generated images: {secs:.0f} s ({n / secs:.0f} images/s), "
              f"peak RSS {peak / 2**30:.2f} GiB")
    shutil.rmtree(RUNS / "gen_small", ignore_errors=True)


if __name__ == "__main__":
    main()
