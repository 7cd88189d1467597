"""Safe image loading: any mode to RGB, decompression-bomb guard, folder expansion."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb limit (about 9459 x 9459)


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file fully and return it as 8-bit RGB.

    Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit or
    float images are converted; EXIF orientation is applied. Raises
    ``InputError`` for files that are not images, are truncated, or have
    more than ``max_pixels`` pixels (a decompression bomb).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # we apply our own limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(
                        f"{path}: {w}x{h} pixels is over the limit of {max_pixels} "
                        "(possible decompression bomb); resize it, or raise --max-pixels"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: refused as a decompression bomb ({e})") from e
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InputError(f"{path}: is a directory") from e
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for bad/truncated data
        raise InputError(f"{path}: not a readable image ({str(e).splitlines()[0][:120]})") from e


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


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class ImageSet:
    """Usable image paths (in a stable order) plus the folder files skipped, with reasons."""

    paths: list[Path]
    skipped: list[Skipped]
    explicit: list[Path]  # paths named on their own (not found in a folder): failures there are errors


def collect_images(args: Iterable[str | os.PathLike], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Expand files and folders into image paths, checking each header.

    A file named explicitly must be a readable image (``InputError`` if not).
    Inside a folder, unreadable files are skipped and reported; it is an error
    only if no usable image remains.
    """
    paths: list[Path] = []
    skipped: list[Skipped] = []
    explicit: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            for child in sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith(".")):
                reason = _header_problem(child, max_pixels)
                if reason:
                    skipped.append(Skipped(str(child), reason))
                else:
                    paths.append(child)
        elif p.exists():
            reason = _header_problem(p, max_pixels)
            if reason:
                raise InputError(f"{p}: {reason}")
            paths.append(p)
            explicit.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not paths:
        where = ", ".join(str(a) for a in args) or "(nothing given)"
        raise InputError(f"no usable images in {where}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return ImageSet(paths, skipped, explicit)


def _header_problem(path: Path, max_pixels: int) -> str | None:
    """A cheap check of the header; full decoding errors surface in ``load_image``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Exception as e:
        return f"not an image ({type(e).__name__})"
    if w * h > max_pixels:
        return f"{w}x{h} pixels is over the limit of {max_pixels} (possible decompression bomb)"
    return None
