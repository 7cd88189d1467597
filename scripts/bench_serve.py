"""The service against the batch job: the same images through ``nearest-prompt predict`` and through a
running ``nearest-prompt serve`` with concurrent clients on loopback, in one run.

    python scripts/bench_serve.py [--images 200] [--clients 16] [--arch ViT-B-32] [--store-rows 20000]

CLIP: --arch with random weights (speed only), saved as local-dir:. Store: the first --store-rows
prompts of the shared corpus, real MiniLM vectors, stand-in CLIP text vectors under that CLIP's
identity (only the image side is timed). Images: the 7 competition images hard-linked to --images files.
Prints images/s of (a) the predict command (whole process: start-up, model load, images) and of its
steady state (the same Retriever calls in one process after loading, batches of 16), (b) the service
(--clients threads, one image per /predict request, after start-up), their ratios, the service's
p50/p95/p99 latency, and the p50 latency of one /query at a time on an idle server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from bench_common import FakeClipText  # noqa: E402
from bench_predict import link_images  # noqa: E402

from devkit.paths import shared_data_dir  # noqa: E402
from devkit.serve import Server  # noqa: E402

RUNS = Path("runs/bench_serve")
NP = str(Path(sys.executable).parent / "nearest-prompt")


def clip_dir(arch: str) -> Path:
    import open_clip

    from nearest_prompt.encoders.clip import save_local_dir

    folder = RUNS / f"clip_{arch}"
    if not (folder / "open_clip_config.json").exists():
        model = open_clip.create_model(arch, pretrained=None)
        save_local_dir(model, folder, model_cfg=open_clip.get_model_config(arch), random_weights=True)
    return folder


def make_store(clip: Path, rows: int) -> Path:
    """The first ``rows`` prompts of the shared corpus: the real MiniLM (the server loads it), stand-in
    CLIP text vectors under the random CLIP's identity (only the image side is timed)."""
    from nearest_prompt import indexer
    from nearest_prompt.encoders.clip import load_clip, parse_clip_spec

    out = RUNS / f"store_{clip.name}_{rows}"
    if not (out / "manifest.json").exists():
        info = load_clip(parse_clip_spec(f"local-dir:{clip}"), device="cpu").info
        indexer.build([shared_data_dir() / "prompts" / "sd_prompts.parquet"], out,
                      config=indexer.BuildConfig(limit=rows, near_dup_threshold=None, shard_size=rows),
                      clip=FakeClipText(info=info), progress=False)
    return out


def batch_job(store: Path, images: Path, n: int, k: int) -> tuple[float, float]:
    """(whole-command seconds, steady-state seconds) for n images."""
    out = RUNS / "pred.npy"
    t = time.perf_counter()
    subprocess.run([NP, "predict", "--index", str(store), str(images), "--out", str(out), "--k", str(k), "-q"],
                   check=True, stderr=subprocess.DEVNULL)
    whole = time.perf_counter() - t
    from nearest_prompt.retriever import Retriever

    r = Retriever.open(store)
    r.clip  # noqa: B018 - loaded before timing
    paths = sorted(images.glob("*.png"))[:n]
    t = time.perf_counter()
    emb = r.embed_images(paths, batch_size=16)
    r.predict(emb.vectors, k=k)
    return whole, time.perf_counter() - t


def service(store: Path, paths: list[Path], clients: int, k: int) -> dict:
    log = RUNS / "server.log"
    s = Server(store, "--max-batch", "32", "--max-wait-ms", "10", log=log)
    try:
        blobs = [p.read_bytes() for p in paths]
        with s.client() as c:  # warm-up
            c.post("/predict", files={"image": blobs[0]}, data={"k": str(k)})
        latencies: list[float] = []

        def one(i: int) -> None:
            with s.client() as c:
                for j in range(i, len(blobs), clients):
                    t0 = time.perf_counter()
                    r = c.post("/predict", files={"image": blobs[j]}, data={"k": str(k)})
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t0)

        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
        wall = time.perf_counter() - t
        idle = []
        with s.client() as c:
            for _ in range(20):
                t0 = time.perf_counter()
                c.post("/query", files={"image": blobs[0]}, data={"k": "10"}).raise_for_status()
                idle.append(time.perf_counter() - t0)
        metrics = s.client().get("/metrics").text
        batches = [ln for ln in metrics.splitlines() if ln.startswith("nearest_prompt_batch_size_")]
        count = float(next(ln.split()[-1] for ln in batches if ln.startswith("nearest_prompt_batch_size_count")))
        total = float(next(ln.split()[-1] for ln in batches if ln.startswith("nearest_prompt_batch_size_sum")))
    finally:
        s.stop()
    q = statistics.quantiles(latencies, n=100)
    return {"wall": wall, "p50": q[49], "p95": q[94], "p99": q[98], "idle_p50": statistics.median(idle),
            "mean_batch": total / count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--store-rows", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=100)
    a = ap.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    store = make_store(clip_dir(a.arch), a.store_rows)
    paths = link_images(a.images, RUNS / f"images_{a.images}")
    whole, steady = batch_job(store, paths[0].parent, a.images, a.k)
    sv = service(store, paths, a.clients, a.k)
    n = a.images
    print(f"{n} images, CLIP {a.arch} random weights, store {a.store_rows:,} prompts, k={a.k}, "
          f"CPU {os.cpu_count()} cores")
    print(f"batch job, whole command (start-up + model load + images): {whole:.1f} s = {n / whole:.2f} images/s")
    print(f"batch job, steady state (after loading, batches of 16):   {steady:.1f} s = {n / steady:.2f} images/s")
    print(f"service, {a.clients} clients, one image per request:     {sv['wall']:.1f} s = {n / sv['wall']:.2f} images/s "
          f"(mean batch {sv['mean_batch']:.1f} images)")
    print(f"ratio service / batch: {whole / sv['wall']:.2f}x the whole command, {steady / sv['wall']:.2f}x its steady "
          "state (target 0.8x)")
    print(f"service latency under load: p50 {sv['p50'] * 1000:.0f} ms, p95 {sv['p95'] * 1000:.0f} ms, "
          f"p99 {sv['p99'] * 1000:.0f} ms; idle single /query p50 {sv['idle_p50'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
