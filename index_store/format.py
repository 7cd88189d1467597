"""Names and versions of the store format."""

FORMAT_NAME = "nearest-prompt-index"
FORMAT_VERSION = 3  # 2 adds the fragment vocabulary; 3 faiss's on-disk IVF lists and every space's vectors
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
PROMPTS = "prompts.arrow"
MINILM = "minilm.npy"
CLIP_INDEX = "clip.faiss"
MINILM_INDEX = "minilm.faiss"
CLIP_VECTORS = "clip.npy"  # version 3: float16 [rows, d] unit CLIP text vectors (exact rescoring, fusion)
FILES = (PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX)  # every version has these
REMOVED = "removed.npy"  # version 3, once prompts are removed: bool [rows], True where a row was removed
IVFDATA_SUFFIX = ".ivfdata"  # version 3: an IVF index's lists, in faiss's on-disk layout, beside its file

# Search spaces: each has a FAISS index file and an entry in the manifest. A third space (a second CLIP
# model) is a new entry here, not a copy of the code that serves the first two.
SPACES = ("clip", "minilm")
INDEX_FILES = {"clip": CLIP_INDEX, "minilm": MINILM_INDEX}
VECTOR_FILES = {"clip": CLIP_VECTORS, "minilm": MINILM}  # each space's stored vectors (version 3; MiniLM always)
MANIFEST_INDEX_KEYS = {"clip": "index", "minilm": "minilm_index"}

# The fragment vocabulary (version 2): fragments.arrow (id, fragment, count) and, per space, the
# fragments' unit vectors (float16 .npy) and a FAISS index over them. Row-id contract as for prompts.
FRAGMENTS = "fragments.arrow"
FRAGMENT_VECTORS = {"clip": "fragments_clip.npy", "minilm": "fragments_minilm.npy"}
FRAGMENT_INDEX_FILES = {"clip": "fragments_clip.faiss", "minilm": "fragments_minilm.faiss"}
FRAGMENT_FILES = (FRAGMENTS, *FRAGMENT_VECTORS.values(), *FRAGMENT_INDEX_FILES.values())


def files_of(version: int) -> tuple[str, ...]:
    """The files every store of format ``version`` holds (its manifest may list more: IVF lists files)."""
    return FILES + (FRAGMENT_FILES if version >= 2 else ()) + ((CLIP_VECTORS,) if version >= 3 else ())


def ivfdata_name(index_file: str) -> str:
    """The lists file of an IVF index file (``clip.faiss`` -> ``clip.ivfdata``), in the same folder."""
    return index_file.rsplit(".", 1)[0] + IVFDATA_SUFFIX


BLOCK_BYTES = 64 << 20  # files are checksummed in blocks of this size too (sampled checks at open)
