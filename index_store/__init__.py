"""The on-disk index store: one self-describing directory.

Layout (format version 1)::

    manifest.json   format, rows, models, indexes, build options, versions, file checksums
    prompts.arrow   Arrow IPC file, columns id (int64, = row) and prompt (string)
    minilm.npy      float16 [rows, 384], unit all-MiniLM-L6-v2 vectors
    clip.faiss      FAISS index over unit CLIP text vectors, inner product  (space "clip")
    minilm.faiss    FAISS index over the MiniLM vectors                     (space "minilm")

Row-id contract: faiss id i (both indexes) == prompts.arrow row i (id column
== i) == minilm.npy row i; checked on open.
"""

from .format import FILES, FORMAT_NAME, FORMAT_VERSION, SPACES
from .manifest import FileInfo, IndexInfo, Manifest
from .reader import Store, is_store, open_store
from .writer import StoreWriter, check_target, orphans

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FILES", "SPACES", "Manifest", "IndexInfo", "FileInfo", "Store",
           "open_store", "is_store", "StoreWriter", "check_target", "orphans"]
