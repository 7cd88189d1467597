"""Build an index store from prompt corpora (``indexer.build(files, out, config=BuildConfig(...))``), add
prompts to it (``indexer.add(files, index)``), remove them (``indexer.remove(index, where=...)``) and add a CLIP
space (``indexer.add_space(index, "NAME=MODEL")``)."""

from .add import AddResult, add
from .build import BuildResult, build
from .config import DEFAULT_NEAR_DUP_THRESHOLD, BuildConfig, SpaceSpec
from .remove import RemoveResult, remove
from .spaces import AddSpaceResult, add_space

__all__ = ["build", "add", "remove", "add_space", "BuildConfig", "SpaceSpec", "BuildResult", "AddResult",
           "RemoveResult", "AddSpaceResult", "DEFAULT_NEAR_DUP_THRESHOLD"]
