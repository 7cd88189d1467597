"""The service against the batch job: the same work through a running ``nearest-prompt serve`` with
concurrent clients on loopback and through the library in one process, in one run.

    python scripts/bench_serve.py [--images 200] [--clients 16] [--arch ViT-B-32] [--store-rows 5000]
                                  [--mix predict:0.6,caption:0.2,interrogate:0.2]

CLIP: --arch with random weights (speed only), saved as local-dir:. Store: the first --store-rows prompts
of the shared corpus, real MiniLM vectors, stand-in CLIP text vectors under that CLIP's identity. Images:
the 7 competition images hard-linked to --images files, one per request; --mix says which requests: a
plain /predict, a /predict with a caption (fused through the CLIP text encoder), an /interrogate (best
mode). Prints requests/s of the service and of the same work in one process after loading (and, for
plain predicts only, of the whole predict command), their ratio, p50/p95/p99 latency per kind of request,
and the p50 of one /query at a time on an idle server.
"""

from __future__ import annotations

import argparse
import json
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


KINDS = ("predict", "caption", "interrogate")


def plan(n: int, mix: dict[str, float]) -> list[str]:
    """``n`` request kinds in a fixed interleaved order with the shares of ``mix``."""
    out, acc = [], dict.fromkeys(mix, 0.0)
    for _ in range(n):
        for kind in mix:
            acc[kind] += mix[kind]
        kind = max(acc, key=acc.get)
        acc[kind] -= 1
        out.append(kind)
    return out


def captions_for(n: int) -> list[str]:
    import pyarrow.parquet as pq

    col = pq.ParquetFile(shared_data_dir() / "prompts" / "sd_prompts.parquet").read_row_group(1, columns=["prompt"])
    return [t.split(",")[0][:120] for t in col.column(0).slice(0, n).to_pylist()]


def batch_mixed(store: Path, paths: list[Path], kinds: list[str], caps: list[str], k: int) -> float:
    """Seconds for the same work in one process after loading: predict, predict with captions, interrogate."""
    from nearest_prompt.composer import Composer
    from nearest_prompt.retriever import Retriever

    r = Retriever.open(store)
    r.clip, r.minilm  # noqa: B018 - loaded before timing
    composer = Composer(r)
    t = time.perf_counter()
    for kind in KINDS:
        sel = [i for i, x in enumerate(kinds) if x == kind]
        if not sel:
            continue
        emb = r.embed_images([paths[i] for i in sel], batch_size=16)
        if kind == "predict":
            r.predict(emb.vectors, k=k)
        elif kind == "caption":
            r.predict(emb.vectors, k=k, captions=[caps[i] for i in sel])
        else:
            for s in range(0, len(sel), 64):
                composer.interrogate(emb.vectors[s:s + 64])
    return time.perf_counter() - t


def service(store: Path, paths: list[Path], kinds: list[str], caps: list[str], clients: int, k: int) -> dict:
    s = Server(store, "--max-batch", "32", "--max-wait-ms", "10", log=RUNS / "server.log")
    try:
        blobs = [p.read_bytes() for p in paths]

        def call(c, i: int):
            image = {"image": blobs[i]}
            if kinds[i] == "predict":
                return c.post("/predict", files=image, data={"k": str(k)})
            if kinds[i] == "caption":
                return c.post("/predict", files=image, data={"k": str(k), "captions": json.dumps([caps[i]])})
            return c.post("/interrogate", files=image, data={"k": "10"})

        with s.client() as c:  # warm every path
            for i in range(min(len(blobs), 3 * len(KINDS))):
                call(c, i).raise_for_status()
        latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}

        def one(w: int) -> None:
            with s.client() as c:
                for i in range(w, len(blobs), clients):
                    t0 = time.perf_counter()
                    call(c, i).raise_for_status()
                    latencies[kinds[i]].append(time.perf_counter() - t0)

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
        m = s.metrics()
        count = m[("nearest_prompt_forward_pass_size_count", (("model", "clip"),))]
        total = m[("nearest_prompt_forward_pass_size_sum", (("model", "clip"),))]
    finally:
        s.stop()
    every = [x for v in latencies.values() for x in v]
    return {"wall": wall, "idle_p50": statistics.median(idle), "mean_pass": total / count,
            "latency": {kind: _quantiles(v) for kind, v in {**latencies, "all": every}.items() if len(v) > 1}}


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49], q[94], q[98]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--store-rows", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--mix", default="predict:1",
                    help="request kinds and their shares, e.g. predict:0.6,caption:0.2,interrogate:0.2")
    a = ap.parse_args()
    mix = {kind: float(share) for kind, share in (part.split(":") for part in a.mix.split(","))}
    if set(mix) - set(KINDS):
        raise SystemExit(f"--mix takes {', '.join(KINDS)}")
    RUNS.mkdir(parents=True, exist_ok=True)
    store = make_store(clip_dir(a.arch), a.store_rows)
    paths = link_images(a.images, RUNS / f"images_{a.images}")
    kinds, caps = plan(a.images, {k: v / sum(mix.values()) for k, v in mix.items()}), captions_for(a.images)
    n = a.images
    print(f"{n} requests ({', '.join(f'{kinds.count(k)} {k}' for k in KINDS if kinds.count(k))}), CLIP {a.arch} "
          f"random weights, store {a.store_rows:,} prompts, k={a.k}, {a.clients} clients, CPU {os.cpu_count()} cores")
    if set(kinds) == {"predict"}:
        whole, _ = batch_job(store, paths[0].parent, n, a.k)
        print(f"batch job, whole command (start-up + model load + images): {whole:.1f} s = {n / whole:.2f} images/s")
    steady = batch_mixed(store, paths, kinds, caps, a.k)
    sv = service(store, paths, kinds, caps, a.clients, a.k)
    print(f"batch job, steady state (the same work in one process after loading): {steady:.1f} s = "
          f"{n / steady:.2f} requests/s")
    print(f"service, one image per request: {sv['wall']:.1f} s = {n / sv['wall']:.2f} requests/s "
          f"(mean CLIP pass {sv['mean_pass']:.1f} items)")
    print(f"ratio service / batch steady state: {steady / sv['wall']:.2f}x")
    print("| requests | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|")
    for kind, (p50, p95, p99) in sv["latency"].items():
        print(f"| {kind} | {p50 * 1000:.0f} | {p95 * 1000:.0f} | {p99 * 1000:.0f} |")
    print(f"idle server, one /query at a time: p50 {sv['idle_p50'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
