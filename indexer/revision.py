"""The next version of a store, written beside it and swapped into place: what ``add`` and ``remove`` share.

A store's files are never changed in place. A change writes a whole new version into the staging folder
(``index_store.StoreWriter``): files it does not change are hard links to the current ones (a copy where the
file system has no links), the others are written anew, the manifest is rewritten with the change recorded,
and the folder replaces the store in one rename. Readers that have the store open keep reading the files
they mapped; the service notices the new version and opens it (``service.app``).

It holds the store's build lock (``workdir.WorkDir``) throughout, so a build, an addition and a removal
never write the same store at once.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nearest_prompt import index_store
from nearest_prompt.common.errors import InputError
from nearest_prompt.index_store import FragmentsInfo, Manifest, Store
from nearest_prompt.index_store.format import FORMAT_VERSION

from .config import BuildConfig
from .fragments import mine_fragments

log = logging.getLogger(__name__)

REMOVED_KEYS = "removed_keys"  # in the manifest's build entry: dedup keys (hex) of the prompts removed


CHANGEABLE_VERSION = 3  # the oldest store format a change can start from (the first that keeps every space's vectors)


def open_for_change(index: str | Path, *, what: str) -> Store:
    """The store at ``index``, refused in one line when it cannot be changed (not a store, too old). Its next
    version is written in the current format."""
    path = Path(index).expanduser().absolute()
    store = index_store.open_store(path)
    if store.manifest.format_version < CHANGEABLE_VERSION:
        raise InputError(f"{path} is a store of format version {store.manifest.format_version}; {what} needs "
                         f"version {CHANGEABLE_VERSION} or later: rebuild it with this version of nearest-prompt",
                         param="index")
    return store


def fragment_dims(store: Store) -> dict[str, int]:
    """The dimensions of the fragment vocabulary's spaces: "clip" is the primary space's model."""
    return {"clip": store.manifest.clip.embed_dim, "minilm": store.manifest.minilm.dim}


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (safe: store files are never written in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(src, dst)


def build_config(store: Store) -> BuildConfig:
    """The options the store was built with (defaults for those an older manifest lacks)."""
    known = {f.name for f in dataclasses.fields(BuildConfig)}
    given = {k: v for k, v in store.manifest.build.get("config", {}).items() if k in known}
    for name in ("columns", "spaces"):
        if isinstance(given.get(name), list):
            given[name] = tuple(given[name])
    return BuildConfig(**given)


def live_prompts(store: Store) -> Iterator[pa.Array]:
    """The store's prompts that are not removed, in row order, a chunk at a time."""
    column = store.table.column("prompt")
    start = 0
    for chunk in column.chunks:
        if store.removed is None:
            yield chunk
        else:
            yield chunk.filter(pa.array(~store.removed[start:start + len(chunk)]))
        start += len(chunk)


def mine(blocks: Iterator[pa.Array], store: Store, *, total: int, progress: bool) -> Any:
    """The fragment vocabulary of ``blocks`` by the rule the store was built with."""
    rule = store.manifest.fragments.rule if store.manifest.fragments else {}
    config = build_config(store)
    return mine_fragments(blocks, min_count=int(rule.get("min_count", config.fragment_min_count)),
                          max_fragments=int(rule.get("max_fragments", config.max_fragments)), total=total,
                          progress=progress)


def record(store: Store, key: str, entry: dict[str, Any], **changes: Any) -> Manifest:
    """The store's manifest with ``entry`` appended to ``build[key]`` (``additions``, ``removals``) and
    ``changes`` applied."""
    build = dict(store.manifest.build)
    build[key] = [*build.get(key, []), {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}]
    return dataclasses.replace(store.manifest, build=build, format_version=FORMAT_VERSION, **changes)


def fragments_info(store: Store, info: FragmentsInfo, stats: dict[str, Any]) -> FragmentsInfo:
    """``info`` with the rule of the store's vocabulary kept."""
    rule = store.manifest.fragments.rule if store.manifest.fragments else info.rule
    return dataclasses.replace(info, rule=rule, stats=stats)


def zeroed(matrix: np.ndarray, rows: np.ndarray, *, step: int = 65_536) -> Iterator[np.ndarray]:
    """The rows of ``matrix`` in blocks, with ``rows`` (bool mask) set to zero."""
    for start in range(0, len(matrix), step):
        block = np.array(matrix[start:start + step])
        block[rows[start:start + step]] = 0
        yield block
