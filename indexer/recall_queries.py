"""The queries a build measures an index's recall@10 with, and the measure.

A recall query is a sampled stored vector (its *source row*) moved by a random offset of norm ``QUERY_NOISE``.
The source row is held out: it is not among the query's exact top-10, and it is dropped from whatever an index
returns before the two are compared (a search asks for ``width`` = k + 1 ids, a refine stage for one candidate
more than ``k_factor * k``). A query's own source row is an easy neighbour that no fresh query has, so counting
it would overstate the recall that users see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nearest_prompt.common.topk import exact_knn, recall_at_k

from .shards import ShardedMatrix

RECALL_QUERIES = 500
RECALL_BLOCK = 16_384  # stored rows scored at a time for the exact recall@10 oracle
QUERY_NOISE = 0.5  # norm of the random offset added to a sampled stored vector to make a recall query


@dataclass(frozen=True)
class RecallQueries:
    """``queries`` float32 [q, d]; ``sources`` int64 [q], the stored row each was made from; ``exact`` int64
    [q, k], the exact top-k ids of each query over every stored row but its source."""

    queries: np.ndarray
    sources: np.ndarray
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

    def recall(self, found: np.ndarray) -> float:
        """Recall@k of ``found`` (ids [q, >= k], best first) with each query's source row dropped."""
        if self.k == 0:
            return 1.0
        return recall_at_k(without_sources(found, self.sources, self.k), self.exact)


def without_sources(found: np.ndarray, sources: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``found`` that are not that row's ``sources`` id, in their order."""
    found = np.asarray(found)
    order = np.argsort(found == sources[:, None], axis=1, kind="stable")  # the source row, if there, goes last
    return np.take_along_axis(found, order, 1)[:, :k]


def recall_queries(vectors: ShardedMatrix | np.ndarray, rng: np.random.Generator) -> RecallQueries:
    """Up to RECALL_QUERIES recall queries over ``vectors`` (unit rows) and their exact top-10 without the
    source row."""
    n, _ = vectors.shape
    k = max(0, min(10, n - 1))
    sources = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False)).astype(np.int64)
    queries = np.asarray(vectors[sources], dtype=np.float32)
    noise = rng.normal(size=queries.shape).astype(np.float32)
    queries += QUERY_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, ids = exact_knn(queries, vectors, k + 1, block_rows=RECALL_BLOCK)
    return RecallQueries(queries, sources, without_sources(ids, sources, k))
