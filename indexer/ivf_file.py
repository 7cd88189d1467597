"""IVF index files written straight to disk, and searched through bounded memory maps.

``write_ivf_file`` produces the file ``faiss.write_index`` would write for
the index after ``add`` of every row, without the inverted lists ever being
in memory: a first pass assigns rows to lists, the file is laid out from
the list sizes, and a second pass encodes blocks of rows and writes each
list's slice in place (``os.pwrite``). Written pages go to the page cache,
not to the process. Memory: one block of rows plus 4 bytes per row.

``MappedIVF`` searches such a file memory-mapped (as a store opens it), but
re-opens the mapping for each group of queries so that the list data mapped
at once stays under ``max_mapped_bytes``: a pass over millions of queries
leaves no more than that in the resident set, whatever the index size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .shards import ShardedMatrix

ENCODE_CHUNK = 65_536  # rows encoded and written at a time
MAX_MAPPED_BYTES = 1 << 30  # list data mapped at once while searching (file pages, reclaimable)
_ID_BYTES = 8


def _ivf(index: Any) -> Any:
    import faiss

    ivf = faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVF):
        raise ValueError(f"write_ivf_file takes an IVF index, not {type(ivf).__name__}")
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if ivf.ntotal or not isinstance(lists, faiss.ArrayInvertedLists) or not ivf.is_trained:
        raise ValueError("write_ivf_file takes a trained, empty IVF index with array inverted lists")
    return ivf


def _head(ivf: Any, ntotal: int) -> bytes:
    """faiss's serialisation of ``ivf`` up to its inverted lists, as if it held ``ntotal`` vectors.

    The lists are serialised last ("ilar" block); empty, they are the fixed
    32-byte tail checked here, so a change of faiss's format fails loudly.
    """
    import faiss

    saved = ivf.ntotal
    ivf.ntotal = ntotal
    try:
        blob = faiss.serialize_index(ivf).tobytes()
    finally:
        ivf.ntotal = saved
    tail = b"ilar" + struct.pack("<QQ", ivf.nlist, ivf.code_size) + b"sprs" + struct.pack("<Q", 0)
    if not blob.endswith(tail):
        raise RuntimeError(f"faiss {faiss.__version__} serialises IVF indexes in an unknown layout")
    return blob[:-len(tail)]


def _lists_block(ivf: Any, sizes: np.ndarray) -> bytes:
    """The "ilar" header for lists of ``sizes``, stored as one contiguous buffer ("full")."""
    return (b"ilar" + struct.pack("<QQ", ivf.nlist, ivf.code_size) + b"full"
            + struct.pack("<Q", ivf.nlist) + sizes.astype("<u8").tobytes())


MapBlocks = Callable[[Callable[..., Any], tuple, list[tuple]], Iterator[Any]]


def map_here(fn: Callable[..., Any], shared: tuple, per_task: list[tuple]) -> Iterator[Any]:
    """``fn(*shared, *args)`` for each args, in order, in this process (an engine maps them elsewhere)."""
    return (fn(*shared, *args) for args in per_task)


def _as_ivf(index: Any) -> Any:
    """The IVF index, from the object or from its serialisation (what a remote task receives)."""
    import faiss

    if isinstance(index, (bytes, np.ndarray)):  # read_index's result is already of its own class, and owns it
        return faiss.deserialize_index(np.frombuffer(index, dtype=np.uint8) if isinstance(index, bytes) else index)
    return index


def assign_block(index: Any, vectors: ShardedMatrix | np.ndarray, start: int, stop: int) -> np.ndarray:
    """Pass 1 for rows ``start:stop``: the list of each row."""
    block = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
    ivf = _as_ivf(index)  # held: its quantizer lives as long as it does
    return ivf.quantizer.assign(block, 1).ravel().astype(np.int32)


def encode_block(index: Any, vectors: ShardedMatrix | np.ndarray, start: int, stop: int,
                 list_nos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2 for rows ``start:stop``: (list numbers, ids, codes), sorted by list, row order within."""
    import faiss

    ivf = _as_ivf(index)
    order = np.argsort(list_nos, kind="stable")  # by list, row order within
    nos = list_nos[order].astype(np.int64)
    block = np.ascontiguousarray(np.asarray(vectors[start:stop], dtype=np.float32)[order])
    codes = np.empty((len(block), ivf.code_size), dtype=np.uint8)
    ivf.encode_vectors(len(block), faiss.swig_ptr(block), faiss.swig_ptr(nos), faiss.swig_ptr(codes), False)
    return nos, order.astype(np.int64) + start, codes


