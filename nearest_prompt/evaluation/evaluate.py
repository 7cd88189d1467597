"""Score predictions the way the competition does, side by side with baselines.

Score of one item = cosine similarity between the predicted 384-d vector and
the all-MiniLM-L6-v2 embedding of the true prompt; a set scores the mean.
Everything here takes plain arrays; ``evaluation.run`` wires it to a retriever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nearest_prompt.common.text import dedup_keys, first_clause  # noqa: F401  (re-exported for scripts)
from nearest_prompt.retriever.search import Neighbors
from nearest_prompt.retriever.weighting import Weighting, blend, drop_neighbors

# compose(neighbours, target vectors or None (the composer's own), captions or None) -> MiniLM vectors of the
# composed prompts
Compose = Callable[[Neighbors, "np.ndarray | None", "Sequence[str] | None"], np.ndarray]
COMPOSED = "composed_prompt"

CONSTANT_PROMPT = "All work and no Kaggle makes Jack a dull boy"  # the competition's own example
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def cosine(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [n, d] arrays (0 where a row is all zeros)."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    den = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    return np.where(den > 0, (p * t).sum(1) / np.where(den > 0, den, 1.0), 0.0)


@dataclass
class MethodScores:
    name: str
    scores: np.ndarray
    confidence: np.ndarray | None = None
    note: str = ""

    def summary(self) -> dict[str, Any]:
        s = self.scores
        out: dict[str, Any] = {"n": int(len(s)), "mean": float(s.mean()), "median": float(np.median(s))}
        out.update({f"q{int(q * 100):02d}": float(np.quantile(s, q)) for q in QUANTILES})
        if self.confidence is not None:
            out["confidence"] = confidence_report(self.confidence, s)
        if self.note:
            out["note"] = self.note
        return out


def confidence_report(confidence: np.ndarray, scores: np.ndarray, *, buckets: int = 5) -> dict[str, Any]:
    """How well ``confidence`` predicts the score: Pearson and Spearman r, mean score per quantile bucket."""
    c = np.asarray(confidence, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(c) < 3 or np.ptp(c) == 0 or np.ptp(s) == 0:
        return {"pearson": None, "spearman": None, "buckets": []}
    rank = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)  # noqa: E731
    edges = np.quantile(c, np.linspace(0, 1, buckets + 1))
    which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, buckets - 1)
    table = []
    for b in range(buckets):
        sel = which == b
        if sel.any():
            table.append({"confidence_from": float(edges[b]), "confidence_to": float(edges[b + 1]),
                          "n": int(sel.sum()), "mean_score": float(s[sel].mean())})
    return {"pearson": float(np.corrcoef(c, s)[0, 1]), "spearman": float(np.corrcoef(rank(c), rank(s))[0, 1]),
            "buckets": table}


@dataclass
class EvalReport:
    title: str
    items: list[str]
    methods: list[MethodScores] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, method: MethodScores) -> None:
        self.methods.append(method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "metric": "cosine(predicted vector, all-MiniLM-L6-v2(true prompt)); mean over items",
            "settings": self.settings,
            "summary": {m.name: m.summary() for m in self.methods},
            "items": [
                {"item": item, **{m.name: round(float(m.scores[i]), 6) for m in self.methods},
                 **{f"{m.name}.confidence": round(float(m.confidence[i]), 6)
                    for m in self.methods if m.confidence is not None}}
                for i, item in enumerate(self.items)
            ],
        }

    def table(self) -> str:
        width = max([38, *(len(m.name) + 2 for m in self.methods)])
        head = f"{'method':<{width}}{'n':>6}{'mean':>9}{'median':>9}{'q10':>8}{'q90':>8}{'conf r':>9}"
        rows = [self.title, head, "-" * len(head)]
        for m in self.methods:
            s = m.summary()
            r = s.get("confidence", {}).get("pearson")
            rows.append(f"{m.name:<{width}}{s['n']:>6}{s['mean']:>9.4f}{s['median']:>9.4f}{s['q10']:>8.4f}"
                        f"{s['q90']:>8.4f}{'' if r is None else format(r, '.3f'):>9}")
        return "\n".join(rows)


def baselines(truth: np.ndarray, *, constant: np.ndarray, corpus_mean: np.ndarray) -> list[MethodScores]:
    """The constant-prompt and corpus-mean baselines."""
    n = len(truth)
    return [
        MethodScores("constant_prompt", cosine(np.repeat(constant[None], n, 0), truth),
                     note=f"MiniLM({CONSTANT_PROMPT!r})"),
        MethodScores("corpus_mean", cosine(np.repeat(corpus_mean[None], n, 0), truth),
                     note="normalised mean MiniLM vector of the index"),
    ]


def corpus_mean_vector(minilm: np.ndarray, *, chunk: int = 262_144) -> np.ndarray:
    total = np.zeros(minilm.shape[1], dtype=np.float64)
    for start in range(0, len(minilm), chunk):
        total += np.asarray(minilm[start:start + chunk], dtype=np.float64).sum(0)
    return (total / np.linalg.norm(total)).astype(np.float32)


def neighbour_methods(neighbors: Neighbors, minilm: np.ndarray, truth: np.ndarray,
                      weightings: dict[str, Weighting], *, ks: Sequence[int] | None = None,
                      compose: Compose | None = None) -> list[MethodScores]:
    """top-1 neighbour's prompt, then each weighting (at each k of ``ks``, default the full k), then the
    prompt ``compose`` makes from the neighbours (towards the composer's own target)."""
    top = neighbors.ids[:, 0]
    top_vec = np.where((top >= 0)[:, None], np.asarray(minilm[np.maximum(top, 0)], dtype=np.float32), 0.0)
    out = [MethodScores("top1_prompt", cosine(top_vec, truth), note="MiniLM vector of the nearest prompt")]
    full_k = neighbors.ids.shape[1]
    for k in ks or [full_k]:
        sub = Neighbors(neighbors.ids[:, :k], neighbors.scores[:, :k])
        for name, w in weightings.items():
            pred = blend(sub, minilm, w)
            label = name if k == full_k and not ks else f"{name}@k{k}"
            out.append(MethodScores(label, cosine(pred.vectors, truth), pred.confidence))
    if compose is not None:
        out.append(MethodScores(COMPOSED, cosine(compose(neighbors, None, None), truth),
                                note="MiniLM of the composed prompt (composer)"))
    return out


def exclude_self(neighbors: Neighbors, neighbor_keys: np.ndarray, query_keys: np.ndarray, *, k: int) -> Neighbors:
    """Drop neighbours whose dedup key equals their query's (exact copies of a held-out prompt)."""
    drop = (neighbor_keys == query_keys[:, None]) & neighbors.valid
    return drop_neighbors(neighbors, drop, k=k)


def text_oracle_methods(truth: np.ndarray, query_keys: np.ndarray, *, index: Any, minilm: np.ndarray,
                        row_keys: Any, k: int, weightings: dict[str, Weighting],
                        ks: Sequence[int] | None = None, extra: int = 8,
                        compose: Compose | None = None) -> list[MethodScores]:
    """Query the MiniLM index with each true prompt's own vector, exact copies of it excluded.

    ``row_keys(ids)`` gives the dedup keys of store rows (b"" for -1). The
    scores are the ceiling a perfect image encoder would reach on this corpus.
    """
    from nearest_prompt.retriever.search import search

    nb = search(index, truth, k=min(k + extra, int(index.ntotal)))
    nb = exclude_self(nb, row_keys(nb.ids), query_keys, k=k)
    return neighbour_methods(nb, minilm, truth, weightings, ks=ks, compose=compose)


def text_degraded_methods(truth: np.ndarray, clause_vectors: np.ndarray, query_keys: np.ndarray, *,
                          index: Any, minilm: np.ndarray, row_keys: Any, k: int,
                          weightings: dict[str, Weighting], mix: Sequence[float] = (0.5,),
                          extra: int = 8, clauses: Sequence[str] | None = None,
                          compose: Compose | None = None) -> list[MethodScores]:
    """Query with the MiniLM vector of each prompt's first clause (a plain caption).

    Methods: the clause alone; retrieval (neighbours of the clause, blended);
    ``normalise(a * clause + (1 - a) * retrieval)`` for each ``a`` in ``mix``; and, with ``compose``, the
    prompt composed from the clause (``clauses``, its caption) towards the first mix of the first weighting
    (the composer as a caption refiner). Exact copies of the true prompt are excluded from the neighbours.
    """
    from nearest_prompt.retriever.search import search

    nb = search(index, clause_vectors, k=min(k + extra, int(index.ntotal)))
    nb = exclude_self(nb, row_keys(nb.ids), query_keys, k=k)
    out = [MethodScores("clause_alone", cosine(clause_vectors, truth), note="MiniLM(first clause)")]
    target = None
    for name, w in weightings.items():
        pred = blend(nb, minilm, w)
        out.append(MethodScores(f"retrieval_{name}", cosine(pred.vectors, truth), pred.confidence))
        for a in mix:
            mixed = a * clause_vectors + (1 - a) * pred.vectors
            out.append(MethodScores(f"clause{a:g}+retrieval_{name}", cosine(mixed, truth), pred.confidence))
            if target is None:
                target = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    if compose is not None and target is not None:
        out.append(MethodScores(COMPOSED, cosine(compose(nb, target, clauses), truth),
                                note="MiniLM of the prompt composed from the clause (composer)"))
    return out
