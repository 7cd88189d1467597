"""The body size limit, as ASGI middleware: a body over ``max_bytes`` is refused with 413 and the service's
one-line JSON error, whether it says its length up front (``Content-Length``) or arrives in chunks."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .parsing import ClientError


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.message = f"the body is over the limit of {max_bytes} bytes (the server's --max-body-mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"error": self.message}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ClientError(413, self.message)  # answered by the app's handler, as every other error
            return message

        await self.app(scope, limited, send)
