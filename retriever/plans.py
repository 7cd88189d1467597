"""Search over a store's CLIP spaces: one space, a cascade, or a fusion (``SearchPlan``), on plain arrays.

* ``space``: the top k of one space.
* ``cascade A:N,B``: the top N of space A, scored again exactly in space B (from B's stored vectors) and cut to
  the best k: a large model's wide net, a second model's judgement (the competition's strongest retrieval
  searched CLIP ViT-bigG-14 and re-scored its top 60 with ViT-H-14).
* ``fuse A,B``: the union of each space's top k, every row of it scored exactly in every fused space, and the
  weighted sum of those scores (weights scaled to sum to 1, so a fused score stays a cosine the weightings
  understand). A row an image space does not hold (its prompt has no image) scores 0 there.
* ``min_score``: rows whose final score is below it are dropped (their places padded with -1).

Each space is searched with the query embedded by that space's own model (``queries`` maps space names to
vectors); the filter and removed rows apply in every space, and an image space returns only the rows it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from nearest_prompt.common.errors import InputError
from nearest_prompt.index_store.refine import exact_scores

from .search import Neighbors

Searcher = Callable[[str, np.ndarray, int], Neighbors]  # (space, queries, k) -> the top k, filtered


@dataclass(frozen=True)
class SearchPlan:
    """Which spaces a search uses and how it combines them (see the module). ``space`` None: the store's
    primary CLIP space."""

    space: str | None = None
    cascade: tuple[str, int, str] | None = None
    fuse: tuple[str, ...] = ()
    fuse_weights: tuple[float, ...] = ()
    min_score: float | None = None

    @classmethod
    def parse(cls, *, space: str | None = None, cascade: str | None = None, fuse: str | None = None,
              fuse_weights: str | list[float] | tuple[float, ...] | None = None,
              min_score: float | None = None) -> SearchPlan:
        """A plan from the texts a user types: ``cascade`` "A:N,B", ``fuse`` "A,B" (two or more spaces),
        ``fuse_weights`` "0.7,0.3" (or numbers), one weight per fused space."""
        given = [name for name, value in (("space", space), ("cascade", cascade), ("fuse", fuse)) if value]
        if len(given) > 1:
            raise InputError(f"give one of space, cascade and fuse (got {', '.join(given)})", param=given[1])
        plan_cascade = _parse_cascade(cascade) if cascade else None
        spaces = tuple(s.strip() for s in fuse.split(",")) if fuse else ()
        if fuse and (len(spaces) < 2 or not all(spaces) or len(set(spaces)) != len(spaces)):
            raise InputError(f"fuse: {fuse!r}: name two or more different spaces, e.g. clip,big", param="fuse")
        weights: tuple[float, ...] = ()
        if fuse_weights is not None and fuse_weights != "":
            if not fuse:
                raise InputError("fuse_weights is for fuse only", param="fuse_weights")
            weights = _parse_weights(fuse_weights, len(spaces))
        if min_score is not None and not (isinstance(min_score, (int, float)) and -1.0 <= min_score <= 1.0):
            raise InputError(f"min_score must be a cosine in [-1, 1], got {min_score!r}", param="min_score")
        return cls(space=space or None, cascade=plan_cascade, fuse=spaces, fuse_weights=weights,
                   min_score=None if min_score is None else float(min_score))

    def spaces(self, primary: str) -> list[str]:
        """The spaces the plan searches or scores, in order (their queries are needed)."""
        if self.cascade:
            return list(dict.fromkeys((self.cascade[0], self.cascade[2])))
        if self.fuse:
            return list(self.fuse)
        return [self.space or primary]

    def weights(self) -> np.ndarray:
        w = np.asarray(self.fuse_weights or [1.0] * len(self.fuse), dtype=np.float64)
        return w / w.sum()

    def describe(self, primary: str) -> str:
        """One line: what a report or an answer says the results came from."""
        cut = f", min score {self.min_score:g}" if self.min_score is not None else ""
        if self.cascade:
            a, n, b = self.cascade
            return f"cascade {a}:{n},{b}{cut}"
        if self.fuse:
            return f"fuse {','.join(self.fuse)} (weights {', '.join(f'{w:.3g}' for w in self.weights())}){cut}"
        return f"space {self.space or primary}{cut}"


def _parse_cascade(text: str) -> tuple[str, int, str]:
    head, sep, second = str(text).partition(",")
    first, colon, n = head.partition(":")
    hint = "give cascade as A:N,B (the top N of space A scored again in space B), e.g. big:60,clip"
    if not (sep and colon and first.strip() and second.strip()):
        raise InputError(f"cascade: {text!r}: {hint}", param="cascade")
    try:
        count = int(n)
    except ValueError:
        raise InputError(f"cascade: {n!r} is not a number of candidates; {hint}", param="cascade") from None
    if count < 1:
        raise InputError(f"cascade: N must be at least 1, got {count}", param="cascade")
    return first.strip(), count, second.strip()


def _parse_weights(value: str | list[float] | tuple[float, ...], n: int) -> tuple[float, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        weights = tuple(float(w) for w in parts)
    except (TypeError, ValueError):
        raise InputError(f"fuse_weights: {value!r}: give one number per fused space, e.g. 0.7,0.3",
                         param="fuse_weights") from None
    if len(weights) != n:
        raise InputError(f"fuse_weights: {len(weights)} weights for {n} fused spaces", param="fuse_weights")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise InputError(f"fuse_weights: {value!r}: weights must be non-negative and not all 0",
                         param="fuse_weights")
    return weights


def run_plan(plan: SearchPlan, queries: Mapping[str, np.ndarray], *, k: int, primary: str, search: Searcher,
             vectors: Mapping[str, np.ndarray], members: Mapping[str, np.ndarray]) -> Neighbors:
    """The top ``k`` of ``plan`` for ``queries`` (space -> unit vectors [n, d] in that space's model): ``search``
    runs one space's filtered search, ``vectors`` are the spaces' stored float16 vectors (for exact scores) and
    ``members`` the image spaces' row masks."""
    if plan.cascade:
        a, n, b = plan.cascade
        first = search(a, queries[a], n)
        nb = _rescored(first.ids, [(b, 1.0)], queries, vectors, members, k)
    elif plan.fuse:
        lists = [search(space, queries[space], k).ids for space in plan.fuse]
        nb = _rescored(_union(np.concatenate(lists, axis=1)), list(zip(plan.fuse, plan.weights())), queries, vectors,
                       members, k)
    else:
        space = plan.space or primary
        nb = search(space, queries[space], k)
    return _cut(nb, plan.min_score)


def _rescored(cand: np.ndarray, spaces: list[tuple[str, float]], queries: Mapping[str, np.ndarray],
              vectors: Mapping[str, np.ndarray], members: Mapping[str, np.ndarray], k: int) -> Neighbors:
    """The best ``k`` candidates by the weighted sum of their exact scores in ``spaces``. A row an image space
    does not hold scores 0 there; in a cascade (one space) it is dropped."""
    total = np.zeros(cand.shape, dtype=np.float64)
    for space, weight in spaces:
        scores = exact_scores(vectors[space], queries[space], cand).astype(np.float64)
        held = members.get(space)
        if held is not None:
            outside = (cand >= 0) & ~held[np.maximum(cand, 0)]
            scores[outside] = -np.inf if len(spaces) == 1 else 0.0
        total += weight * scores
    total[cand < 0] = -np.inf
    if total.shape[1] < k:
        total = np.pad(total, ((0, 0), (0, k - total.shape[1])), constant_values=-np.inf)
        cand = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=-1)
    best = np.argsort(-total, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(total, best, 1).astype(np.float32)
    ids = np.where(np.isfinite(scores), np.take_along_axis(cand, best, 1), -1)
    return Neighbors(ids=ids, scores=np.where(ids >= 0, scores, -np.inf).astype(np.float32))


def _union(ids: np.ndarray) -> np.ndarray:
    """Each row's ids with repeats (after their first place) set to -1."""
    out = ids.copy()
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, 1)
    repeat = np.zeros(ids.shape, dtype=bool)
    repeat[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    np.put_along_axis(out, order, np.where(repeat, -1, ordered), 1)
    return out


def _cut(nb: Neighbors, min_score: float | None) -> Neighbors:
    """``nb`` without the rows scoring below ``min_score`` (the survivors first, the rest padding)."""
    if min_score is None:
        return nb
    drop = nb.scores < min_score
    if not drop.any():
        return nb
    ids = np.where(drop, -1, nb.ids)
    scores = np.where(drop, -np.inf, nb.scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")
    return Neighbors(ids=np.take_along_axis(ids, order, 1), scores=np.take_along_axis(scores, order, 1))
