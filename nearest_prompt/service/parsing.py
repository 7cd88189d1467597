"""Request parsing for the service: JSON or multipart bodies validated by the schemas, base64 and image
decoding under the server's limits, and the one-line errors (``ClientError``) they raise."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import load_image
from nearest_prompt.retriever import Retriever

from .schemas import MAX_IMAGES
from .settings import ServeSettings


class ClientError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def b64_image(text: str, *, field: str) -> bytes:
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # a data: URL, as a browser's FileReader gives
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, f"{field}: not valid base64; send the image file's bytes base64-encoded") from None
    if not data:
        raise ClientError(400, f"{field}: empty image")
    return data


def validation_message(e: ValidationError | RequestValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


async def parse_body(request: Request, model: type[BaseModel], *, file_field: str,
                     many: bool) -> tuple[Any, list[bytes]]:
    """A JSON body (images base64 inside), or multipart form data (image files in ``file_field``, options as
    form fields): the validated model and the raw image bytes of a multipart request."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_IMAGES, max_fields=100)
        except Exception as e:  # noqa: BLE001 - python-multipart's many parse errors
            raise ClientError(400, f"malformed multipart body ({str(e)[:120]})") from None
        files: list[bytes] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != file_field:
                    raise ClientError(422, f"{key}: unknown file field; send images as {file_field!r}")
                files.append(await value.read())
            elif key in fields:
                raise ClientError(422, f"{key}: given more than once")
            else:
                fields[key] = json.loads(value) if key == "captions" and value.startswith("[") else value
        if not files:
            raise ClientError(400, f"no image: send the file in the form field {file_field!r}")
        if not many and len(files) > 1:
            raise ClientError(400, f"one image per request here, got {len(files)}")
        placeholder = {"images": ["-"] * len(files)} if many else {"image": "-"}
        try:
            return model.model_validate({**fields, **placeholder}), files
        except ValidationError as e:
            raise ClientError(422, validation_message(e)) from None
    body = await request.body()
    if not body.strip():
        raise ClientError(400, "empty body: send JSON (or multipart form data with an image file)")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ClientError(400, "the body is not valid JSON") from None
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        raise ClientError(422, validation_message(e)) from None


async def decode_images(blobs: list[bytes], settings: ServeSettings) -> list[Any]:
    def decode(data: bytes) -> Any:
        return load_image(data, max_pixels=settings.max_pixels)

    try:
        return [await run_in_threadpool(decode, b) for b in blobs]
    except InputError as e:
        status = 413 if e.param == "max_pixels" else 400
        raise ClientError(status, str(e).replace("max_pixels", "the server's --max-pixels")) from None


def neighbors_of(r: Retriever, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    valid = ids >= 0
    return [{"id": int(i), "prompt": p, "score": float(s)}
            for i, s, p in zip(ids[valid], scores[valid], r.prompts(ids[valid]))]


def unit_embedding(values: list[float], dim: int, *, field: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.shape != (dim,):
        raise ClientError(400, f"{field}: {len(values)} numbers, the index's CLIP space has {dim}")
    norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else float("nan")
    if not norm > 0 or not np.isfinite(norm):
        raise ClientError(400, f"{field}: must be finite and not all zero")
    return (v / norm)[None]
