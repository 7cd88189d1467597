"""Names and versions of the store format."""

from __future__ import annotations

import re

FORMAT_NAME = "nearest-prompt-index"
FORMAT_VERSION = 4  # 2 the fragment vocabulary; 3 faiss's on-disk IVF lists and every space's vectors; 4 named
READABLE_VERSIONS = (1, 2, 3, 4)  # CLIP spaces (several models, image spaces)
MANIFEST = "manifest.json"
PROMPTS = "prompts.arrow"
MINILM = "minilm.npy"
CLIP_INDEX = "clip.faiss"
MINILM_INDEX = "minilm.faiss"
CLIP_VECTORS = "clip.npy"  # version 3: float16 [rows, d] unit CLIP text vectors (exact rescoring, fusion)
FILES = (PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX)  # every version has these
REMOVED = "removed.npy"  # version 3, once prompts are removed: bool [rows], True where a row was removed
IVFDATA_SUFFIX = ".ivfdata"  # version 3: an IVF index's lists, in faiss's on-disk layout, beside its file

# Search spaces. Every space has an index file NAME.faiss over its vectors NAME.npy (float16, one row a prompt;
# MiniLM's are minilm.npy), and an entry in the manifest. "minilm" is the answer's space; the others are CLIP
# spaces: "clip" is the one ``--clip`` builds, ``--space NAME=MODEL`` adds more (version 4), and a corpus with
# images adds an image space NAME-image for each CLIP space NAME (the CLIP image embeddings of the prompts'
# images, one row a prompt; NAME-image.rows.npy marks the rows that have one when not all do).
PRIMARY = "clip"  # the CLIP space of stores before version 4, and the default name of the first one
MINILM_SPACE = "minilm"
IMAGE_SUFFIX = "-image"
SPACES = (PRIMARY, MINILM_SPACE)  # the spaces of every store before version 4
SPACE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
RESERVED_SPACE_NAMES = ("minilm", "prompts", "manifest", "removed", "fragments", "fragments_clip", "fragments_minilm")


def index_file(space: str) -> str:
    """The FAISS index file of a space (``clip.faiss``, ``minilm.faiss``, ``big-image.faiss``)."""
    return f"{space}.faiss"


def vectors_file(space: str) -> str:
    """The float16 vectors of a space (``clip.npy``, ``minilm.npy``, ...)."""
    return f"{space}.npy"


def rows_file(space: str) -> str:
    """An image space's row mask (bool [rows]: the prompts that have an image), when not every prompt has one."""
    return f"{space}.rows.npy"


def image_space(text_space: str) -> str:
    return text_space + IMAGE_SUFFIX


def space_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a CLIP space (``--space NAME=MODEL``), or None."""
    if not SPACE_NAME.fullmatch(name):
        return (f"{name!r} is not a space name: use 1-32 lower-case letters, digits and '_', starting with a "
                "letter")
    if name in RESERVED_SPACE_NAMES:
        return f"{name!r} is a name the store uses for its own files; choose another"
    return None


# The fragment vocabulary (version 2): fragments.arrow (id, fragment, count) and, per space, the
# fragments' unit vectors (float16 .npy) and a FAISS index over them. Row-id contract as for prompts. Its "clip"
# vectors are of the store's first CLIP space.
FRAGMENTS = "fragments.arrow"
FRAGMENT_SPACES = (PRIMARY, MINILM_SPACE)
FRAGMENT_VECTORS = {"clip": "fragments_clip.npy", "minilm": "fragments_minilm.npy"}
FRAGMENT_INDEX_FILES = {"clip": "fragments_clip.faiss", "minilm": "fragments_minilm.faiss"}
FRAGMENT_FILES = (FRAGMENTS, *FRAGMENT_VECTORS.values(), *FRAGMENT_INDEX_FILES.values())


def files_of(version: int) -> tuple[str, ...]:
    """The files every store of format ``version`` holds (its manifest may list more: IVF lists files, more
    spaces, removed rows)."""
    base = (PROMPTS, MINILM, MINILM_INDEX) if version >= 4 else FILES
    return base + (FRAGMENT_FILES if version >= 2 else ()) + ((CLIP_VECTORS,) if version == 3 else ())


def ivfdata_name(index_file: str) -> str:
    """The lists file of an IVF index file (``clip.faiss`` -> ``clip.ivfdata``), in the same folder."""
    return index_file.rsplit(".", 1)[0] + IVFDATA_SUFFIX


BLOCK_BYTES = 64 << 20  # files are checksummed in blocks of this size too (sampled checks at open)
