"""The readers of the files eval, predict and blend take besides images: CSV tables with column
aliases (pairs, captions, confidence sidecars), prediction files (``.csv`` submissions or ``.npy`` +
``.ids.txt``), and the one ``.csv``/``.npy`` output dispatch.

Every problem is an ``InputError`` naming the file (and the parameter it came in), never a traceback:
not UTF-8, a quote that never closes (with its line), a missing column, no rows, a non-numeric value.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearest_prompt.common.atomic import make_parent
from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import find_image

from .submission import ids_path, read_submission, write_npy, write_submission

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "imgId", "path", "file", "image_path", "filename", "id")
CAPTION_COLUMNS = ("caption", "prompt", "text")
PREDICTION_SUFFIXES = (".csv", ".npy")


@dataclass(frozen=True)
class Table:
    path: Path
    columns: dict[str, str]  # role -> the column that plays it
    rows: list[dict[str, str]]
    lines: list[int]  # the line each row starts on

    def values(self, role: str) -> list[str]:
        return [r[self.columns[role]] for r in self.rows]

    def check_unique(self, role: str, *, key: Callable[[str], str] = lambda v: v, param: str, what: str) -> None:
        """Refuse a table in which two rows give the same ``role`` (after ``key``), naming the value and both lines."""
        first: dict[str, int] = {}
        for value, line in zip(self.values(role), self.lines):
            k = key(value)
            if k in first:
                raise InputError(f"{self.path}:{line}: {what} {k!r} again (first on line {first[k]}); give each "
                                 "once", param=param)
            first[k] = line


def read_table(path: str | Path, *, param: str, roles: dict[str, Sequence[str]]) -> Table:
    """A CSV file with a header: for each role, the first of its column aliases that the header has."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file", param=param)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark, as Excel writes, is read
            reader = csv.DictReader(f, strict=True)
            rows, lines, start = [], [], 2
            try:
                for row in reader:
                    rows.append(row)
                    lines.append(start)
                    start = reader.line_num + 1
            except csv.Error as e:
                raise InputError(f"{path}:{start}: malformed CSV ({e}; a quote that never closes?); fix the "
                                 "quoting", param=param) from None
            header = reader.fieldnames or []
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", param=param) from None
    columns = {}
    for role, aliases in roles.items():
        found = next((c for c in aliases if c in header), None)
        if found is None:
            raise InputError(f"{path}: no {role} column (looked for {', '.join(aliases)}; the header has "
                             f"{', '.join(header) or 'nothing'})", param=param)
        columns[role] = found
    if not rows:
        raise InputError(f"{path}: no rows below the header", param=param)
    bad = next((i for i, r in enumerate(rows) if None in r or None in r.values()), None)
    if bad is not None:  # DictReader's marks of a row longer (None key) or shorter (None value) than the header
        raise InputError(f"{path}:{lines[bad]}: the row does not have as many fields as the header", param=param)
    return Table(path, columns, rows, lines)


def read_pairs(path: str | Path, *, prompt_column: str | None = None) -> tuple[list[Path], list[str]]:
    """Images (resolved next to the CSV or in its ``images/`` folder) and their true prompts."""
    table = read_table(path, param="pairs", roles={"prompt": (prompt_column or "prompt",),
                                                   "image": IMAGE_COLUMNS})
    base = table.path.parent
    return [_resolve_image(base, ref) for ref in table.values("image")], table.values("prompt")


def _resolve_image(base: Path, ref: str) -> Path:
    found = find_image(ref, [base])
    if found is not None:
        return found
    raise InputError(f"image {ref!r} of the pairs file not found (looked in {base} and {base / 'images'})",
                     param="pairs")


@dataclass(frozen=True)
class Captions:
    by_image: dict[str, str]  # image id (file stem) -> caption
    empty: list[str]  # image ids whose caption is empty (skipped)


