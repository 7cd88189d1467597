"""One more CLIP space in an existing store (``build --add-space NAME=MODEL``), the others untouched.

Every prompt of the store is embedded with the new space's CLIP text encoder (a removed prompt's row stays
zero, as in every other space), its index is planned by the memory budget the store was built with (split
again over one more space), built, and the store's next version is written beside it: the new files, every
other file a hard link to the current one, the manifest with the space appended and the change recorded
(``revision``). The shards stay in the store's work folder until the new version is in place, so an
interrupted run continues where it stopped. An image space comes with a build (``image_column``), whose
corpus names the images.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt import index_store
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.clip import load_clip, locate_weights, parse_clip_spec, portable_spec
from nearest_prompt.index_store import IndexInfo, SpaceInfo, Store
from nearest_prompt.index_store.format import MANIFEST, space_name_problem, vectors_file

from .build import split_budget
from .config import SpaceSpec
from .disk import check_free_space, estimate
from .encoding import TextEncoding
from .engine import open_engine
from .faiss_index import build_index, plan_index
from .prompt_file import PromptFile, write_prompt_file
from .revision import build_config, link_or_copy, open_for_change, record, zeroed
from .shards import ShardedMatrix
from .workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddSpaceResult:
    path: Path
    space: str
    rows: int
    index: IndexInfo


def add_space(index: str | Path, space: str | SpaceSpec, *, clip: Any = None, device: str | None = None,
              batch_size: int | None = None, shard_size: int | None = None, progress: bool = True,
              clean: bool = False) -> AddSpaceResult:
    """Embed every prompt of the store at ``index`` into a new CLIP text space ``space`` ("NAME=MODEL[@PRETRAINED]"
    or a ``SpaceSpec``; ``clip``: that model, loaded) and write the store's next version with it."""
    spec = space if isinstance(space, SpaceSpec) else SpaceSpec.parse(space)
    store = open_for_change(index, what="adding a space")
    _check_new(store, spec)
    config = build_config(store)
    config = dataclasses.replace(config, batch_size=batch_size or config.batch_size,
                                 shard_size=shard_size or config.shard_size).validate()
    model = parse_clip_spec(spec.model, spec.pretrained, param="spaces") if clip is None else None
    lock = WorkDir(store.path).lock()
    work = lock.sub(f"space-{spec.name}")
    try:
        for orphan in index_store.orphans(store.path):
            log.info("removing %s, left by a change that was killed", orphan)
            shutil.rmtree(orphan, ignore_errors=True)
        store = open_for_change(index, what="adding a space")  # as it is now that the lock is held
        _check_new(store, spec)
        if clip is None:
            locate_weights(model, param="spaces")
            clip = load_clip(model, device=resolve_device(device))
        if clean:
            work.clear()
        work.prepare(f"{spec}|{(store.path / MANIFEST).stat().st_mtime_ns}")
        result = _add_space(work.path, store, spec.name, clip, config=config, progress=progress)
        work.remove()
        return result
    except BaseException as e:
        kept = work.after_failure(shard_totals={})
        if not isinstance(e, InputError):
            log.warning("adding space %s %s; %s", spec.name,
                        "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                        kept.replace("same build", "same command"))
        raise
    finally:
        lock.remove_if_idle()
        lock.unlock()


def _check_new(store: Store, spec: SpaceSpec) -> None:
    problem = space_name_problem(spec.name)
    if problem:
        raise InputError(problem, param="spaces")
    if spec.name in store.manifest.spaces:
        raise InputError(f"the index has a space {spec.name!r} already (its spaces: {', '.join(store.spaces)}); "
                         "choose another name", param="spaces")


def _add_space(work: Path, store: Store, name: str, clip: Any, *, config: Any, progress: bool) -> AddSpaceResult:
    t0 = time.perf_counter()
    rows, dim = store.rows, clip.dim
    text_bytes = sum(chunk.nbytes for chunk in store.table.column("prompt").chunks)
    need = estimate(rows, text_bytes, clip_dim=dim, index_bytes=0)
    check_free_space(store.path, dataclasses.replace(need, work_bytes=rows * dim * 4 + text_bytes,
                                                     store_bytes=rows * dim * 2 + rows * dim), already=0)
    prompts_path = work / "prompts.arrow"
    if not prompts_path.is_file():
        write_prompt_file(prompts_path, store.table.column("prompt").chunks)
    prompts = PromptFile(prompts_path)
    engine = open_engine("local")
    paths = engine.embed(prompts, TextEncoding("clip", None, None, clip), dim=dim, folder=work / name,
                         shard_size=config.shard_size, batch_size=config.batch_size, dtype=np.float32,
                         desc=f"CLIP text ({name})", progress=progress)
    matrix = ShardedMatrix(paths)
    budget = split_budget(config.memory_budget_gb, [*store.spaces, name])[name]
    with index_store.StoreWriter(store.path) as writer:
        for file in store.manifest.files:  # every other file as it is
            link_or_copy(store.path / file, writer.staging / file)
        removed = store.removed if store.removed is not None else np.zeros(rows, dtype=bool)
        writer.write_matrix(vectors_file(name), zeroed(matrix, removed), rows=rows, dim=dim)
        stored = np.load(writer.vectors_path(name), mmap_mode="r")
        plan = plan_index(rows, dim, index_type=config.index_type, memory_budget_gb=budget)
        if plan.note:
            log.warning("%s index: %s", name, plan.note)
        path = writer.index_path(name)
        info = IndexInfo.from_dict(build_index(stored, plan, path=path, seed=config.seed, refine_path=writer.vectors_path(name),
                                               final_path=writer.final_path(path)))
        log.info("%s index: %s %s over %d vectors, recall@10 vs exact %.3f", name, plan.type, info.params, rows,
                 info.recall_at_10)
        spaces = {**store.manifest.spaces, name: SpaceInfo(kind="text", model=portable_spec(clip.info, store=store.path))}
        entry = {"space": name, "model": clip.info.model, "pretrained": clip.info.pretrained, "rows": rows,
                 "seconds": round(time.perf_counter() - t0, 3)}
        writer.commit(record(store, "space_additions", entry, spaces=spaces,
                             indexes={**store.manifest.indexes, name: info}))
    return AddSpaceResult(store.path, name, rows, info)
