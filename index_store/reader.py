"""Open and validate a store; large arrays are memory-mapped."""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nearest_prompt.common.checksums import block_sha256, file_digests
from nearest_prompt.common.errors import StoreError
from nearest_prompt.common.quiet import c_stdout_silenced
from nearest_prompt.encoders.clip import ClipInfo
from nearest_prompt.encoders.minilm import MiniLMInfo

from . import where
from .format import (
    FILES,
    FORMAT_NAME,
    FRAGMENT_INDEX_FILES,
    FRAGMENT_SPACES,
    FRAGMENT_VECTORS,
    FRAGMENTS,
    MANIFEST,
    MINILM,
    MINILM_SPACE,
    PROMPTS,
    READABLE_VERSIONS,
    REMOVED,
    files_of,
    index_file,
    ivfdata_name,
    rows_file,
    vectors_file,
)
from .manifest import FileInfo, Manifest, SpaceInfo
from .refine import RefinedIndex

log = logging.getLogger(__name__)

FULL_CHECK_MAX_BYTES = 256 << 20  # "auto" checksums files up to this size; above, sizes and a sampled block
SCORE_TOLERANCE = 0.1  # unit vectors give inner products in [-1, 1]; quantised indexes stray a little
WHERE_CACHE = 8  # filters whose row masks an open store keeps (a mask is one byte a row)
VERIFY_HINT = "check it with 'nearest-prompt info --index {path} --verify', and rebuild it if that fails"


