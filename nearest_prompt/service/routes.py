"""Route classes: JSON bodies parsed within bounds, and two handlers on one path picked by content type.

An endpoint that takes images has two handlers on the same path: ``JsonRoute`` (a JSON model; images as
base64) and ``UploadRoute`` (a multipart form model; images as files). Each matches only the requests of
its own content type, so FastAPI validates every body against a declared model, and ``merged_openapi``
lists both bodies under the one operation of that path. ``ParsingRoute`` (both of them, and every other
JSON route) parses JSON with ``parsing.parse_json``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import Scope

from .parsing import parse_json

OFF_LOOP_BYTES = 256 << 10  # larger JSON bodies are parsed on a thread, leaving the event loop to other requests


class _BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = await run_in_threadpool(parse_json, body) if len(body) > OFF_LOOP_BYTES else parse_json(body)
        return self._json


class ParsingRoute(APIRoute):
    """A route whose JSON body is parsed by ``parse_json`` (bounded integers and nesting)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            scope = request.scope
            if not is_multipart(scope) and not _is_json(scope):  # curl -d sends form-urlencoded: read it as JSON
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                         + [(b"content-type", b"application/json")]}
            return await handler(_BoundedJsonRequest(scope, request.receive))

        return handle


def _content_type(scope: Scope) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


def is_multipart(scope: Scope) -> bool:
    return _content_type(scope) == b"multipart/form-data"


def _is_json(scope: Scope) -> bool:
    kind = _content_type(scope)
    return kind == b"application/json" or kind.endswith(b"+json")


class JsonRoute(ParsingRoute):
    """The JSON handler of a path that also takes uploads: every request but multipart ones."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and is_multipart(scope):
            return Match.NONE, {}
        return match, child


class UploadRoute(ParsingRoute):
    """The multipart handler of a path: multipart requests only."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and not is_multipart(scope):
            return Match.NONE, {}
        return match, child


def merged_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, generated from its routes; an upload handler's body is added to the
    operation of its JSON twin (one operation per path and method, with both content types)."""
    if app.openapi_schema:
        return app.openapi_schema
    uploads = [r for r in app.routes if isinstance(r, UploadRoute)]
    common = dict(title=app.title, version=app.version, description=app.description,
                  openapi_version=app.openapi_version)
    doc = get_openapi(routes=[r for r in app.routes if not isinstance(r, UploadRoute)], **common)
    extra = get_openapi(routes=uploads, **common)
    for path, operations in extra.get("paths", {}).items():
        for method, operation in operations.items():
            target = doc["paths"].setdefault(path, {}).setdefault(method, operation)
            if target is not operation and "requestBody" in operation:
                target.setdefault("requestBody", {"required": True, "content": {}})["content"].update(
                    operation["requestBody"]["content"])
    for section, parts in extra.get("components", {}).items():
        doc.setdefault("components", {}).setdefault(section, {}).update(parts)
    app.openapi_schema = doc
    return doc
