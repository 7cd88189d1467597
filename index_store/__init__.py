"""The on-disk index store: one self-describing directory.

Layout (format version 1)::

    manifest.json   format, rows, models, index, build options, versions, file checksums
    prompts.arrow   Arrow IPC file, columns id (int64, = row) and prompt (string)
    minilm.npy      float16 [rows, 384], unit all-MiniLM-L6-v2 vectors
    clip.faiss      FAISS index over unit CLIP text vectors, inner product
    minilm.faiss    FAISS index over the MiniLM vectors (text queries in MiniLM space)

Row-id contract: faiss id i (both indexes) == prompts.arrow row i (id column
== i) == minilm.npy row i; checked on open.
"""

from .format import FORMAT_NAME, FORMAT_VERSION, FILES
from .reader import Store, open_store
from .writer import StoreWriter, check_target

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FILES", "Store", "open_store", "StoreWriter", "check_target"]