def read_captions(path: str | Path) -> Captions:
    """Captions by image id (the file stem of the image column); empty captions are listed, not fatal."""
    table = read_table(path, param="captions", roles={"image": IMAGE_COLUMNS, "caption": CAPTION_COLUMNS})
    table.check_unique("image", key=lambda ref: Path(ref).stem, param="captions", what="a caption for image")
    out: dict[str, str] = {}
    empty: list[str] = []
    for ref, caption in zip(table.values("image"), table.values("caption")):
        img = Path(ref).stem
        if caption.strip():
            out[img] = caption
        else:
            empty.append(img)
    return Captions(out, empty)


def read_confidence(path: str | Path, image_ids: Sequence[str]) -> np.ndarray:
    """The ``confidence`` column of a predict sidecar, for ``image_ids`` in that order."""
    table = read_table(path, param="confidence", roles={"image": ("imgId",), "confidence": ("confidence",)})
    table.check_unique("image", param="confidence", what="a confidence for image")
    found: dict[str, float] = {}
    for img, value in zip(table.values("image"), table.values("confidence")):
        try:
            found[img] = float(value)
        except ValueError:
            raise InputError(f"{table.path}: confidence {value!r} of image {img!r} is not a number",
                             param="confidence") from None
        if not np.isfinite(found[img]) or not 0.0 <= found[img] <= 1.0:
            raise InputError(f"{table.path}: confidence of image {img!r} is {value}; a confidence is a number in "
                             "[0, 1]", param="confidence")
    missing = [img for img in image_ids if img not in found]
    if missing:
        raise InputError(f"{table.path} has no row for image {missing[0]!r}", param="confidence")
    return np.array([found[img] for img in image_ids])


def check_prediction_path(path: str | Path, *, param: str = "out") -> Path:
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_SUFFIXES:
        raise InputError(f"{path}: use a .csv (competition submission) or .npy file name", param=param)
    return path


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Image ids and their [n, d] vectors from a ``.csv`` submission or ``.npy`` + ``.ids.txt``."""
    path = check_prediction_path(path, param="inputs")
    if path.suffix.lower() == ".csv":
        ids, vectors = read_submission(path)
    else:
        if not path.is_file() or not ids_path(path).is_file():
            raise InputError(f"{path}: need the .npy file and {ids_path(path).name} beside it", param="inputs")
        try:
            vectors = np.load(path, allow_pickle=False)
            ids = ids_path(path).read_text(encoding="utf-8").split()
        except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a readable .npy prediction file ({str(e)[:120]})",
                             param="inputs") from None
        seen: dict[str, int] = {}
        for line, img in enumerate(ids, 1):
            if img in seen:
                raise InputError(f"{ids_path(path)}:{line}: image id {img!r} again (first on line {seen[img]}); give "
                                 "each image once", param="inputs")
            seen[img] = line
        if vectors.ndim != 2 or len(vectors) != len(ids) or not np.issubdtype(vectors.dtype, np.floating):
            raise InputError(f"{path}: holds an array of shape {vectors.shape} and type {vectors.dtype} for "
                             f"{len(ids)} image ids; expected float [{len(ids)}, d]", param="inputs")
    if not ids:
        raise InputError(f"{path}: holds no predictions", param="inputs")
    if not np.isfinite(vectors).all():
        raise InputError(f"{path}: holds non-finite values", param="inputs")
    return ids, vectors


def write_predictions(path: str | Path, image_ids: Sequence[str], vectors: np.ndarray) -> list[Path]:
    """``.csv`` (submission format) or ``.npy`` + ``.ids.txt``; returns the files written. A folder that does
    not exist yet is created (and said so in the log)."""
    path = check_prediction_path(path)
    made_parent(path)
    if path.suffix.lower() == ".csv":
        write_submission(path, image_ids, vectors)
        return [path]
    return [path, write_npy(path, image_ids, vectors)]


def made_parent(path: str | Path) -> None:
    """Create the folder of an output file when it is missing, and say so (a mistyped folder shows up)."""
    made = make_parent(path)
    if made is not None:
        log.warning("created the folder %s for %s (it did not exist)", made, Path(path).name)
