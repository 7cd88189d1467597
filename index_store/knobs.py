"""Search knobs that the build tunes and every search of a store applies alike."""

from __future__ import annotations


def quantizer_ef(nprobe: int) -> int:
    """efSearch of an HNSW coarse quantizer that is to return ``nprobe`` lists: twice that, at least 8 (a graph
    search with a shorter candidate list than that misses near centroids). The narrowest walk: the build may
    tune a wider one (recorded as ``quantizer_ef``), and a search never walks narrower than the index's own."""
    return max(8, 2 * int(nprobe))
