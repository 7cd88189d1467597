"""Names and version of the store format."""

FORMAT_NAME = "nearest-prompt-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROMPTS = "prompts.arrow"
MINILM = "minilm.npy"
CLIP_INDEX = "clip.faiss"
MINILM_INDEX = "minilm.faiss"
FILES = (PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX)

# Search spaces: each has a FAISS index file and an entry in the manifest. A third space (a second CLIP
# model, a fragment index) is a new entry here, not a copy of the code that serves the first two.
SPACES = ("clip", "minilm")
INDEX_FILES = {"clip": CLIP_INDEX, "minilm": MINILM_INDEX}
MANIFEST_INDEX_KEYS = {"clip": "index", "minilm": "minilm_index"}

BLOCK_BYTES = 64 << 20  # files are checksummed in blocks of this size too (sampled checks at open)
