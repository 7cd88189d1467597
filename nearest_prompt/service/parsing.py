"""What requests carry, made into arrays and images, and what goes wrong with them, made into one line.

``ClientError`` is the service's HTTP error: a status, one line and headers (answered as
``{"error": "<one line>"}``). JSON bodies are parsed by ``parse_json``: numbers too long for an integer
become a huge value that validation then calls out of range, nesting that Python's parser cannot follow is
refused. Images come as base64 (``b64_image``; line breaks, as the ``base64`` tool writes them, are
fine) or as upload files, and are decoded in parallel threads (``decode_images``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import load_image
from nearest_prompt.retriever import Retriever

MAX_INT_DIGITS = 30  # longer integers in a JSON body are out of every range this API has


class ClientError(HTTPException):
    """A request the client can fix (4xx) or should retry (503): answered as ``{"error": "<one line>"}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=" ".join(message.split()), headers=headers)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:  # Python refuses to convert 4,300+ digits; any range refuses these
        return -(10 ** MAX_INT_DIGITS) if text.startswith("-") else 10 ** MAX_INT_DIGITS
    return int(text)


def parse_json(body: bytes) -> Any:
    """A JSON body as Python values; ``ClientError`` 400 for what is not JSON or nests too deeply."""
    try:
        return json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise ClientError(400, "the body nests arrays or objects deeper than this server parses; send flat JSON "
                               "(an embedding is one list of numbers)") from None
    except UnicodeDecodeError:
        raise ClientError(400, "the body is not valid JSON (not UTF-8 text)") from None
    except ValueError as e:  # json.JSONDecodeError among them
        raise ClientError(400, f"the body is not valid JSON ({str(e)[:80]})") from None


def b64_image(text: str, *, field: str) -> bytes:
    """The bytes of a base64 image (a ``data:`` URL is fine, and so are line breaks)."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]  # a data: URL, as a browser's FileReader gives
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, f"{field}: not valid base64; send the image file's bytes base64-encoded") from None
    if not data:
        raise ClientError(400, f"{field}: empty image")
    return data


def validation_message(e: ValidationError | Any) -> tuple[int, str]:
    """Status and one line for a validation error (FastAPI's ``RequestValidationError`` or pydantic's)."""
    errors = e.errors()
    upload_extra = [x for x in errors if x.get("type") == "extra_forbidden" and _is_upload(x.get("input"))]
    if upload_extra:
        name = upload_extra[0]["loc"][-1]
        return 422, f"{name}: unknown file field; send images as 'image'"
    first = errors[0]
    kind = first.get("type")
    if kind == "json_invalid":
        return 400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
    if kind == "missing" and tuple(first.get("loc", ())) == ("body",):
        return 400, "empty body: send JSON (or multipart form data with an image file)"
    extra = [x for x in errors if x.get("type") == "extra_forbidden"]
    first = extra[0] if extra else first
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid')}{more}"


def _is_upload(value: Any) -> bool:
    return hasattr(value, "filename") or (isinstance(value, dict) and "filename" in value)


async def read_uploads(files: list[Any], *, one: bool) -> list[bytes]:
    """The bytes of uploaded image files; ``one``: exactly one is allowed."""
    if not files:
        raise ClientError(400, "no image: send the file in the form field 'image'")
    if one and len(files) > 1:
        raise ClientError(400, f"one image per request here, got {len(files)}")
    return [await f.read() for f in files]


class Base64Image(str):
    """An image as the base64 text of a JSON field (decoded with the image, on a thread); ``field`` names it."""

    field: str = "image"

    @classmethod
    def of(cls, text: str, field: str) -> Base64Image:
        s = cls(text)
        s.field = field
        return s


def _decode(source: bytes | Base64Image, max_pixels: int) -> Any:
    data = b64_image(source, field=source.field) if isinstance(source, Base64Image) else source
    return load_image(data, max_pixels=max_pixels)


async def decode_images(sources: list[bytes | Base64Image], *, max_pixels: int) -> list[Any]:
    """RGB images from encoded bytes or base64 text, decoded in parallel threads (off the event loop); each
    is checked against ``max_pixels`` (the decompression-bomb limit) on its own."""
    try:
        return list(await asyncio.gather(*(run_in_threadpool(_decode, s, max_pixels) for s in sources)))
    except InputError as e:
        status = 413 if e.param == "max_pixels" else 400
        raise ClientError(status, str(e).replace("raise max_pixels", "start the server with a larger --max-pixels")) \
            from None


def neighbors_of(r: Retriever, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """One query's neighbours as the service answers them: id, prompt, score, weight (its share of a prediction
    blended from them, by the default weighting) and the store's kept columns."""
    from nearest_prompt.retriever import Neighbors, Weighting
    from nearest_prompt.retriever.weighting import neighbor_shares

    valid = ids >= 0
    shares = neighbor_shares(Neighbors(ids[None], scores[None]), Weighting())[0][valid]
    ids = ids[valid]
    return [{"id": int(i), "prompt": p, "score": float(s), "weight": float(w), "metadata": m}
            for i, s, p, w, m in zip(ids, scores[valid], r.prompts(ids), shares, r.store.metadata(ids))]


def unit_embedding(values: list[float], dim: int, *, field: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.shape != (dim,):
        raise ClientError(400, f"{field}: {len(values)} numbers, the index's CLIP space has {dim}")
    norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else float("nan")
    if not norm > 0 or not np.isfinite(norm):
        raise ClientError(400, f"{field}: must be finite and not all zero")
    return (v / norm)[None]


def parse_captions(text: str | None, n: int) -> list[str | None] | None:
    """The ``captions`` form field: a JSON list of one caption (or null) per image."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ClientError(400, 'captions: not valid JSON; send a JSON list with one caption per image, e.g. '
                               '["a cat", null]') from None
    if not isinstance(value, list) or not all(c is None or isinstance(c, str) for c in value):
        raise ClientError(400, 'captions: must be a JSON list of strings or nulls, e.g. ["a cat", null]')
    return check_captions(value, n)


def check_captions(captions: list[str | None] | None, n: int) -> list[str | None] | None:
    if captions is not None and len(captions) != n:
        raise ClientError(400, f"captions: {len(captions)} for {n} images; give one per image (null where there "
                               "is none)")
    return captions