@dataclass
class Fragments:
    """The fragment vocabulary of a version-2 store: ``table`` (id, fragment, count; most frequent first),
    per space the fragments' unit vectors (float16 [rows, d], memory-mapped) and a FAISS index."""

    table: pa.Table
    vectors: dict[str, np.ndarray]
    indexes: dict[str, Any]

    def __len__(self) -> int:
        return self.table.num_rows

    def texts(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return self.table.column("fragment").take(pa.array(np.asarray(ids, dtype=np.int64))).to_pylist()

    @property
    def counts(self) -> np.ndarray:
        return self.table.column("count").to_numpy()

    @functools.cached_property
    def ids_by_text(self) -> dict[str, int]:
        """Fragment text -> row (built on first use: about 100 B per fragment)."""
        return {t: i for i, t in enumerate(self.table.column("fragment").to_pylist())}


@dataclass
class Store:
    path: Path
    manifest: Manifest
    table: pa.Table
    minilm: np.ndarray  # float16 [rows, 384], memory-mapped
    indexes: dict[str, Any]  # space (each CLIP space, "minilm") -> faiss.Index (or a RefinedIndex), memory-mapped
    fragments: Fragments | None = None  # the fragment vocabulary (format version 2), None in version 1
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # space -> float16 [rows, d], memory-mapped
    # (version 3 keeps every space's; older stores only MiniLM's)
    removed: np.ndarray | None = None  # bool [rows], True where a prompt was removed; None when none was
    members: dict[str, np.ndarray] = field(default_factory=dict)  # image space -> bool [rows], the rows it holds
    # (absent: every row)

    @property
    def spaces(self) -> list[str]:
        """The CLIP spaces, primary first (``minilm``, the answer's space, is not among them)."""
        return list(self.manifest.spaces)

    @property
    def primary(self) -> str:
        return self.manifest.primary

    def space(self, name: str) -> SpaceInfo:
        """A CLIP space's description; an ``InputError`` naming the store's spaces for any other name."""
        info = self.manifest.spaces.get(name)
        if info is None:
            from nearest_prompt.common.errors import InputError

            kind = "image space" if name.endswith("-image") else "space"
            raise InputError(f"this index has no {kind} {name!r} (its CLIP spaces: {', '.join(self.spaces)}"
                             + ("; image spaces come from a build with --image-column" if kind == "image space"
                                else "") + ")", param="space")
        return info

    def model_space(self, name: str) -> str:
        """The text space whose CLIP model embeds queries for ``name`` (an image space's ``of``, else itself)."""
        info = self.space(name)
        return info.of if info.kind == "image" else name

    @property
    def live(self) -> np.ndarray | None:
        """bool [rows]: the rows a search may return (None: all of them)."""
        return None if self.removed is None else ~self.removed

    @property
    def live_rows(self) -> int:
        return self.rows - (0 if self.removed is None else int(self.removed.sum()))

    @property
    def columns(self) -> list[str]:
        """The columns kept beside each prompt (``build --columns``), in table order."""
        return where.columns_of(self.table)

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The kept columns of rows ``ids`` as one dict per row (``{}`` for -1 and when none are kept)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        names = self.columns
        if not names:
            return [{} for _ in ids]
        valid = ids >= 0
        part = self.table.select(names).take(pa.array(np.where(valid, ids, 0))).to_pylist()
        return [{k: _plain(v) for k, v in row.items()} if ok else {} for row, ok in zip(part, valid.tolist())]

    def allowed(self, where_expr: str | None = None, *, space: str | None = None) -> np.ndarray | None:
        """bool [rows]: the rows a search of ``space`` may return: live, held by the space (an image space holds
        the prompts that have an image) and matching ``where_expr`` (``index_store.where``); None when every row
        may be returned."""
        masks = [m for m in (self.live, self.members.get(space)) if m is not None]
        if where_expr is not None:
            keep = self._where_cache.get(where_expr)
            if keep is None:
                keep = where.mask(self.table, where_expr)
                if len(self._where_cache) >= WHERE_CACHE:
                    self._where_cache.pop(next(iter(self._where_cache)))
                self._where_cache[where_expr] = keep
            masks.append(keep)
        if not masks:
            return None
        return functools.reduce(np.logical_and, masks) if len(masks) > 1 else masks[0]

    @functools.cached_property
    def _where_cache(self) -> dict[str, np.ndarray]:
        return {}

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def clip_info(self) -> ClipInfo:
        return self.manifest.clip

    @property
    def minilm_info(self) -> MiniLMInfo:
        return self.manifest.minilm

    @property
    def note(self) -> str | None:
        """A warning every result from this store should carry (a CLIP model has random weights), or None."""
        random = [info.model.model for info in self.manifest.spaces.values() if info.model.random_weights]
        if not random:
            return None
        return (f"this index was built with a CLIP model of random weights ({random[0]}), made for "
                "tests and the offline quick start: its neighbours and predictions are meaningless")

    def describe(self) -> dict[str, Any]:
        """What ``nearest-prompt info --json`` prints and the service's ``/info`` returns: the manifest, sizes,
        whether the indexes are memory-mapped, the library versions running now, and the note."""
        from nearest_prompt.common.version import library_versions

        total = sum(f.bytes for f in self.manifest.files.values())
        ram = sum(ix.ram_bytes or 0 for ix in self.manifest.indexes.values())
        return {**self.manifest.to_dict(), "path": str(self.path), "bytes_total": total,
                "bytes_per_prompt": total / max(self.rows, 1), "note": self.note,
                "ram_bytes_per_prompt": ram / max(self.rows, 1),  # resident when searching (the indexes)
                "disk_bytes_per_prompt": total / max(self.rows, 1),  # every file, paged in as needed
                "memory_mapped": {s: is_memory_mapped(index) for s, index in self.indexes.items()},
                "fragment_vocabulary": self.fragments is not None,
                "running_versions": library_versions()}

    def prompts(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        """Prompt texts for row ids; ``-1`` (faiss padding) gives ``None``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.max() >= self.rows or ids.min() < -1):
            raise IndexError(f"prompt ids must be in [0, {self.rows}), got {ids.min()}..{ids.max()}")
        col = self.table.column("prompt")
        valid = ids >= 0
        texts = col.take(pa.array(np.where(valid, ids, 0))).to_pylist()
        return [t if ok else None for t, ok in zip(texts, valid.tolist())]

    def check_results(self, space: str, ids: np.ndarray, scores: np.ndarray) -> None:
        """Refuse what a damaged index returns: ids outside the store, or scores that unit vectors cannot
        give (non-finite, or outside [-1, 1] beyond quantisation error)."""
        valid = ids >= 0
        bad_ids = (ids < -1) | (ids >= self.rows)
        s = scores[valid]
        bad_scores = ~np.isfinite(s) | (np.abs(s) > 1 + SCORE_TOLERANCE)
        if bad_ids.any() or bad_scores.any():
            what = (f"row id {int(ids[bad_ids][0])} outside 0..{self.rows - 1}" if bad_ids.any()
                    else f"similarity {float(s[bad_scores][0])!r}, impossible for unit vectors")
            raise StoreError(f"index store {self.path}: {index_file(space)} returned {what}: the file is "
                             f"damaged; " + VERIFY_HINT.format(path=self.path))


def _plain(value: Any) -> Any:
    """A metadata value as JSON writes it (dates and times as ISO text)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def _fail(path: Path, what: str) -> StoreError:
    return StoreError(f"index store {path}: {what}")


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise StoreError(f"no index store at {path}: build one with 'nearest-prompt build --prompts FILE --out {path}'")
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory; give the directory written by 'nearest-prompt build'",
                         param="index")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _fail(path, f"no {MANIFEST}; it is not a nearest-prompt store (or an unfinished one): rebuild it")
    try:
        data = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(path, f"{MANIFEST} is corrupt ({e}); rebuild the store") from e
    try:
        return Manifest.from_dict(data)
    except StoreError as e:
        raise _fail(path, str(e)) from e


def is_store(path: str | Path) -> bool:
    """True for a directory whose manifest.json names this format (any version, so that an old store can
    be rebuilt in place) and lists the store's files. A folder that merely holds a file called
    manifest.json is not a store."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not (isinstance(data, dict) and data.get("format") == FORMAT_NAME and isinstance(data.get("files"), dict)):
        return False
    version = data.get("format_version")
    required = files_of(version) if version in READABLE_VERSIONS else FILES
    return set(required) <= set(data["files"])  # a version-1 store is rebuilt in place too


def changed_in_place(store: Store) -> str | None:
    """What differs between the store's files on disk and its manifest (a file truncated, grown or removed
    while the store is open), or None. Sizes only: cheap enough to ask every few seconds."""
    for name, expect in store.manifest.files.items():
        try:
            size = (store.path / name).stat().st_size
        except OSError:
            return f"{name} is gone"
        if size != expect.bytes:
            return f"{name} is {size:,} bytes, its manifest says {expect.bytes:,}"
    return None


def foreign_entries(path: str | Path) -> list[str]:
    """What a store folder holds that the store did not write (a user's notes, a folder of runs), sorted;
    folders end with "/". Only for a folder that ``is_store``."""
    data = json.loads((Path(path) / MANIFEST).read_text())
    ours = {MANIFEST, *data.get("files", {})}
    return sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir() if p.name not in ours)


def verify_files(path: Path, manifest: Manifest, *, verify: str = "auto") -> None:
    """Check sizes always; then sha256 of every file ("full"), or of files up to 256 MiB plus one random
    block of each larger file ("auto"), or nothing more ("size")."""
    if verify not in ("auto", "full", "size"):
        raise ValueError(f"verify must be 'auto', 'full' or 'size', not {verify!r}")
    for name in dict.fromkeys([*files_of(manifest.format_version), *manifest.files]):
        expect = manifest.files.get(name)
        fpath = path / name
        if expect is None:
            raise _fail(path, f"{MANIFEST} does not list {name}; rebuild the store")
        if not fpath.is_file():
            raise _fail(path, f"{name} is missing; rebuild the store")
        size = fpath.stat().st_size
        if size != expect.bytes:
            raise _fail(path, f"{name} is truncated or changed ({size} bytes, manifest says {expect.bytes}); "
                              "rebuild the store")
        if verify == "full" or (verify == "auto" and size <= FULL_CHECK_MAX_BYTES):
            _check_whole(path, name, expect)
        elif verify == "auto" and expect.blocks:
            i = random.randrange(len(expect.blocks))
            if block_sha256(fpath, i, block_bytes=expect.block_bytes or 0) != expect.blocks[i]:
                raise _fail(path, f"{name} is corrupt (checksum mismatch in block {i} of {len(expect.blocks)}); "
                                  "rebuild the store")


def _check_whole(path: Path, name: str, expect: FileInfo) -> None:
    if expect.blocks:
        whole, blocks = file_digests(path / name, block_bytes=expect.block_bytes or 0)
        bad = [i for i, (a, b) in enumerate(zip(blocks, expect.blocks)) if a != b]
        if bad:
            raise _fail(path, f"{name} is corrupt (checksum mismatch in block {bad[0]} of {len(blocks)}, "
                              f"bytes {bad[0] * expect.block_bytes}..); rebuild the store")
    else:
        whole, _ = file_digests(path / name, block_bytes=64 << 20)
    if whole != expect.sha256:
        raise _fail(path, f"{name} is corrupt (checksum mismatch); rebuild the store")


def read_index(fpath: Path, *, ondisk: bool = False) -> Any:
    """A store's index file, its bulk left on disk until searched. ``ondisk``: an IVF index whose lists are in
    faiss's on-disk layout beside it (``format.ivfdata_name``; found in the index file's own folder,
    wherever the store now is); else read with the file memory-mapped in place (flat codes, IVF lists of
    older stores, HNSW storage). IO_FLAG_MMAP_IFC must not be combined with IO_FLAG_MMAP: faiss then refuses
    IVF indexes (a full read would then be the silent fallback).

    On-disk lists are searched without faiss's prefetch threads (by default one per probed list, up to 32,
    started and joined in every search call): the lists are sized to the memory budget and stay in the page
    cache, where those threads only cost time."""
    import faiss

    if ondisk:
        with c_stdout_silenced():  # faiss says "updating ondisk filename" on stdout when the store was moved
            index = faiss.read_index(str(fpath), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):
            lists.prefetch_nthread = 0
        return index
    try:
        return faiss.read_index(str(fpath), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        log.warning("%s could not be memory-mapped (%s); reading it into memory", fpath.name,
                    str(e).splitlines()[0][:120])
        return faiss.read_index(str(fpath))


def is_memory_mapped(index: Any) -> bool:
    """True when the bulk of ``index`` (flat codes, IVF lists or HNSW storage) is a view of the file."""
    import faiss

    if isinstance(index, RefinedIndex):  # its stored vectors are memory-mapped by numpy
        return is_memory_mapped(index.base) and isinstance(index.vectors, np.memmap)
    outer = faiss.downcast_index(index)  # keep the owner alive while its parts are inspected
    inner = faiss.downcast_index(outer.storage) if isinstance(outer, faiss.IndexHNSW) else outer
    if isinstance(inner, faiss.IndexFlatCodes):
        return not inner.codes.is_owned
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(lists, faiss.ArrayInvertedLists):
            return ivf.nlist == 0 or not any(lists.codes.at(i).is_owned for i in range(ivf.nlist))
        return isinstance(lists, faiss.OnDiskInvertedLists)
    return False


def open_store(path: str | Path, *, verify: str = "auto") -> Store:
    """Open a store, checking format version, files, checksums and the row-id contract."""
    path = Path(path).expanduser().absolute()
    manifest = read_manifest(path)
    verify_files(path, manifest, verify=verify)
    rows = manifest.rows
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path / PROMPTS), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise _fail(path, f"{PROMPTS} is unreadable ({e}); rebuild the store") from e
    spaces = list(manifest.indexes)  # the CLIP spaces and "minilm"
    vectors = {}
    for space in spaces:
        name = vectors_file(space)
        if name not in manifest.files:  # stores before version 3 keep no CLIP vectors
            continue
        vectors[space] = _load_array(path, name, mmap=True)
    minilm = vectors[MINILM_SPACE]
    dims = {name: info.model.embed_dim for name, info in manifest.spaces.items()}
    dims[MINILM_SPACE] = minilm.shape[-1] if minilm.ndim == 2 else -1
    indexes = {s: _open_index(path, manifest, s, vectors.get(s)) for s in spaces}
    members = {s: _load_array(path, rows_file(s), mmap=False) for s in manifest.spaces if rows_file(s) in manifest.files}
    checks = [
        (table.num_rows == rows, f"{PROMPTS} has {table.num_rows} rows, manifest says {rows}"),
        (table.schema.names[:2] == ["id", "prompt"], f"{PROMPTS} columns are {table.schema.names}, expected id, prompt"),
        (minilm.ndim == 2 and minilm.shape[0] == rows, f"{MINILM} has shape {minilm.shape}, expected ({rows}, 384)"),
        *[(v.shape == (rows, dims[s]), f"{vectors_file(s)} has shape {v.shape}, expected ({rows}, {dims[s]})")
          for s, v in vectors.items()],
        *[(indexes[s].d == dims[s], f"{index_file(s)} has dimension {indexes[s].d}, the {s} space {dims[s]}")
          for s in spaces],
        *[(indexes[s].ntotal == rows, f"{index_file(s)} holds {indexes[s].ntotal} vectors, manifest says {rows}")
          for s in spaces],
        *[(m.shape == (rows,) and m.dtype == np.bool_, f"{rows_file(s)} has shape {m.shape} of {m.dtype}, expected "
           f"({rows},) of bool") for s, m in members.items()],
    ]
    for ok, what in checks:
        if not ok:
            raise _fail(path, what + "; rebuild the store")
    _check_ids(path, PROMPTS, table, rows)
    fragments = _open_fragments(path, manifest) if manifest.fragments is not None else None
    removed = None
    if REMOVED in manifest.files:
        removed = _load_array(path, REMOVED, mmap=False)
        if removed.shape != (rows,) or removed.dtype != np.bool_:
            raise _fail(path, f"{REMOVED} has shape {removed.shape} of {removed.dtype}, expected ({rows},) of bool; "
                              "rebuild the store")
    return Store(path=path, manifest=manifest, table=table, minilm=minilm, indexes=indexes, fragments=fragments,
                 vectors=vectors, removed=removed, members=members)


def _load_array(path: Path, name: str, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path / name, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as e:
        raise _fail(path, f"{name} is unreadable ({e}); rebuild the store") from e


def _open_index(path: Path, manifest: Manifest, space: str, vectors: np.ndarray | None, *,
                name: str | None = None, info: Any = None) -> Any:
    """A space's index as its manifest describes it: IVF lists on disk when their file is listed, and a
    refine stage over the space's stored vectors when the index has one."""
    name = name or index_file(space)
    info = info or manifest.indexes[space]
    try:
        index = read_index(path / name, ondisk=ivfdata_name(name) in manifest.files)
    except RuntimeError as e:
        raise _fail(path, f"{name} is unreadable ({str(e).splitlines()[0][:120]}); rebuild the store") from e
    if info.params.get("refine"):
        if vectors is None:
            raise _fail(path, f"{name} rescores its candidates from stored vectors the store lacks; rebuild it")
        return RefinedIndex(index, vectors, k_factor=int(info.params["k_factor"]))
    return index


