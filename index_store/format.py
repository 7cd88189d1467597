"""Names and version of the store format."""

FORMAT_NAME = "nearest-prompt-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROMPTS = "prompts.arrow"
MINILM = "minilm.npy"
CLIP_INDEX = "clip.faiss"
MINILM_INDEX = "minilm.faiss"
FILES = (PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX)
