"""Tables for the text routes (text oracle, text degraded), tuning and confidence.

Run through ``python scripts/text_route_study.py report`` after ``prepare``.
The corpus of size N is the first N rows of the random pool; near-dedup is
applied to it at each threshold; k, p and T are chosen on the "tune" half
of the held-out prompts and reported on the "test" half.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from nearest_prompt.encoders.minilm import load_minilm
from nearest_prompt.evaluation.evaluate import (
    CONSTANT_PROMPT,
    confidence_report,
    corpus_mean_vector,
    cosine,
    dedup_keys,
    exclude_self,
    first_clause,
)
from nearest_prompt.indexer.dedup import keep_from_pairs, near_duplicate_pairs
from nearest_prompt.indexer.shards import ShardedMatrix, embed_in_shards
from nearest_prompt.retriever import Neighbors, Weighting, blend
from nearest_prompt.retriever.search import search

THRESHOLDS = (None, 0.98, 0.95, 0.90)
DEFAULT_THRESHOLD = 0.95
KS = (10, 25, 50, 100, 200)
POWERS = (2, 4, 6, 8, 12)
TEMPS = (0.01, 0.02, 0.05, 0.1)
MIXES = (0.3, 0.5, 0.7)
KMAX = max(KS)
OUT = Path(os.environ.get("NP_RUNS", "runs")) / "text_study"  # written by text_route_study.py prepare


def is_test(prompt: str) -> bool:
    """The held-out prompt's half: "test" (report) when True, "tune" (choose) when False, by hash."""
    return hashlib.blake2b(prompt.encode(), digest_size=1).digest()[0] % 2 == 1


def load_split():
    held = pq.read_table(OUT / "heldout.parquet")
    pool = pq.read_table(OUT / "pool.parquet")
    held_vec = np.asarray(ShardedMatrix(sorted((OUT / "heldout_minilm").glob("*.npy")))[:], dtype=np.float32)
    pool_vec = ShardedMatrix(sorted((OUT / "pool_minilm").glob("*.npy")))
    return held, pool, held_vec, pool_vec



def grid() -> dict[str, tuple[int, Weighting]]:
    g = {f"power p={p} k={k}": (k, Weighting(power=p)) for k in KS for p in POWERS}
    g.update({f"softmax T={t} k={k}": (k, Weighting(scheme="softmax", temperature=t)) for k in KS for t in TEMPS})
    return g


def score_grid(nb: Neighbors, minilm: np.ndarray, truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, (k, w) in grid().items():
        pred = blend(Neighbors(nb.ids[:, :k], nb.scores[:, :k]), minilm, w)
        out[name] = (cosine(pred.vectors, truth), pred.confidence, pred.vectors)
    return out


def report(sizes: list[int]) -> None:
    t0 = time.time()
    held, pool, held_vec, pool_vec = load_split()
    held_prompts = held.column("prompt").to_pylist()
    groups = np.asarray(held.column("group").to_pylist())
    pool_prompts = pool.column("prompt").to_pylist()
    minilm = load_minilm()
    clauses = [first_clause(p) for p in held_prompts]
    clause_vec = np.asarray(ShardedMatrix(embed_in_shards(
        clauses, encode=lambda b: minilm.encode(b, batch_size=len(b)), dim=384, folder=OUT / "clause_minilm",
        shard_size=5000, batch_size=64, dtype=np.float32, desc="clauses", progress=False))[:], np.float32)
    constant = minilm.encode([CONSTANT_PROMPT])[0]
    test = np.array([is_test(p) for p in held_prompts])
    tune = ~test
    held_keys = dedup_keys(held_prompts)
    n_pool = len(pool_vec)
    sizes = [s for s in sizes if s <= n_pool]
    pool_all = np.asarray(pool_vec[:max(sizes)], dtype=np.float32)
    pool_keys = dedup_keys(pool_prompts[:max(sizes)])
    results: dict = {"sizes": sizes, "held_out": {g: int((groups == g).sum()) for g in np.unique(groups)},
                     "test_n": int(test.sum()), "tune_n": int(tune.sum()), "runs": []}
    for n in sizes:
        base = pool_all[:n]
        lo, hi, sims = near_duplicate_pairs(base, threshold=min(t for t in THRESHOLDS if t) - 1e-6)
        for thr in THRESHOLDS:
            if n != max(sizes) and thr not in (DEFAULT_THRESHOLD,):
                continue  # thresholds are compared at the largest size only
            keep = np.ones(n, bool) if thr is None else keep_from_pairs(n, lo, hi, sims, threshold=thr)
            rows = np.flatnonzero(keep)
            vecs = base[rows]
            keys = pool_keys[rows]
            index = faiss.IndexFlatIP(384)
            index.add(vecs)
            row_keys = lambda ids, keys=keys: np.where(ids >= 0, keys[np.maximum(ids, 0)], b"")  # noqa: E731
            mean_vec = corpus_mean_vector(vecs)
            run = {"size": n, "threshold": thr, "rows": int(len(rows)), "routes": {}}
            for route, queries in (("oracle", held_vec), ("degraded", clause_vec)):
                nb = search(index, queries, k=KMAX + 8)
                nb = exclude_self(nb, row_keys(nb.ids), held_keys, k=KMAX)
                scores = score_grid(nb, vecs, held_vec)
                best = max(scores, key=lambda name: scores[name][0][tune].mean())
                top1 = cosine(np.where((nb.ids[:, :1] >= 0), vecs[np.maximum(nb.ids[:, 0], 0)], 0), held_vec)
                default = "power p=6 k=100"
                r = {
                    "constant_prompt": float(cosine(np.repeat(constant[None], len(held_vec), 0), held_vec)[test].mean()),
                    "corpus_mean": float(cosine(np.repeat(mean_vec[None], len(held_vec), 0), held_vec)[test].mean()),
                    "top1_prompt": float(top1[test].mean()),
                    "default (power p=6 k=100)": float(scores[default][0][test].mean()),
                    "tuned": {"choice": best, "tune": float(scores[best][0][tune].mean()),
                              "test": float(scores[best][0][test].mean())},
                    "by_group_default": {g: float(scores[default][0][test & (groups == g)].mean())
                                         for g in np.unique(groups) if (test & (groups == g)).any()},
                    "confidence_default": confidence_report(scores[default][1][test], scores[default][0][test]),
                    "top_tune": sorted(((float(v[0][tune].mean()), name, float(v[0][test].mean()))
                                        for name, v in scores.items()), reverse=True)[:5],
                }
                if route == "degraded":
                    r["clause_alone"] = float(cosine(clause_vec, held_vec)[test].mean())
                    mixes = {}
                    for a in MIXES:
                        for name in (default, best):
                            mixed = a * clause_vec + (1 - a) * scores[name][2]
                            mixes[f"clause {a} + {name}"] = cosine(mixed, held_vec)
                    best_mix = max(mixes, key=lambda m: mixes[m][tune].mean())
                    r["mix"] = {"choice": best_mix, "tune": float(mixes[best_mix][tune].mean()),
                                "test": float(mixes[best_mix][test].mean())}
                run["routes"][route] = r
            results["runs"].append(run)
            print(f"N={n} thr={thr} rows={len(rows)} oracle default={run['routes']['oracle']['default (power p=6 k=100)']:.4f} "
                  f"tuned={run['routes']['oracle']['tuned']} degraded clause={run['routes']['degraded']['clause_alone']:.4f} "
                  f"mix={run['routes']['degraded']['mix']}  [{time.time() - t0:.0f}s]", flush=True)
    (OUT / "report.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT / 'report.json'}")
