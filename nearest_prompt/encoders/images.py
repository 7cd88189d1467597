"""Safe image loading: any mode to RGB, decompression-bomb guard, folder expansion."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from nearest_prompt.common.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # tried after a bare name
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb limit (about 9459 x 9459)
# our own check decides first (on the header, below the limit); Pillow's warning between its limit and twice it
# would only repeat it
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """``set_pixel_limit`` for the duration of a command, the previous limit restored afterwards."""
    old = Image.MAX_IMAGE_PIXELS
    set_pixel_limit(max_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def set_pixel_limit(max_pixels: int) -> None:
    """Run Pillow's own decompression-bomb check (which refuses images and animation frames over twice its
    limit) at ``max_pixels``. Pillow keeps the limit process-wide, so the adapters (the CLI, the service) call
    this once with their --max-pixels; ``load_image`` then checks every image against its own ``max_pixels``
    too, from the header, without changing anything shared, so images decode in parallel threads."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def load_image(path: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image (a file, or its bytes: ``source`` in messages) fully and return it as 8-bit RGB.

    Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit or
    float images are converted; EXIF orientation is applied. Raises
    ``InputError`` for files that are not images, are truncated, or have
    more than ``max_pixels`` pixels (a decompression bomb).
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        if not len(path):
            raise InputError("the image is empty (0 bytes)", param="image")
        source: Any = io.BytesIO(path)
        path = Path("image")
    else:
        path = Path(path)
        source = path
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(_bomb_message(path, w, h, max_pixels), param="max_pixels")
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except InputError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check (set_pixel_limit): frames included
        raise InputError(f"{path}: over the limit of {max_pixels:,} pixels (a guard against decompression bombs); "
                         "resize the image, or raise max_pixels if it is genuine", param="max_pixels") from e
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InputError(f"{path}: is a directory") from e
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for bad/truncated data
        why = "not a known image format" if "cannot identify image file" in str(e) else str(e).splitlines()[0][:120]
        raise InputError(f"{path}: not a readable image ({why})") from e


def _bomb_message(path: Path, w: int, h: int, max_pixels: int) -> str:
    return (f"{path}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} (a guard against "
            "decompression bombs); resize the image, or raise max_pixels if it is genuine")


def to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if mode != "RGB":
        im = im.convert("RGB")
    return im


def find_image(ref: str | os.PathLike, bases: Iterable[Path]) -> Path | None:
    """The file an image reference names, or None: the path itself, else in each of ``bases`` or its ``images/``
    folder (the name as given, or with an image suffix added). How a pairs file and a corpus's image column find
    their images."""
    ref_path = Path(ref)
    candidates = [ref_path]
    if not ref_path.is_absolute():
        for base in bases:
            found = [base / ref_path, base / "images" / ref_path]
            candidates += found + [c.with_name(c.name + s) for c in found for s in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason without its details (``not an image``, ``over the pixel limit``, ...)."""
        return self.reason.split(" (", 1)[0].split(":", 1)[0]


@dataclass
class ImageSet:
    """Usable image paths (in a stable order) plus the folder files skipped, with reasons."""

    paths: list[Path]
    skipped: list[Skipped]
    explicit: list[Path]  # paths named on their own (not found in a folder): failures there are errors


def summarize_skipped(skipped: list[Skipped]) -> list[str]:
    """One line per kind of reason: how many files, and the first of them with its full reason."""
    counts = Counter(s.kind for s in skipped)
    first = {}
    for s in skipped:
        first.setdefault(s.kind, s)
    return [f"{n} file(s) {kind}, e.g. {first[kind].path}: {first[kind].reason}" for kind, n in counts.items()]


def collect_images(args: Iterable[str | os.PathLike], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   recursive: bool = False) -> ImageSet:
    """Expand files and folders (their subfolders too with ``recursive``) into image paths, checking
    each header.

    A file named explicitly must be a readable image (``InputError`` if not).
    Inside a folder, unreadable files are skipped and reported; it is an error
    only if no usable image remains, and the error says why files were skipped
    and which subfolders were not looked into.
    """
    args = list(args)
    paths: list[Path] = []
    skipped: list[Skipped] = []
    explicit: list[Path] = []
    subfolders: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            children = sorted(p.rglob("*") if recursive else p.iterdir())
            for child in children:
                if any(part.startswith(".") for part in child.relative_to(p).parts):
                    continue
                if child.is_dir():
                    if not recursive:
                        subfolders.append(child)
                    continue
                reason = _header_problem(child, max_pixels)
                if reason:
                    skipped.append(Skipped(str(child), reason))
                else:
                    paths.append(child)
        elif p.exists():
            reason = _header_problem(p, max_pixels)
            if reason:
                raise InputError(f"{p}: {reason}", param="max_pixels" if "pixel limit" in reason else "images")
            paths.append(p)
            explicit.append(p)
        else:
            raise InputError(f"{p}: no such file or folder", param="images")
    if not paths:
        where = ", ".join(str(a) for a in args) or "(nothing given)"
        why = "; ".join(summarize_skipped(skipped))
        sub = (f"; it has subfolders ({', '.join(s.name for s in subfolders[:5])}): name them, or search them "
               "with recursive (--recursive)") if subfolders else ""
        raise InputError(f"no usable images in {where}" + (f" (skipped {why})" if why else "") + sub,
                         param="images")
    return ImageSet(paths, skipped, explicit)


def _header_problem(path: Path, max_pixels: int) -> str | None:
    """A cheap check of the header; full decoding errors surface in ``load_image``."""
    try:
        with Image.open(path) as im:  # the header only; the check is ours, below
            w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own, at twice its limit (set_pixel_limit)
        return (f"over the pixel limit (limit {max_pixels:,} pixels, a guard against decompression bombs): raise "
                "max_pixels (--max-pixels) if it is genuine")
    except Exception as e:
        return f"not an image ({type(e).__name__})"
    if w * h > max_pixels:
        return (f"over the pixel limit ({w}x{h} = {w * h:,} pixels, limit {max_pixels:,}, a guard against "
                "decompression bombs): raise max_pixels (--max-pixels) if it is genuine")
    return None
