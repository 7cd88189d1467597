"""The on-disk index store: one self-describing directory.

Layout (format version 4; docs/store-format.md says what older versions lack)::

    manifest.json   format, rows, spaces (models, indexes), build options, versions, file checksums
    prompts.arrow   Arrow IPC file, columns id (int64, = row), prompt (string) and the kept columns
    minilm.npy      float16 [rows, 384], unit all-MiniLM-L6-v2 vectors
    minilm.faiss    FAISS index over the MiniLM vectors                     (space "minilm")
    NAME.npy, NAME.faiss    per CLIP space NAME ("clip" by default): float16 unit vectors, FAISS index over them
    NAME-image.npy, NAME-image.faiss, NAME-image.rows.npy   an image space: CLIP image vectors of the prompts'
                    images, its index, and the rows that have one
    fragments.arrow                          fragment vocabulary: id, fragment, count (prompts holding it)
    fragments_clip.npy, fragments_minilm.npy float16 unit vectors of the fragments, one file per space
    fragments_clip.faiss, fragments_minilm.faiss   FAISS indexes over them

Row-id contract: faiss id i (both indexes) == prompts.arrow row i (id column
== i) == minilm.npy row i; checked on open. The same for fragment rows and
their files.
"""

from .format import FILES, FORMAT_NAME, FORMAT_VERSION, SPACES
from .manifest import FileInfo, FragmentsInfo, IndexInfo, Manifest, SpaceInfo
from .reader import Fragments, Store, is_store, open_store
from .writer import StoreWriter, check_target, orphans

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FILES", "SPACES", "Manifest", "IndexInfo", "SpaceInfo", "FragmentsInfo", "Fragments",
           "FileInfo", "Store", "open_store", "is_store", "StoreWriter", "check_target", "orphans"]
