"""IVF index files made of faiss's own on-disk parts, one block of rows at a time, and searched with bounded
memory maps.

``write_ondisk`` fills the trained, empty index with every row of a matrix (faiss id == row) without the
inverted lists ever being in memory: each block of rows is added to a copy of the trained index (the coarse
assignment and the encoding are faiss's own ``add_with_ids``) and written as a small index file of its own;
``faiss.contrib.ondisk.merge_ondisk`` then joins the blocks' lists into one ``OnDiskInvertedLists`` file,
``NAME.ivfdata``, beside ``NAME`` (the index file: header, quantizer, list offsets). Within each list the
rows keep their order, as ``index.add`` keeps them. The blocks' work may run elsewhere (``map_blocks``,
e.g. Ray tasks against a shared folder); the merge runs here. Memory: one block of rows and the trained
index.

``open_ivf`` reads such a file as a store opens it: the lists stay in their file, mapped (and relocated to
the index file's folder, so a store can be moved). ``BoundedIVF`` searches it for a long pass of queries
(recall tuning, near-dedup) with at most ``max_mapped_bytes`` of lists mapped at once, the mapping dropped
after each group of queries.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.atomic import temp_sibling
from nearest_prompt.common.quiet import c_stdout_silenced
from nearest_prompt.index_store.format import ivfdata_name
from nearest_prompt.index_store.reader import read_index

from .shards import ShardedMatrix

ADD_CHUNK = 65_536  # rows added, encoded and written per block
MAX_MAPPED_BYTES = 1 << 30  # list data mapped at once while searching a long pass (file pages, reclaimable)
_ID_BYTES = 8

MapBlocks = Callable[[Callable[..., Any], tuple, list[tuple]], Iterator[Any]]


def map_here(fn: Callable[..., Any], shared: tuple, per_task: list[tuple]) -> Iterator[Any]:
    """``fn(*shared, *args)`` for each args, in order, in this process (an engine maps them elsewhere)."""
    return (fn(*shared, *args) for args in per_task)


def ivfdata_path(path: str | Path) -> Path:
    """The lists file of the index file ``path`` (``clip.faiss`` -> ``clip.ivfdata``)."""
    path = Path(path)
    return path.with_name(ivfdata_name(path.name))


def _as_index(index: Any) -> Any:
    """A private copy of the trained index, from the object or from its serialisation (what a task receives)."""
    import faiss

    if isinstance(index, (bytes, np.ndarray)):
        return faiss.deserialize_index(np.frombuffer(index, dtype=np.uint8) if isinstance(index, bytes) else index)
    return faiss.clone_index(index)


def add_block(index: Any, vectors: ShardedMatrix | np.ndarray, start: int, stop: int, path: str,
              first_id: int = 0) -> str:
    """Rows ``start:stop`` added (ids = ``first_id`` + rows) to a copy of the trained ``index``, written to
    ``path``."""
    import faiss

    block = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
    filled = _as_index(index)
    filled.add_with_ids(block, np.arange(first_id + start, first_id + stop, dtype=np.int64))
    faiss.write_index(filled, path)
    return path


def write_ondisk(path: str | Path, index: Any, vectors: ShardedMatrix | np.ndarray, *,
                 map_blocks: MapBlocks | None = None, final_path: str | Path | None = None,
                 before: Any = None) -> None:
    """Write ``index`` (trained, empty) filled with every row of ``vectors`` to ``path`` and its lists to
    ``ivfdata_path(path)``. ``final_path``: where ``path`` will live once its folder is moved into place (the
    lists file's name recorded in the header; a store opened elsewhere relocates it to its own folder).
    ``before``: an index of the same training whose rows come first (``append_ondisk``); the rows of
    ``vectors`` then get the ids after its own."""
    import faiss

    path = Path(path)
    n = len(vectors)
    first_id = 0 if before is None else int(before.ntotal)
    blocks = temp_sibling(path)
    blocks.mkdir()
    try:
        tasks = [(s, min(s + ADD_CHUNK, n), str(blocks / f"{i:05d}.index"), first_id)
                 for i, s in enumerate(range(0, n, ADD_CHUNK))]
        written = list((map_blocks or map_here)(add_block, (index, vectors), tasks))
        merged = _as_index(index)
        data = ivfdata_path(path)
        with c_stdout_silenced():  # faiss says "resizing FILE to N bytes" on stdout
            _merge(merged, ([] if before is None else [before]) + written, data)
        if final_path is not None:
            faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists).filename = \
                str(ivfdata_path(final_path))
        faiss.write_index(merged, str(path))
    finally:
        shutil.rmtree(blocks, ignore_errors=True)


def _merge(merged: Any, parts: list[Any], data: Path) -> None:
    """The lists of ``parts`` (index files, or opened indexes), in order, into one ``OnDiskInvertedLists``
    file ``data`` owned by ``merged`` (trained, empty): ``faiss.contrib.ondisk.merge_ondisk``, which takes
    files only, with opened indexes too."""
    import faiss

    opened = [faiss.read_index(p, faiss.IO_FLAG_MMAP) if isinstance(p, str) else p for p in parts]
    lists = faiss.InvertedListsPtrVector()
    for index in opened:
        lists.push_back(faiss.extract_index_ivf(index).invlists)
    ivf = faiss.extract_index_ivf(merged)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
    ntotal = invlists.merge_from_multiple(lists.data(), lists.size(), False) if opened else 0
    merged.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    del opened


def append_ondisk(old_path: str | Path, vectors: ShardedMatrix | np.ndarray, path: str | Path, *,
                  map_blocks: MapBlocks | None = None, final_path: str | Path | None = None) -> None:
    """A copy of the IVF index file ``old_path`` (lists on disk or in the file) with the rows of ``vectors``
    added after its own, without retraining: its quantizer and encoder assign and encode them, its lists are
    copied with the new rows appended, into ``path`` and ``ivfdata_path(path)``. ``old_path`` is only read."""
    import faiss

    old_path = Path(old_path)
    ondisk = ivfdata_path(old_path).is_file()
    before = read_index(old_path, ondisk=ondisk)
    trained = read_index(old_path, ondisk=ondisk)  # a second opening, emptied: the trained, empty index
    ivf = faiss.extract_index_ivf(trained)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns it now
    trained.ntotal = ivf.ntotal = 0
    write_ondisk(path, faiss.serialize_index(trained), vectors, map_blocks=map_blocks, final_path=final_path,
                 before=before)


def imbalance(index: Any) -> float:
    """faiss's imbalance factor of an IVF index's lists (1: all lists the same size; a search scans about
    this many times the rows a balanced index would)."""
    import faiss

    return float(faiss.extract_index_ivf(index).invlists.imbalance_factor())


def open_ivf(path: str | Path) -> Any:
    """An IVF index file as a store opens it (``index_store.reader.read_index``): lists mapped from their
    file beside ``path``, nothing of them read into memory."""
    return read_index(Path(path), ondisk=True)


class BoundedIVF:
    """Search an IVF index file with at most ``max_mapped_bytes`` of its lists mapped at a time.

    Queries are grouped (by their nearest list, for locality) so that the lists a group probes add up to at
    most ``max_mapped_bytes`` (a single query may exceed it alone); each group is searched through a fresh
    opening of the file, dropped afterwards. Results equal ``open_ivf(path).search``."""

    def __init__(self, path: str | Path, *, max_mapped_bytes: int = MAX_MAPPED_BYTES):
        import faiss

        self.path = Path(path)
        self.max_mapped_bytes = int(max_mapped_bytes)
        index = open_ivf(self.path)
        ivf = faiss.extract_index_ivf(index)
        self.nlist, self.nprobe = ivf.nlist, ivf.nprobe
        self.list_bytes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64) * (
            ivf.code_size + _ID_BYTES)
        self.ntotal, self.d = int(index.ntotal), int(index.d)
        self._quantizer = faiss.clone_index(ivf.quantizer)  # in memory: nlist centroids (and their graph)
        del ivf, index

    def _groups(self, first_list: np.ndarray, probes: np.ndarray) -> Iterator[np.ndarray]:
        order = np.argsort(first_list, kind="stable")
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

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               configure: Callable[[Any], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``queries``; ``configure(index)`` sets search knobs on each fresh opening."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(int(nprobe or self.nprobe), self.nlist)
        _, probes = self._quantizer.search(queries, nprobe)
        out_d = np.empty((len(queries), k), dtype=np.float32)
        out_i = np.empty((len(queries), k), dtype=np.int64)
        for group in self._groups(probes[:, 0], probes):
            index = open_ivf(self.path)
            faiss.extract_index_ivf(index).nprobe = nprobe
            if configure is not None:
                configure(index)
            d, i = index.search(queries[group], k)
            out_d[group], out_i[group] = d, i
            del index  # unmap: the probed lists leave the resident set
        return out_d, out_i

    def range_search(self, queries: np.ndarray, radius: float, *, nprobe: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row with inner product above ``radius``: (query row, id, score) arrays, query rows ascending."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(int(nprobe or self.nprobe), self.nlist)
        _, probes = self._quantizer.search(queries, nprobe)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for group in self._groups(probes[:, 0], probes):
            index = open_ivf(self.path)
            faiss.extract_index_ivf(index).nprobe = nprobe
            lims, dist, ids = index.range_search(queries[group], radius)
            rows = np.repeat(group, np.diff(lims).astype(np.int64))
            parts.append((rows, ids.astype(np.int64), dist.astype(np.float32)))
            del index
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        rows, ids, dist = (np.concatenate(p) for p in zip(*parts))
        order = np.argsort(rows, kind="stable")
        return rows[order], ids[order], dist[order]
