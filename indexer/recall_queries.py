"""The queries a build measures an index's recall@10 with, and the measure.

A recall query is a sampled stored vector (its *source row*), as it is or moved by a random offset: one kind of
query for each norm in ``QUERY_NOISES`` (a query like the stored vectors; one off them, as an image's vector is
off the texts'), ``RECALL_QUERIES`` of each. The source row is held out: it is not among the query's exact
top-10, and it is dropped from whatever an index returns before the two are compared (a search asks for
``width`` = k + 1 ids, a refine stage for one candidate more than ``k_factor * k``). A query's own source row
is an easy neighbour that no fresh query has, so counting it would overstate the recall that users see.

A setting reaches a target when, for every kind, the kind's mean recall less ``CONFIDENCE_Z`` standard errors
does (``Recall.low``): a mean measured on a few hundred queries just at the target is as likely as not to fall
short of it on the next queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nearest_prompt.common.topk import exact_knn, recall_each

from .shards import ShardedMatrix

RECALL_QUERIES = 500  # queries of each kind
RECALL_BLOCK = 16_384  # stored rows scored at a time for the exact recall@10 oracle
QUERY_NOISES = (0.0, 0.5)  # norms of the random offsets added to sampled stored vectors: one kind of query each
CONFIDENCE_Z = 2.0  # standard errors below its mean that a kind's recall must still reach the target


class Recall(NamedTuple):
    """``mean``: recall@k over all the queries (what a manifest records); ``low``: the lowest, over the kinds of
    query, of the kind's mean less CONFIDENCE_Z standard errors (what a target is held to)."""

    mean: float
    low: float

    def reaches(self, target: float) -> bool:
        return self.low >= target


@dataclass(frozen=True)
class RecallQueries:
    """``queries`` float32 [q, d]; ``sources`` int64 [q], the stored row each was made from; ``kinds`` int [q], the
    index of its offset's norm in QUERY_NOISES; ``exact`` int64 [q, k], the exact top-k ids of each query over
    every stored row but its source."""

    queries: np.ndarray
    sources: np.ndarray
    kinds: np.ndarray
    exact: np.ndarray

    @property
    def k(self) -> int:
        return self.exact.shape[1]

    @property
    def width(self) -> int:
        """How many ids a search is asked for: k, and the slot the source row may take."""
        return self.k + 1

    def pool(self, k_factor: int) -> int:
        """How many candidates a refine stage reranks: ``k_factor * k``, and the slot the source row may take."""
        return k_factor * self.k + 1

    def recall(self, found: np.ndarray) -> Recall:
        """Recall@k of ``found`` (ids [q, >= k], best first) with each query's source row dropped."""
        if self.k == 0:
            return Recall(1.0, 1.0)
        each = recall_each(without_sources(found, self.sources, self.k), self.exact)
        low = min(float(r.mean() - CONFIDENCE_Z * r.std() / np.sqrt(len(r)))
                  for r in (each[self.kinds == kind] for kind in np.unique(self.kinds)))
        return Recall(float(each.mean()), low)


def without_sources(found: np.ndarray, sources: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``found`` that are not that row's ``sources`` id, in their order."""
    found = np.asarray(found)
    order = np.argsort(found == sources[:, None], axis=1, kind="stable")  # the source row, if there, goes last
    return np.take_along_axis(found, order, 1)[:, :k]


def recall_queries(vectors: ShardedMatrix | np.ndarray, rng: np.random.Generator) -> RecallQueries:
    """Up to RECALL_QUERIES recall queries of each kind over ``vectors`` (unit rows; each kind from rows of its
    own) and their exact top-10 without the source row."""
    n, _ = vectors.shape
    k = max(0, min(10, n - 1))
    per_kind = min(RECALL_QUERIES, n // len(QUERY_NOISES)) or n
    picked = rng.choice(n, size=min(n, per_kind * len(QUERY_NOISES)), replace=False)
    kinds = np.arange(len(picked)) // per_kind
    order = np.argsort(picked)  # rows read in file order
    sources, kinds = picked[order].astype(np.int64), kinds[order]
    queries = np.asarray(vectors[sources], dtype=np.float32)
    noise = rng.normal(size=queries.shape).astype(np.float32)
    norms = np.asarray(QUERY_NOISES, dtype=np.float32)[kinds, None]
    queries += norms * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, ids = exact_knn(queries, vectors, k + 1, block_rows=RECALL_BLOCK)
    return RecallQueries(queries, sources, kinds, without_sources(ids, sources, k))
