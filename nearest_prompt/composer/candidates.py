"""A query's candidates for the composer: the normalised clauses of its neighbour prompts and the
vocabulary fragments nearest to its target, with their vectors in the objective's space and CLIP token
counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nearest_prompt.common.text import clean_prompt, split_fragments
from nearest_prompt.retriever import Neighbors


@dataclass
class Pool:
    """One query's candidates: texts, sources, unit vectors in the objective's space, CLIP token counts,
    and which of them may start the prompt (neighbours' first clauses)."""

    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    tokens: np.ndarray | None = None
    starts: list[int] = field(default_factory=list)
    top_prompt: str = ""  # the top neighbour's prompt, and the rows of its clauses
    top_rows: list[int] = field(default_factory=list)


def gather(r: Any, targets: np.ndarray, neighbors: Neighbors, *, neighbors_used: int, fragments: int, space: str,
           encode: Callable[[Sequence[str]], np.ndarray]) -> list[Pool]:
    """One ``Pool`` per query: the clauses of its top ``neighbors_used`` neighbour prompts (``r``: a
    ``Retriever``), then the ``fragments`` vocabulary fragments nearest to its target in ``space``; vectors
    from the vocabulary where it has the text, else from ``encode`` (one batched call)."""
    n = len(targets)
    ids = neighbors.ids[:, :neighbors_used]
    texts = [t or "" for t in r.prompts(ids.ravel())]
    width = max(ids.shape[1], 1)
    clauses, parents = split_fragments(texts)
    pools = [Pool() for _ in range(n)]
    seen: list[dict[str, int]] = [{} for _ in range(n)]
    first_of_prompt = np.r_[True, parents[1:] != parents[:-1]] if len(parents) else np.zeros(0, bool)
    for text, parent, first in zip(clauses.to_pylist(), parents.tolist(), first_of_prompt.tolist()):
        q = parent // width
        row = seen[q].get(text)
        if row is None:
            row = seen[q][text] = len(pools[q].texts)
            pools[q].texts.append(text)
            pools[q].sources.append("neighbour")
        if first and row not in pools[q].starts:
            pools[q].starts.append(row)
        if parent % width == 0:
            pools[q].top_rows.append(row)
    for q in range(n):
        pools[q].top_prompt = (clean_prompt(texts[q * width]) or "") if ids.shape[1] else ""
    vocab = r.store.fragments
    if vocab is not None and fragments:
        near = r.search_fragments(targets, k=fragments, space=space)
        for q in range(n):
            for text in vocab.texts(near.ids[q][near.ids[q] >= 0]):
                if text not in seen[q]:
                    seen[q][text] = len(pools[q].texts)
                    pools[q].texts.append(text)
                    pools[q].sources.append("fragment")
    _embed(r, pools, space=space, encode=encode)
    return pools


def _embed(r: Any, pools: list[Pool], *, space: str, encode: Callable[[Sequence[str]], np.ndarray]) -> None:
    """Vectors (from the vocabulary where it has the text, else one batched encoder call) and tokens."""
    vocab = r.store.fragments
    lookup = vocab.ids_by_text if vocab is not None else {}
    missing = sorted({t for p in pools for t in p.texts if t not in lookup})
    encoded = encode(missing)
    by_text = dict(zip(missing, encoded))
    all_texts = sorted({t for p in pools for t in p.texts})
    tokens = dict(zip(all_texts, r.count_tokens(all_texts).tolist())) if all_texts else {}
    dim = encoded.shape[1]
    for p in pools:
        vocab_rows = [lookup.get(t, -1) for t in p.texts]
        vectors = np.zeros((len(p.texts), dim), dtype=np.float32)
        have = [i for i, row in enumerate(vocab_rows) if row >= 0]
        if have:
            rows = np.array([vocab_rows[i] for i in have])
            order = np.argsort(rows)  # memory-mapped rows read in file order
            vectors[np.array(have)[order]] = np.asarray(vocab.vectors[space][rows[order]], dtype=np.float32)
        for i, t in enumerate(p.texts):
            if vocab_rows[i] < 0:
                vectors[i] = by_text[t]
        p.vectors = vectors
        p.tokens = np.array([tokens[t] for t in p.texts], dtype=np.int64)
