"""The FastAPI application: routes, request parsing (JSON or multipart), limits, errors, metrics, reload.

Every bad request gets a 4xx and ``{"error": "<one line>"}``; nothing a client sends causes a 5xx. The
store is opened once (memory-mapped) and the CLIP model loaded once; ``reload`` opens the store again,
validates it with a probe search, and swaps it in: requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from nearest_prompt.common.errors import NearestPromptError, StoreError
from nearest_prompt.composer import ComposeOptions, Composer
from nearest_prompt.retriever import Retriever
from nearest_prompt.retriever.search import check_k
from nearest_prompt.retriever.weighting import Weighting

from .batcher import MicroBatcher, QueueFull
from .metrics import Metrics
from .parsing import (
    ClientError,
    b64_image,
    decode_images,
    neighbors_of,
    parse_body,
    unit_embedding,
    validation_message,
)
from .schemas import (
    ErrorResponse,
    HealthResponse,
    InterrogateRequest,
    InterrogateResponse,
    KnnRequest,
    KnnResult,
    MetadataItem,
    MetadataRequest,
    PredictRequest,
    PredictResponse,
    QueryRequest,
    QueryResponse,
    ReloadResponse,
)
from .settings import ServeSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/favicon.ico")
ERRORS = {400: {"model": ErrorResponse, "description": "bad request"},
          401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
          413: {"model": ErrorResponse, "description": "body or image too large"},
          422: {"model": ErrorResponse, "description": "malformed body"},
          503: {"model": ErrorResponse, "description": "queue full or request timed out; retry later"}}


# -- the served store ------------------------------------------------------------------------------------------
def open_served(settings: ServeSettings, *, reuse: Retriever | None = None) -> Retriever:
    """Open and validate the store, load its models (reusing ``reuse``'s CLIP when it is the same model),
    and run a probe search: what start-up and reload both do before anything is served from it."""
    r = Retriever.open(settings.index, clip=settings.clip, pretrained=settings.pretrained, device=settings.device)
    if reuse is not None and r.store.clip_info.mismatch(reuse.clip.info) is None:
        r = Retriever(r.store, clip=reuse.clip, minilm=reuse.minilm, device=settings.device)
    r.use_search_backend(settings.search_backend)
    probe = r.embed_texts(["a probe query"])
    r.search(probe, k=1)
    r.minilm  # noqa: B018 - loaded now: caption fusion and MiniLM queries need it
    return r


class Service:
    """What the routes share: settings, the current retriever, the batcher, metrics."""

    def __init__(self, settings: ServeSettings, retriever: Retriever | None = None):
        self.settings = settings
        self.retriever = retriever
        self.metrics = Metrics()
        self.batcher = MicroBatcher(self._encode, max_batch=settings.max_batch,
                                    max_wait_s=settings.max_wait_ms / 1000, queue_size=settings.queue_size,
                                    on_batch=self.metrics.batch.observe)
        self.metrics.queue.set_function(lambda: self.batcher.depth)
        self._reload_lock = asyncio.Lock()

    @staticmethod
    def _encode(key: tuple[str, Retriever], items: list[Any]) -> np.ndarray:
        kind, r = key
        if kind == "image":
            return r.clip.encode_images(items, batch_size=len(items))
        return r.embed_texts(items, batch_size=len(items))

    async def encode(self, r: Retriever, kind: str, items: list[Any]) -> np.ndarray:
        try:
            return np.stack(await self.batcher.submit((kind, r), items))
        except QueueFull as e:
            raise ClientError(503, f"the server is busy ({e}); retry in a moment", {"Retry-After": "1"}) from None
        except ValueError as e:  # a request larger than the whole queue
            raise ClientError(413, str(e)) from None

    async def reload(self) -> Retriever:
        async with self._reload_lock:
            old = self.retriever
            new = await run_in_threadpool(open_served, self.settings, reuse=old)
            self.retriever = new
            log.info("reloaded %s: %d prompts", self.settings.index, new.rows)
            return new


# -- the app ----------------------------------------------------------------------------------------------------
def create_app(settings: ServeSettings, *, retriever: Retriever | None = None) -> FastAPI:
    """The app over ``settings.index`` (opened at start-up unless ``retriever`` is given)."""
    service = Service(settings, retriever)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if service.retriever is None:
            service.retriever = await run_in_threadpool(open_served, settings)
        service.batcher.start()
        try:
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_sighup()))
        except (ValueError, NotImplementedError, RuntimeError):  # not the main thread (tests), or no SIGHUP
            pass
        yield
        await service.batcher.stop()

    async def _sighup() -> None:
        try:
            await service.reload()
        except Exception as e:  # noqa: BLE001 - a bad store must never stop the server
            log.error("reload on SIGHUP refused, the old store keeps serving: %s", e)

    app = FastAPI(title="nearest-prompt", version=_version(), lifespan=lifespan,
                  description="Which text prompt made this image? Nearest prompts and competition vectors over HTTP.")
    app.state.service = service

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        endpoint = path if path in KNOWN else "other"
        start = time.perf_counter()
        try:
            if settings.token and not (path in PUBLIC or path.startswith("/static/")):
                sent = request.headers.get("authorization", "")
                if not hmac.compare_digest(sent.encode(), f"Bearer {settings.token}".encode()):
                    raise ClientError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                                      {"WWW-Authenticate": "Bearer"})
            too_large = ClientError(413, f"the body is over the limit of {settings.max_body_bytes} bytes")
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
                raise too_large
            if request.method == "POST" and size is None:  # chunked: read it, within the limit
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > settings.max_body_bytes:
                        raise too_large
                request._body = bytes(body)  # noqa: SLF001 - starlette reads the cached body from here
            response = await asyncio.wait_for(call_next(request), timeout=settings.timeout_s or None)
        except ClientError as e:
            response = error(e.status, str(e), e.headers)
        except asyncio.TimeoutError:
            response = error(503, f"the request took over {settings.timeout_s:g} s; retry later",
                             {"Retry-After": "1"})
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            service.metrics.errors.labels(endpoint).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, e: ClientError) -> JSONResponse:
        return error(e.status, str(e), e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(e))

    @app.exception_handler(StoreError)
    async def _store(request: Request, e: StoreError) -> JSONResponse:
        log.error("store error: %s", e)
        return error(500, f"the index is damaged ({e})")

    @app.exception_handler(NearestPromptError)
    async def _library(request: Request, e: NearestPromptError) -> JSONResponse:
        return error(400, " ".join(str(e).split()))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error(500, f"internal error ({type(e).__name__}); see the server's log")

    async def query_vector(r: Retriever, *, text: str | None, image: bytes | None, embedding: list[float] | None,
                           field: str) -> np.ndarray:
        """One unit CLIP query vector [1, d] from whichever of the three was given (checked: exactly one)."""
        if embedding is not None:
            return unit_embedding(embedding, r.store.indexes["clip"].d, field=field)
        if text is not None:
            return await service.encode(r, "text", [text])
        return await service.encode(r, "image", await decode_images([image], settings))

    def current() -> Retriever:
        if service.retriever is None:
            raise ClientError(503, "the index is still loading; retry in a moment", {"Retry-After": "1"})
        return service.retriever

    @app.get("/health", response_model=HealthResponse, summary="liveness, and the number of prompts served")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "rows": current().rows}

    @app.get("/info", summary="what `nearest-prompt info --json` prints", responses=ERRORS)
    async def info() -> dict[str, Any]:
        return await run_in_threadpool(current().store.describe)

    @app.post("/query", response_model=QueryResponse, responses=ERRORS, summary="nearest prompts",
              openapi_extra=_body(QueryRequest, "image"))
    async def query(request: Request) -> dict[str, Any]:
        req, files = await parse_body(request, QueryRequest, file_field="image", many=False)
        r = current()
        given = [name for name in ("image", "text", "embedding") if getattr(req, name) is not None]
        if len(given) != 1:
            raise ClientError(400, "give exactly one of image, text or embedding"
                                   + (f" (got {', '.join(given)})" if given else ""))
        check_k(req.k, r.rows)
        image = None if req.image is None else files[0] if files else b64_image(req.image, field="image")
        vectors = await query_vector(r, text=req.text, image=image, embedding=req.embedding, field="embedding")
        nb = await run_in_threadpool(r.search, vectors, k=req.k)
        return {"neighbors": neighbors_of(r, nb.ids[0], nb.scores[0]), "note": r.store.note}

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS,
              summary="one unit 384-d vector and a confidence per image", openapi_extra=_body(PredictRequest, "image"))
    async def predict(request: Request) -> dict[str, Any]:
        req, files = await parse_body(request, PredictRequest, file_field="image", many=True)
        r = current()
        check_k(req.k, r.rows)
        if req.captions is not None and len(req.captions) != len(req.images):
            raise ClientError(400, f"captions: {len(req.captions)} for {len(req.images)} images; give one per "
                                   "image (null where there is none)")
        blobs = files or [b64_image(im, field=f"images.{i}") for i, im in enumerate(req.images)]
        vectors = await service.encode(r, "image", await decode_images(blobs, settings))
        weighting = Weighting(scheme=req.weighting, power=req.power, eps=req.eps, temperature=req.temperature)
        pred = await run_in_threadpool(r.predict, vectors, k=req.k, weighting=weighting, captions=req.captions,
                                       caption_weight=req.caption_weight, caption_space=req.caption_space)
        return {"results": [{"vector": v.tolist(), "confidence": float(c), "top_score": None if np.isnan(t) else float(t)}
                            for v, c, t in zip(pred.vectors, pred.confidence, pred.top_score)], "note": r.store.note}

    @app.post("/interrogate", response_model=InterrogateResponse, responses=ERRORS,
              summary="a prompt to paste into a generator, composed for one image",
              openapi_extra=_body(InterrogateRequest, "image"))
    async def interrogate(request: Request) -> dict[str, Any]:
        req, files = await parse_body(request, InterrogateRequest, file_field="image", many=False)
        r = current()
        check_k(req.k, r.rows)
        image = files[0] if files else b64_image(req.image, field="image")
        vectors = await service.encode(r, "image", await decode_images([image], settings))
        composer = Composer(r, options=ComposeOptions(mode=req.mode, objective=req.objective, start=req.start,
                                                      target_k=req.k, neighbors=req.neighbors,
                                                      fragments=req.fragments))
        caption = req.caption if req.caption and req.caption.strip() else None
        done = await run_in_threadpool(composer.interrogate, vectors, captions=[caption])
        return {**done[0].to_dict(), "caption": caption, "note": r.store.note}

    # -- clip-retrieval's clip back protocol --------------------------------------------------------------
    @app.get("/indices-list", response_model=list[str], responses=ERRORS, summary="clip back: the index names")
    async def indices_list() -> list[str]:
        return [settings.index_name]

    @app.post("/knn-service", response_model=list[KnnResult], responses=ERRORS,
              summary="clip back: nearest prompts as captions", openapi_extra=_body(KnnRequest, None))
    async def knn_service(request: Request) -> list[dict[str, Any]]:
        req, _ = await parse_body(request, KnnRequest, file_field="image", many=False)
        r = current()
        _check_index_name(req.indice_name, settings)
        if req.image_url and not settings.allow_image_urls:
            raise ClientError(400, "image_url is refused: this server does not fetch URLs (start it with "
                                   "--allow-image-urls to allow that); send the image itself as base64 in image")
        given = [n for n in ("text", "image", "image_url", "embedding_input") if getattr(req, n)]
        if len(given) != 1:
            raise ClientError(400, "give exactly one of text, image, image_url or embedding_input")
        image = b64_image(req.image, field="image") if req.image else await _fetch(req.image_url) \
            if req.image_url else None
        vectors = await query_vector(r, text=req.text or None, image=image, embedding=req.embedding_input,
                                     field="embedding_input")
        nb = await run_in_threadpool(r.search, vectors, k=min(req.num_images, r.rows))
        return [{"id": n["id"], "similarity": n["score"], "caption": n["prompt"]}
                for n in neighbors_of(r, nb.ids[0], nb.scores[0])]

    @app.post("/metadata", response_model=list[MetadataItem], responses=ERRORS,
              summary="clip back: the prompt of each id", openapi_extra=_body(MetadataRequest, None))
    async def metadata(request: Request) -> list[dict[str, Any]]:
        req, _ = await parse_body(request, MetadataRequest, file_field="image", many=False)
        r = current()
        _check_index_name(req.indice_name, settings)
        bad = [i for i in req.ids if not 0 <= i < r.rows]
        if bad:
            raise ClientError(400, f"ids: {bad[0]} is not a row of the index (0..{r.rows - 1})")
        return [{"id": i, "metadata": {"caption": p}} for i, p in zip(req.ids, r.prompts(req.ids))]

    # -- operations ---------------------------------------------------------------------------------------
    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses=ERRORS)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResponse, responses=ERRORS,
              summary="open the store again (after a rebuild) and swap it in once validated")
    async def admin_reload() -> dict[str, Any]:
        if not settings.token:
            raise ClientError(403, "admin endpoints need a server started with --token (or send it SIGHUP)")
        try:
            r = await service.reload()
        except NearestPromptError as e:
            raise ClientError(409, f"reload refused, the old store keeps serving: {' '.join(str(e).split())}") from None
        return {"status": "reloaded", "rows": r.rows}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    KNOWN = {route.path for route in app.routes}
    return app


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _check_index_name(name: str | None, settings: ServeSettings) -> None:
    if name not in (None, "", settings.index_name):
        raise ClientError(400, f"indice_name: no index {name!r} here; GET /indices-list names {settings.index_name!r}")


async def _fetch(url: str) -> bytes:  # only with --allow-image-urls
    import urllib.request

    def get() -> bytes:
        if not url.startswith(("http://", "https://")):
            raise ClientError(400, "image_url: only http and https URLs")
        with urllib.request.urlopen(url, timeout=10) as f:  # noqa: S310 - the operator allowed it
            return f.read(20 << 20)

    try:
        return await run_in_threadpool(get)
    except ClientError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ClientError(400, f"image_url could not be fetched ({type(e).__name__})") from None


def _body(model: type[BaseModel], file_field: str | None) -> dict[str, Any]:
    """The OpenAPI request body: JSON per ``model``; multipart with the image file(s) too, where files are taken."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if file_field:
        content["multipart/form-data"] = {"schema": {
            "type": "object", "required": [file_field],
            "properties": {file_field: {"type": "string", "format": "binary"},
                           "k": {"type": "integer", "minimum": 1}}}}
    return {"requestBody": {"required": True, "content": content}}


def _version() -> str:
    from nearest_prompt.common.version import __version__

    return __version__
