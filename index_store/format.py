"""Names and versions of the store format."""

FORMAT_NAME = "nearest-prompt-index"
FORMAT_VERSION = 2  # 2 adds the fragment vocabulary; version-1 stores still open (without it)
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
PROMPTS = "prompts.arrow"
MINILM = "minilm.npy"
CLIP_INDEX = "clip.faiss"
MINILM_INDEX = "minilm.faiss"
FILES = (PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX)  # every version has these

# Search spaces: each has a FAISS index file and an entry in the manifest. A third space (a second CLIP
# model) is a new entry here, not a copy of the code that serves the first two.
SPACES = ("clip", "minilm")
INDEX_FILES = {"clip": CLIP_INDEX, "minilm": MINILM_INDEX}
MANIFEST_INDEX_KEYS = {"clip": "index", "minilm": "minilm_index"}

# The fragment vocabulary (version 2): fragments.arrow (id, fragment, count) and, per space, the
# fragments' unit vectors (float16 .npy) and a FAISS index over them. Row-id contract as for prompts.
FRAGMENTS = "fragments.arrow"
FRAGMENT_VECTORS = {"clip": "fragments_clip.npy", "minilm": "fragments_minilm.npy"}
FRAGMENT_INDEX_FILES = {"clip": "fragments_clip.faiss", "minilm": "fragments_minilm.faiss"}
FRAGMENT_FILES = (FRAGMENTS, *FRAGMENT_VECTORS.values(), *FRAGMENT_INDEX_FILES.values())


def files_of(version: int) -> tuple[str, ...]:
    """The files a store of format ``version`` holds."""
    return FILES if version < 2 else FILES + FRAGMENT_FILES


BLOCK_BYTES = 64 << 20  # files are checksummed in blocks of this size too (sampled checks at open)
