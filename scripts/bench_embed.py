"""Embedding throughput: our build path against the libraries' own calls over the same prompts.

    python scripts/bench_embed.py [--n 512] [--clip-arch ViT-B-32] [--device cpu|cuda] [--batch-size 64]

MiniLM (the real all-MiniLM-L6-v2): ``indexer.shards.embed_in_shards`` (the build's path: shards, each
embedded in batches sorted by length) against one ``SentenceTransformer.encode`` call over all prompts
(which sorts them by length itself), and against a loop of ``encode`` calls of one batch each in corpus
order. CLIP text (architecture --clip-arch, random weights: speed only): our ``ClipEncoder`` inside
``embed_in_shards`` (length-sorted batches, each trimmed to its longest prompt) against a plain open_clip
``tokenizer`` + ``encode_text`` loop (open_clip has no call over many batches). The outputs are compared,
so each speed-up is for the same numbers. Prompts: a random sample of the shared corpus (seed 0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # bench_common; devkit

from devkit.paths import shared_data_dir  # noqa: E402
from nearest_prompt.indexer.shards import embed_in_shards  # noqa: E402


def sample_prompts(n: int) -> list[str]:
    t = pq.read_table(shared_data_dir() / "prompts" / "sd_prompts.parquet", columns=["prompt"])
    idx = np.random.default_rng(0).choice(t.num_rows, n, replace=False)
    return t.column("prompt").take(idx).to_pylist()


def ours(texts, encode, dim, batch, dtype=np.float32) -> tuple[float, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        paths = embed_in_shards(texts, encode=encode, dim=dim, folder=Path(tmp), shard_size=len(texts),
                                batch_size=batch, dtype=dtype, desc="", progress=False)
        dt = time.perf_counter() - t
        return dt, np.load(paths[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    import open_clip
    import torch

    from nearest_prompt.encoders.clip import ClipEncoder, ClipInfo
    from nearest_prompt.encoders.minilm import load_minilm

    texts = sample_prompts(a.n)
    b = a.batch_size
    rows = []
    m = load_minilm(device=a.device)
    m.encode(texts[:8])  # warm up
    t = time.perf_counter()
    plain = m.model.encode(texts, batch_size=b, normalize_embeddings=True, show_progress_bar=False)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    loop = np.concatenate([m.model.encode(texts[i:i + b], batch_size=b, normalize_embeddings=True)
                           for i in range(0, len(texts), b)])
    t_loop = time.perf_counter() - t
    t_ours, got = ours(texts, lambda x: m.encode(x, batch_size=len(x)), 384, b)
    rows.append(("MiniLM", "one SentenceTransformer.encode call (baseline: its own length sort)", a.n / t_plain, 0.0))
    rows.append(("MiniLM", "SentenceTransformer.encode per batch, corpus order", a.n / t_loop,
                 float(np.abs(loop - plain).max())))
    rows.append(("MiniLM", "ours (embed_in_shards)", a.n / t_ours, float(np.abs(got - plain).max())))

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(a.clip_arch, device=a.device)
    model.eval()
    tok = open_clip.get_tokenizer(a.clip_arch)
    cfg = open_clip.get_model_config(a.clip_arch)
    info = ClipInfo(model=a.clip_arch, pretrained=None, embed_dim=cfg["embed_dim"], context_length=77,
                    model_cfg=cfg, preprocess={}, weights=None)
    enc = ClipEncoder(model, tok, preprocess, info, a.device)
    autocast = enc._autocast
    with torch.inference_mode(), autocast():
        model.encode_text(tok(texts[:8]).to(a.device))
        t = time.perf_counter()
        plain = []
        for i in range(0, len(texts), b):
            e = model.encode_text(tok(texts[i:i + b]).to(a.device)).float()
            plain.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
        plain = np.concatenate(plain)
        t_plain = time.perf_counter() - t
    t_ours, got = ours(texts, lambda x: enc.encode_text(x, batch_size=len(x)), info.embed_dim, b)
    rows.append((f"CLIP text {a.clip_arch}", "open_clip encode_text per batch (baseline)", a.n / t_plain, 0.0))
    rows.append((f"CLIP text {a.clip_arch}", "ours (sorted + trimmed)", a.n / t_ours, float(np.abs(got - plain).max())))

    print(f"{a.n} prompts, batch {b}, device {a.device}, torch threads {torch.get_num_threads()}")
    print("| model | path | prompts/s | vs the baseline | max abs diff vs the baseline |")
    print("|---|---|---|---|---|")
    base = {}
    for model_name, path, rate, diff in rows:
        base.setdefault(model_name, rate)
        print(f"| {model_name} | {path} | {rate:,.1f} | {rate / base[model_name]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
