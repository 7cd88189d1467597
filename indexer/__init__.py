"""Build an index store from prompt corpora (``indexer.build(files, out, config=BuildConfig(...))``), add
prompts to it (``indexer.add(files, index)``) and remove them (``indexer.remove(index, where=...)``)."""

from .add import AddResult, add
from .build import BuildResult, build
from .config import DEFAULT_NEAR_DUP_THRESHOLD, BuildConfig
from .remove import RemoveResult, remove

__all__ = ["build", "add", "remove", "BuildConfig", "BuildResult", "AddResult", "RemoveResult",
           "DEFAULT_NEAR_DUP_THRESHOLD"]
