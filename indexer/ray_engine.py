"""The build's parallel work on a Ray cluster (Ray Data, ``pip install nearest-prompt[ray]``).

* ``embed``: the shards still to do become a Ray Dataset of shard descriptors, mapped with
  ``map_batches`` over a pool of actors; each actor loads its model once (on its GPU when it has one)
  and writes the shard files ``indexer.shards.embed_shard`` writes locally, into the work folder, which
  must be on a filesystem every worker sees. A worker that dies is restarted and its shard retried
  (Ray Data's actors default to ``max_restarts=-1``, ``max_task_retries=-1``): a shard file appears
  only whole (atomic rename), so a retried shard equals a first try. One progress bar, on the driver, counts finished shards.
* ``map_blocks``: block work as Ray tasks: the IVF writer's blocks (the trained index travels once, as
  bytes, through the object store; each task writes its block's index file into the shared folder, the
  driver merges them) and near-dedup's range searches (each task opens the shared index file and returns
  its pairs; the driver applies the rule). Results come back in order.

Exact dedup, IVF training (on a random sample), the greedy rule of near-dedup and the store itself stay on
the driver.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.extras import require
from nearest_prompt.common.progress import progress_bar

from .encoding import TextEncoding, encode_fn
from .prompt_file import PromptFile
from .shards import Shard, embed_shard, plan_shards, shard_done

log = logging.getLogger(__name__)

IN_FLIGHT = 4  # block tasks per worker in flight at once (bounds the driver's memory)


def _ray() -> Any:
    require("ray", what="engine 'ray'", param="engine")
    import ray

    return ray


class _EmbedActor:
    """One per worker: loads the encoder once, then embeds the shards it is given."""

    def __init__(self, encoding: TextEncoding, prompts: str, dim: int, batch_size: int, dtype: str):
        self.encode = encode_fn(encoding.kind, encoding.load())
        self.prompts = PromptFile(Path(prompts))
        self.dim, self.batch_size, self.dtype = dim, batch_size, np.dtype(dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i, start, stop, path in zip(batch["index"], batch["start"], batch["stop"], batch["path"]):
            shard = Shard(int(i), int(start), int(stop), Path(str(path)))
            embed_shard(self.prompts, shard, encode=self.encode, dim=self.dim, batch_size=self.batch_size,
                        dtype=self.dtype)
        return {"rows": np.asarray(batch["stop"]) - np.asarray(batch["start"])}


def _shippable(obj: Any) -> Any:
    """A FAISS index as its serialisation (SWIG objects do not pickle; ``ivf_blocks`` reads either form)."""
    import faiss

    return faiss.serialize_index(obj) if isinstance(obj, faiss.Index) else obj


class RayEngine:
    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0):
        ray = _ray()
        if not log.isEnabledFor(logging.DEBUG):  # Ray's own chatter (auth mode, dataset notices) only with -v
            for name in ("ray", "ray.data"):  # after the import: importing ray sets these loggers up
                logging.getLogger(name).setLevel(logging.ERROR)
        self._started = not ray.is_initialized()
        if self._started:
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar, ours
        ctx.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_worker and gpus < gpus_per_worker:
            raise InputError(f"gpus_per_worker={gpus_per_worker:g} but the Ray cluster has {gpus:g} GPUs",
                             param="gpus_per_worker")
        self.workers = workers or (int(gpus // gpus_per_worker) if gpus_per_worker else cpus)
        self.cpus_per_worker = max(1, cpus // self.workers) if not gpus_per_worker else 1
        self.gpus_per_worker = gpus_per_worker
        log.info("Ray engine: %d workers (%d CPU%s%s each)", self.workers, self.cpus_per_worker,
                 "s" if self.cpus_per_worker > 1 else "", f", {gpus_per_worker:g} GPU" if gpus_per_worker else "")

    def embed(self, prompts: PromptFile, encoding: TextEncoding, *, dim: int, folder: Path, shard_size: int,
              batch_size: int, dtype: Any, desc: str, progress: bool) -> list[Path]:
        ray = _ray()
        folder.mkdir(parents=True, exist_ok=True)
        shards = plan_shards(len(prompts), shard_size=shard_size, folder=folder)
        todo = [s for s in shards if not shard_done(s, dim)]
        with progress_bar(total=len(prompts), desc=desc, enabled=progress) as bar:
            bar.update(len(prompts) - sum(s.rows for s in todo))
            if todo:
                items = [{"index": s.index, "start": s.start, "stop": s.stop, "path": str(s.path)} for s in todo]
                ds = ray.data.from_items(items, override_num_blocks=len(items))
                out = ds.map_batches(
                    _EmbedActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(todo))),
                    num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None,
                    fn_constructor_kwargs={"encoding": encoding.portable(), "prompts": str(prompts.path), "dim": dim,
                                           "batch_size": batch_size, "dtype": np.dtype(dtype).str},
                    runtime_env={"env_vars": {"OMP_NUM_THREADS": str(self.cpus_per_worker),
                                              "TOKENIZERS_PARALLELISM": "false",
                                              "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}})
                for row in out.iter_rows():
                    bar.update(int(row["rows"]))
        missing = [s.path.name for s in shards if not shard_done(s, dim)]
        if missing:
            raise RuntimeError(f"Ray finished without writing shards {missing[:3]} of {folder}")
        return [s.path for s in shards]

    def map_blocks(self, fn: Callable[..., Any], shared: tuple, per_task: list[tuple]) -> Iterator[Any]:
        ray = _ray()
        remote = ray.remote(num_cpus=1, max_retries=3)(fn)
        refs = [ray.put(_shippable(x)) for x in shared]
        window = max(1, IN_FLIGHT * self.workers)
        pending: list[Any] = []
        for args in per_task:
            pending.append(remote.remote(*refs, *args))
            if len(pending) >= window:
                yield ray.get(pending.pop(0))
        while pending:
            yield ray.get(pending.pop(0))

    def close(self) -> None:
        if self._started:
            _ray().shutdown()