def write_ivf_file(path: str | Path, index: Any, vectors: ShardedMatrix | np.ndarray, *,
                   map_blocks: MapBlocks | None = None) -> np.ndarray:
    """Write ``index`` (trained, empty) filled with every row of ``vectors`` (faiss id == row) to ``path``.

    Rows keep their order within each list, as ``index.add`` keeps them, so
    the file equals ``faiss.write_index`` after ``add``. ``index`` itself
    stays empty. Returns the list sizes. ``map_blocks`` runs the two passes'
    block work (``assign_block``, ``encode_block``) elsewhere, e.g. as Ray tasks
    (``indexer.ray_engine``, which ships the index serialised); the file is written here, the same bytes
    either way.
    """
    ivf = _ivf(index)
    n, cs = len(vectors), ivf.code_size
    ranges = [(s, min(s + ENCODE_CHUNK, n)) for s in range(0, n, ENCODE_CHUNK)]
    run = map_blocks or map_here
    list_nos = np.empty(n, dtype=np.int32)
    for (start, stop), nos in zip(ranges, run(assign_block, (index, vectors), ranges)):
        list_nos[start:stop] = nos
    sizes = np.bincount(list_nos, minlength=ivf.nlist).astype(np.int64)
    start_of = np.concatenate([[0], np.cumsum(sizes * (cs + _ID_BYTES))[:-1]]).astype(np.int64)
    head = _head(ivf, n) + _lists_block(ivf, sizes)
    codes_at = len(head) + start_of  # each list: its codes, then its ids
    ids_at = codes_at + sizes * cs
    filled = np.zeros(ivf.nlist, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + int(sizes.sum()) * (cs + _ID_BYTES))
        fd = f.fileno()
        work = [(start, stop, list_nos[start:stop]) for start, stop in ranges]
        for nos, ids, codes in run(encode_block, (index, vectors), work):
            cuts = np.concatenate([[0], np.flatnonzero(np.diff(nos)) + 1, [len(nos)]]).tolist()
            for a, b in zip(cuts[:-1], cuts[1:]):
                list_no = int(nos[a])
                done = int(filled[list_no])
                os.pwrite(fd, codes[a:b].data, int(codes_at[list_no]) + done * cs)
                os.pwrite(fd, ids[a:b].data, int(ids_at[list_no]) + done * _ID_BYTES)
                filled[list_no] += b - a
    return sizes


def set_ivf_file_nprobe(path: str | Path, index: Any, *, ntotal: int, nprobe: int) -> None:
    """Rewrite the header of the file ``write_ivf_file`` wrote for ``index`` (``ntotal`` rows) with
    ``nprobe`` as its search default."""
    ivf = _ivf(index)
    saved = ivf.nprobe
    ivf.nprobe = nprobe
    try:
        head = _head(ivf, ntotal)
    finally:
        ivf.nprobe = saved
    with open(path, "r+b") as f:
        old = f.read(len(head))
        if len(old) != len(head) or sum(a != b for a, b in zip(old, head)) > 8:
            raise RuntimeError(f"{path} does not start with the header of this index")
        f.seek(0)
        f.write(head)


def read_mapped(path: str | Path) -> Any:
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


class MappedIVF:
    """Search an IVF index file with at most ``max_mapped_bytes`` of its lists mapped at a time.

    Queries are grouped (by their nearest list, for locality) so that the
    lists a group probes add up to at most ``max_mapped_bytes`` (a single
    query may exceed it alone); each group is searched through a fresh
    mapping that is dropped afterwards. Results equal ``index.search``.
    """

    def __init__(self, path: str | Path, *, max_mapped_bytes: int = MAX_MAPPED_BYTES):
        import faiss

        self.path = Path(path)
        self.max_mapped_bytes = int(max_mapped_bytes)
        index = read_mapped(self.path)
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.invlists
        self.nlist = ivf.nlist
        self.nprobe = ivf.nprobe
        self.list_bytes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64) * (
            ivf.code_size + _ID_BYTES)
        self.quantizer = faiss.IndexFlat(ivf.d, ivf.metric_type)  # a copy in memory: nlist x d floats
        self.quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
        self.ntotal, self.d = int(index.ntotal), int(index.d)
        del ivf, index

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(int(nprobe or self.nprobe), self.nlist)
        coarse_d, coarse_i = self.quantizer.search(queries, nprobe)
        out_d = np.empty((len(queries), k), dtype=np.float32)
        out_i = np.empty((len(queries), k), dtype=np.int64)
        for group in self._groups(coarse_i):
            index = read_mapped(self.path)
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = nprobe
            ivf.parallel_mode = 3  # threads over the group's queries (mode 0 runs search_preassigned serially)
            d, i = ivf.search_preassigned(queries[group], k, coarse_i[group], coarse_d[group])
            out_d[group], out_i[group] = d, i
            del ivf, index  # unmap: the probed lists leave the resident set
        return out_d, out_i

    def _groups(self, probes: np.ndarray):
        order = np.argsort(probes[:, 0], kind="stable")
        mapped = np.zeros(self.nlist, dtype=bool)
        group: list[int] = []
        total = 0
        for q in order.tolist():
            lists = probes[q][probes[q] >= 0]
            new = lists[~mapped[lists]]
            extra = int(self.list_bytes[new].sum())
            if group and total + extra > self.max_mapped_bytes:
                yield np.array(group)
                mapped[:] = False
                group, total = [], 0
                new = lists
                extra = int(self.list_bytes[lists].sum())
            mapped[new] = True
            group.append(q)
            total += extra
        if group:
            yield np.array(group)
