"""Build an index store from prompt corpora: ``indexer.build(files, out, config=BuildConfig(...))``."""

from .build import BuildResult, build
from .config import DEFAULT_NEAR_DUP_THRESHOLD, BuildConfig

__all__ = ["build", "BuildConfig", "BuildResult", "DEFAULT_NEAR_DUP_THRESHOLD"]