def _check_ids(path: Path, name: str, table: pa.Table, rows: int) -> None:
    ids = table.column("id").to_numpy()
    if rows and not (ids[0] == 0 and ids[-1] == rows - 1 and np.all(np.diff(ids) == 1)):
        raise _fail(path, f"{name} ids are not 0..{rows - 1} in order; rebuild the store")


def _open_fragments(path: Path, manifest: Manifest) -> Fragments:
    """The fragment vocabulary, checked like the prompts: row counts, dimensions, ids 0..n-1."""
    rows = manifest.fragments.rows
    dims = {"clip": manifest.clip.embed_dim, "minilm": manifest.minilm.dim}  # "clip": the primary space's model
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path / FRAGMENTS), "r")).read_all()
        vectors = {s: np.load(path / FRAGMENT_VECTORS[s], mmap_mode="r") for s in FRAGMENT_SPACES}
        indexes = {s: _open_index(path, manifest, s, vectors[s], name=FRAGMENT_INDEX_FILES[s],
                                  info=manifest.fragments.indexes[s]) for s in FRAGMENT_SPACES}
    except (pa.ArrowInvalid, OSError, ValueError, RuntimeError) as e:
        raise _fail(path, f"the fragment vocabulary is unreadable ({str(e).splitlines()[0][:120]}); "
                          "rebuild the store") from e
    checks = [(table.num_rows == rows, f"{FRAGMENTS} has {table.num_rows} rows, manifest says {rows}"),
              (table.schema.names[:3] == ["id", "fragment", "count"], f"{FRAGMENTS} columns are {table.schema.names}")]
    for s in FRAGMENT_SPACES:
        checks += [(vectors[s].shape == (rows, dims[s]), f"{FRAGMENT_VECTORS[s]} has shape {vectors[s].shape}, "
                                                        f"expected ({rows}, {dims[s]})"),
                   (indexes[s].ntotal == rows and indexes[s].d == dims[s],
                    f"{FRAGMENT_INDEX_FILES[s]} holds {indexes[s].ntotal} x {indexes[s].d}, expected {rows} x {dims[s]}")]
    for ok, what in checks:
        if not ok:
            raise _fail(path, what + "; rebuild the store")
    _check_ids(path, FRAGMENTS, table, rows)
    return Fragments(table=table, vectors=vectors, indexes=indexes)
