"""Choose the composer's defaults on the *tune* half of the text-route split (docs/quality.md, "Composed prompts").

    python scripts/compose_tune.py --index runs/compose/store100k [--n 200] [--start prompt|clause]
                                   [--target-k 10] [--fragments 0] [--neighbors 10] [--rerank]

Text-oracle route, as ``nearest-prompt eval --text-oracle`` runs it: each held-out prompt's MiniLM vector
queries the MiniLM index, exact copies excluded; the composer (best mode, minilm objective) composes
from the neighbours towards the blend of the top ``--target-k``. Prints top-1, the k=100 vector and the
composed prompt's scores. ``--rerank`` also scores the neighbour prompt (of the top ``--neighbors``)
nearest to the target, alone. Needs ``text_route_study.py prepare --split-only`` and a store built from
its pool.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from text_route_report import OUT  # noqa: E402

from nearest_prompt.common.text import dedup_keys  # noqa: E402
from nearest_prompt.composer import ComposeOptions, Composer  # noqa: E402
from nearest_prompt.evaluation.evaluate import cosine, exclude_self  # noqa: E402
from nearest_prompt.retriever import Neighbors, Retriever, Weighting, blend  # noqa: E402
from nearest_prompt.retriever.search import search  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--start", default="prompt")
    ap.add_argument("--target-k", type=int, default=10)
    ap.add_argument("--fragments", type=int, default=0)
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--rerank", action="store_true")
    a = ap.parse_args()
    r = Retriever.open(a.index)
    held = pq.read_table(OUT / "heldout_tune.parquet").column("prompt").to_pylist()[:a.n]
    truth = r.embed_texts(held, space="minilm")
    nb = search(r.store.indexes["minilm"], truth, k=108)
    keys = np.where(nb.ids >= 0, dedup_keys(r.prompts(nb.ids.ravel())).reshape(nb.ids.shape), b"")
    nb = exclude_self(nb, keys, dedup_keys(held), k=100)
    vector = blend(nb, r.store.minilm, Weighting()).vectors
    target = blend(Neighbors(nb.ids[:, :a.target_k], nb.scores[:, :a.target_k]), r.store.minilm, Weighting()).vectors
    top1 = np.asarray(r.store.minilm[nb.ids[:, 0]], dtype=np.float32)
    options = ComposeOptions(start=a.start, target_k=a.target_k, fragments=a.fragments, neighbors=a.neighbors)
    t = time.perf_counter()
    comps = Composer(r, options=options).compose(target, neighbors=nb)
    seconds = time.perf_counter() - t
    composed = np.stack([c.minilm for c in comps])
    print(f"tune n={len(held)} start={a.start} target_k={a.target_k} fragments={a.fragments} neighbors={a.neighbors}: "
          f"top1 {cosine(top1, truth).mean():.4f}  vector(k=100) {cosine(vector, truth).mean():.4f}  "
          f"composed {cosine(composed, truth).mean():.4f}  (objective {np.mean([c.score for c in comps]):.4f}, "
          f"{np.mean([len(c.components) for c in comps]):.2f} parts, {seconds:.0f} s)", flush=True)
    if a.rerank:
        ids = nb.ids[:, :a.neighbors]
        vecs = np.asarray(r.store.minilm[np.maximum(ids, 0).ravel()], dtype=np.float32).reshape(*ids.shape, -1)
        chosen = ids[np.arange(len(ids)), np.argmax(np.einsum("nkd,nd->nk", vecs, target), axis=1)]
        print(f"  rerank: the neighbour prompt of the top {a.neighbors} nearest to the target, alone: "
              f"{cosine(np.asarray(r.store.minilm[chosen], dtype=np.float32), truth).mean():.4f}")


if __name__ == "__main__":
    main()
