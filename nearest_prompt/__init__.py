"""nearest-prompt: which text prompt made this image?

Packages: ``indexer`` (build), ``index_store`` (on-disk format),
``retriever`` (search and predict), ``nearest_prompt`` (encoders, images, CLI).
"""

__version__ = "0.1.0"
