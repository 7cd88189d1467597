"""Open and validate a store; large arrays are memory-mapped."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from nearest_prompt.clip import ClipInfo
from nearest_prompt.errors import StoreError
from nearest_prompt.fingerprint import file_sha256
from nearest_prompt.minilm import MiniLMInfo

from .format import CLIP_INDEX, FILES, FORMAT_NAME, FORMAT_VERSION, MANIFEST, MINILM, MINILM_INDEX, PROMPTS

log = logging.getLogger(__name__)

FULL_CHECK_MAX_BYTES = 256 << 20  # "auto" checksums files up to this size, checks sizes above


@dataclass
class Store:
    path: Path
    manifest: dict[str, Any]
    table: pa.Table
    minilm: np.ndarray  # float16 [rows, 384], memory-mapped
    index: Any  # faiss.Index over CLIP text vectors
    minilm_index: Any  # faiss.Index over the MiniLM vectors

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def clip_info(self) -> ClipInfo:
        return ClipInfo.from_dict(self.manifest["models"]["clip"])

    @property
    def minilm_info(self) -> MiniLMInfo:
        return MiniLMInfo.from_dict(self.manifest["models"]["minilm"])

    def prompts(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        """Prompt texts for row ids; ``-1`` (faiss padding) gives ``None``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.max() >= self.rows or ids.min() < -1):
            raise IndexError(f"prompt ids must be in [0, {self.rows}), got {ids.min()}..{ids.max()}")
        col = self.table.column("prompt")
        valid = ids >= 0
        texts = col.take(pa.array(np.where(valid, ids, 0))).to_pylist()
        return [t if ok else None for t, ok in zip(texts, valid.tolist())]


def _fail(path: Path, what: str) -> StoreError:
    return StoreError(f"index store {path}: {what}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise StoreError(f"no index store at {path}: build one with 'nearest-prompt build --prompts FILE --out {path}'")
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory; --index takes the directory written by 'nearest-prompt build'")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _fail(path, f"no {MANIFEST}; it is not a nearest-prompt store (or an unfinished one): rebuild it")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(path, f"{MANIFEST} is corrupt ({e}); rebuild the store") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _fail(path, f"{MANIFEST} is not a nearest-prompt manifest; rebuild the store")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        fix = "upgrade nearest-prompt" if newer else "rebuild the store with this version"
        raise _fail(path, f"format version {version!r} is not supported (this nearest-prompt reads {FORMAT_VERSION}); {fix}")
    for key in ("rows", "models", "files", "index"):
        if key not in manifest:
            raise _fail(path, f"{MANIFEST} lacks {key!r}; rebuild the store")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any], *, verify: str = "auto") -> None:
    """Check sizes always; sha256 for all files ("full") or files up to 256 MiB ("auto")."""
    if verify not in ("auto", "full", "size"):
        raise ValueError(f"verify must be 'auto', 'full' or 'size', not {verify!r}")
    for name in FILES:
        expect = manifest["files"].get(name)
        fpath = path / name
        if expect is None:
            raise _fail(path, f"{MANIFEST} does not list {name}; rebuild the store")
        if not fpath.is_file():
            raise _fail(path, f"{name} is missing; rebuild the store")
        size = fpath.stat().st_size
        if size != expect["bytes"]:
            raise _fail(path, f"{name} is truncated or changed ({size} bytes, manifest says {expect['bytes']}); rebuild the store")
        if verify == "full" or (verify == "auto" and size <= FULL_CHECK_MAX_BYTES):
            if file_sha256(fpath) != expect["sha256"]:
                raise _fail(path, f"{name} is corrupt (checksum mismatch); rebuild the store")


def _read_index(fpath: Path) -> Any:
    """Read with the file memory-mapped in place (flat codes, IVF lists, HNSW storage stay on disk
    until searched). IO_FLAG_MMAP_IFC must not be combined with IO_FLAG_MMAP: faiss then refuses
    IVF indexes, and an earlier version of this function silently fell back to a full read."""
    import faiss

    try:
        return faiss.read_index(str(fpath), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        log.warning("%s could not be memory-mapped (%s); reading it into memory", fpath.name,
                    str(e).splitlines()[0][:120])
        return faiss.read_index(str(fpath))


def is_memory_mapped(index: Any) -> bool:
    """True when the bulk of ``index`` (flat codes, IVF lists or HNSW storage) is a view of the file."""
    import faiss

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
    rows = int(manifest["rows"])
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path / PROMPTS), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise _fail(path, f"{PROMPTS} is unreadable ({e}); rebuild the store") from e
    try:
        minilm = np.load(path / MINILM, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise _fail(path, f"{MINILM} is unreadable ({e}); rebuild the store") from e
    indexes = []
    for name in (CLIP_INDEX, MINILM_INDEX):
        try:
            indexes.append(_read_index(path / name))
        except RuntimeError as e:
            raise _fail(path, f"{name} is unreadable ({str(e).splitlines()[0][:120]}); rebuild the store") from e
    index, minilm_index = indexes
    clip_dim = manifest["models"]["clip"]["embed_dim"]
    checks = [
        (table.num_rows == rows, f"{PROMPTS} has {table.num_rows} rows, manifest says {rows}"),
        (table.schema.names[:2] == ["id", "prompt"], f"{PROMPTS} columns are {table.schema.names}, expected id, prompt"),
        (minilm.ndim == 2 and minilm.shape[0] == rows, f"{MINILM} has shape {minilm.shape}, expected ({rows}, 384)"),
        (index.ntotal == rows, f"{CLIP_INDEX} holds {index.ntotal} vectors, manifest says {rows}"),
        (index.d == clip_dim, f"{CLIP_INDEX} has dimension {index.d}, the CLIP model {clip_dim}"),
        (minilm_index.ntotal == rows, f"{MINILM_INDEX} holds {minilm_index.ntotal} vectors, manifest says {rows}"),
        (minilm_index.d == minilm.shape[-1], f"{MINILM_INDEX} has dimension {minilm_index.d}, {MINILM} {minilm.shape}"),
    ]
    for ok, what in checks:
        if not ok:
            raise _fail(path, what + "; rebuild the store")
    ids = table.column("id").to_numpy()
    if rows and not (ids[0] == 0 and ids[-1] == rows - 1 and np.all(np.diff(ids) == 1)):
        raise _fail(path, f"{PROMPTS} ids are not 0..{rows - 1} in order; rebuild the store")
    return Store(path=path, manifest=manifest, table=table, minilm=minilm, index=index, minilm_index=minilm_index)
