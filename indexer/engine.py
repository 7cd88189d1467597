"""Where the build's embarrassingly parallel work runs: this process (``LocalEngine``) or a Ray cluster
(``indexer.ray_engine.RayEngine``). Both write the same shard files and the same index file, so the
rest of the build, resuming and the store are one code path.

An engine does two things: ``embed`` (text shards through an encoder) and ``map_blocks`` (block work:
the IVF writer's ``ivf_blocks.add_block`` and near-dedup's ``dedup.pairs_block``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nearest_prompt.common.errors import InputError

from .config import ENGINES
from .encoding import TextEncoding, encode_fn
from .ivf_blocks import map_here
from .prompt_file import PromptFile
from .shards import embed_in_shards


class LocalEngine:
    name = "local"

    def embed(self, prompts: PromptFile, encoding: TextEncoding, *, dim: int, folder: Path, shard_size: int,
              batch_size: int, dtype: Any, desc: str, progress: bool) -> list[Path]:
        return embed_in_shards(prompts, encode=encode_fn(encoding.kind, encoding.load()), dim=dim, folder=folder,
                               shard_size=shard_size, batch_size=batch_size, dtype=dtype, desc=desc,
                               progress=progress)

    def map_blocks(self, fn: Callable[..., Any], shared: tuple, per_task: list[tuple]) -> Iterator[Any]:
        return map_here(fn, shared, per_task)

    def close(self) -> None:
        pass


def open_engine(name: str, *, address: str | None = None, workers: int | None = None,
                gpus_per_worker: float = 0.0) -> Any:
    if name == "local":
        return LocalEngine()
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}", param="engine")
