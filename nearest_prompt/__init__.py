"""nearest-prompt: which text prompt made this image?

A retrieval index over known text-to-image prompts. The front door::

    from nearest_prompt import BuildConfig, Retriever, build

    build(["prompts.parquet"], "my-index", config=BuildConfig(clip_model="local-dir:/models/vit-h-14"))
    r = Retriever.open("my-index")
    pred = r.predict(r.embed_images(["a.png"]).vectors)   # unit 384-d vectors and a confidence

The names below are imported on first use, so ``import nearest_prompt`` stays cheap. The packages
beneath it are floors (docs/architecture.md): ``common``, ``encoders``, ``index_store``, ``indexer`` and
``retriever``, ``composer``, ``evaluation``, and the adapters ``cli`` and ``service``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .common.version import __version__

_EXPORTS = {
    "build": "indexer", "BuildConfig": "indexer", "BuildResult": "indexer", "add": "indexer", "remove": "indexer",
    "add_space": "indexer",
    "Retriever": "retriever", "Neighbors": "retriever", "Prediction": "retriever", "Weighting": "retriever",
    "QueryResult": "retriever", "SearchPlan": "retriever",
    "Composer": "composer", "ComposeOptions": "composer", "Composition": "composer",
    "open_store": "index_store", "Store": "index_store",
    "blend_predictions": "evaluation.ensemble", "evaluate": "evaluation.run",
    "NearestPromptError": "common.errors", "InputError": "common.errors", "StoreError": "common.errors",
    "ModelError": "common.errors", "BusyError": "common.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
