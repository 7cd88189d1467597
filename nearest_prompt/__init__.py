"""nearest-prompt: which text prompt made this image?

This package is the roof: the command line (``cli``, ``cli_eval``), which
parses and prints and holds no domain logic. The library lives below it in
``common``, ``encoders``, ``index_store``, ``indexer``, ``retriever`` and
``evaluation`` (see docs/architecture.md).
"""

from common.version import __version__

__all__ = ["__version__"]
