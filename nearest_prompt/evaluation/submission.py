"""Competition submission files (``imgId_eId,val``, 384 rows per image) and .npy output."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nearest_prompt.common.atomic import write_bytes_atomic
from nearest_prompt.common.errors import InputError

HEADER = ("imgId_eId", "val")


def duplicate_ids(image_ids: Sequence[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    return sorted(i for i, c in Counter(image_ids).items() if c > 1)


def _check(image_ids: Sequence[str], vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or len(image_ids) != len(vectors):
        raise InputError(f"{len(image_ids)} image ids for vectors of shape {vectors.shape}")
    dupes = duplicate_ids(image_ids)
    if dupes:
        raise InputError(f"duplicate image ids (file stems) {dupes[:5]}: rename or predict them separately")
    bad = [i for i in image_ids if "," in i or "\n" in i]
    if bad:
        raise InputError(f"image id {bad[0]!r} cannot be written to a submission (comma or newline)")


def write_submission(path: str | Path, image_ids: Sequence[str], vectors: np.ndarray) -> None:
    """Rows ``{imgId}_{e},{value}`` for e in 0..d-1, images in the given order; atomic."""
    vectors = np.asarray(vectors, dtype=np.float32)
    _check(image_ids, vectors)
    buf = io.StringIO()
    buf.write(",".join(HEADER) + "\n")
    d = vectors.shape[1]
    for img, vec in zip(image_ids, vectors):
        buf.writelines(f"{img}_{e},{v:.9g}\n" for e, v in zip(range(d), vec.tolist()))
    write_bytes_atomic(path, buf.getvalue().encode())


def read_submission(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Inverse of ``write_submission``: image ids in file order and their [n, d] vectors."""
    path = Path(path)
    rows: dict[str, dict[int, float]] = {}
    first: dict[str, int] = {}  # imgId_eId -> its line
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != HEADER:
                raise InputError(f"{path}: not a submission file (header must be imgId_eId,val)")
            for line in reader:
                key, val = line
                if key in first:
                    raise InputError(f"{path}:{reader.line_num}: {key} again (first on line {first[key]}): image "
                                     f"{key.rpartition('_')[0]!r} is given twice; give each image once")
                first[key] = reader.line_num
                img, _, e = key.rpartition("_")
                rows.setdefault(img, {})[int(e)] = float(val)
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such submission file") from e
    except InputError:
        raise
    except (ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{path}: malformed submission row ({str(e)[:120]})") from e
    ids = list(rows)
    if not ids:
        return ids, np.empty((0, 0), dtype=np.float32)
    d = len(rows[ids[0]])
    out = np.empty((len(ids), d), dtype=np.float32)
    for i, img in enumerate(ids):
        if sorted(rows[img]) != list(range(d)):
            raise InputError(f"{path}: image {img} does not have embedding rows 0..{d - 1}")
        out[i] = [rows[img][e] for e in range(d)]
    return ids, out


def ids_path(npy_path: str | Path) -> Path:
    p = Path(npy_path)
    return p.with_name(p.stem + ".ids.txt")


def write_npy(path: str | Path, image_ids: Sequence[str], vectors: np.ndarray) -> Path:
    """``FILE.npy`` (float32 [n, d]) plus ``FILE.ids.txt`` (one image id a line, same order)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    _check(image_ids, vectors)
    buf = io.BytesIO()
    np.save(buf, vectors)
    write_bytes_atomic(path, buf.getvalue())
    write_bytes_atomic(ids_path(path), ("\n".join(image_ids) + "\n").encode())
    return ids_path(path)


def confidence_path(path: str | Path) -> Path:
    """``NAME.confidence.csv`` beside a prediction file ``NAME`` (``sub.csv.confidence.csv``,
    ``sub.npy.confidence.csv``: named after the whole file name, so that the two never overwrite each other)."""
    p = Path(path)
    return p.with_name(p.name + ".confidence.csv")


def write_confidence(path: str | Path, image_ids: Sequence[str], confidence: np.ndarray,
                     top_score: np.ndarray) -> Path:
    """Sidecar CSV ``imgId,confidence,top_score`` for ensembles; returns its path."""
    buf = io.StringIO()
    buf.write("imgId,confidence,top_score\n")
    for img, c, t in zip(image_ids, confidence.tolist(), top_score.tolist()):
        buf.write(f"{img},{c:.6f},{t:.6f}\n")
    write_bytes_atomic(path, buf.getvalue().encode())
    return Path(path)
