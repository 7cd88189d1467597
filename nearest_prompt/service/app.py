"""The FastAPI application: routes, request models, the admission path, errors, metrics, reload.

Every body is declared: a JSON model, and for the endpoints that take images a multipart form model too
(``image`` files plus the same options as form fields), each the handler of its own route on the same path
(``routes.JsonRoute`` and ``routes.UploadRoute`` pick by content type); the OpenAPI document is generated
from them (``routes.merged_openapi`` lists both bodies of such a path). The token is a security dependency
(HTTP bearer). Every bad request gets a 4xx and ``{"error": "<one line>"}``; nothing a client sends causes a
5xx.

The admission path: a request takes its share of ``queue_size`` (its images and texts; an interrogate
counts 2) or is refused at once with 503 and ``Retry-After``; its model work then runs on the models' own
worker threads (``workers.ModelWorker``: one per model, passes of at most ``max_batch`` items), called from
the request's thread through queued encoders (``models``), the composer's and caption fusion's calls
included. The store is opened once (memory-mapped) and the models loaded once; ``reload`` opens the store
again, validates it with a probe search, and swaps it in: requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from nearest_prompt.common.errors import NearestPromptError, StoreError
from nearest_prompt.composer import ComposeOptions, Composer
from nearest_prompt.encoders.images import set_pixel_limit
from nearest_prompt.index_store.format import image_space
from nearest_prompt.index_store.reader import changed_in_place
from nearest_prompt.retriever import Retriever, SearchPlan, Weighting
from nearest_prompt.retriever.search import resolve_k

from . import models
from .limits import BodyLimit
from .metrics import Metrics, MetricsMiddleware
from .models import QueuedCaptioner, QueuedClip, QueuedMiniLM, TimedOut
from .parsing import (
    Base64Image,
    ClientError,
    check_captions,
    decode_images,
    neighbors_of,
    parse_captions,
    read_uploads,
    unit_embedding,
    validation_message,
)
from .routes import JsonRoute, ParsingRoute, UploadRoute, merged_openapi
from .schemas import (
    ErrorResponse,
    HealthResponse,
    InterrogateForm,
    InterrogateRequest,
    InterrogateResponse,
    KnnRequest,
    KnnResult,
    MetadataItem,
    MetadataRequest,
    PredictForm,
    PredictRequest,
    PredictResponse,
    QueryForm,
    QueryRequest,
    QueryResponse,
    ReloadResponse,
)
from .settings import ServeSettings
from .workers import Admission, Busy, ModelWorker, TooLarge

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ERRORS = {400: {"model": ErrorResponse, "description": "bad request"},
          401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
          413: {"model": ErrorResponse, "description": "body or image too large"},
          422: {"model": ErrorResponse, "description": "malformed body"},
          503: {"model": ErrorResponse, "description": "the server is busy or the request timed out; retry later"}}
INTERROGATE_WORK = 2  # admission units of one interrogate: its image, and composing


# -- the served store ------------------------------------------------------------------------------------------
def open_served(settings: ServeSettings, *, reuse: Retriever | None = None) -> Retriever:
    """Open and validate the store, load its models (reusing ``reuse``'s when they are the same model), and
    run a probe search: what start-up and reload both do before anything is served from it. The retriever
    returned holds the models themselves; ``Service`` serves through queued views of them."""
    r = Retriever.open(settings.index, clip=settings.clip, pretrained=settings.pretrained, device=settings.device)
    if reuse is not None:  # the models of the old store that the new one has too, as they are
        same = {name: reuse.clip_for(name) for name in reuse.text_spaces() if name in r.store.manifest.spaces
                and r.store.space(name).model.mismatch(reuse.clip_for(name).info) is None}
        r = Retriever(r.store, minilm=reuse.minilm, device=settings.device, clips=same)
    r.use_search_backend(settings.search_backend)
    for name in r.text_spaces():  # every CLIP model loaded now, each index probed
        q = r.embed_texts(["a probe query"], space=name)
        for space in r.store.spaces:
            if r.store.model_space(space) == name:
                r.search(q, k=1, space=space)
    r.minilm  # noqa: B018 - loaded now: caption fusion, MiniLM queries and the composer need it
    return r


def load_captioner(settings: ServeSettings) -> Any:
    if not settings.captioner:
        return None
    from nearest_prompt.encoders.captioner import load_captioner as load
    from nearest_prompt.encoders.captioner import parse_captioner_spec

    return load(parse_captioner_spec(settings.captioner, settings.captioner_pretrained), device=settings.device)


@dataclass
class Served:
    models: Retriever  # holds the loaded models (what reload reuses)
    retriever: Retriever  # the same store, its encoders queued on the workers: what requests use


class Service:
    """What the routes share: settings, the served store, the admission count, the model workers, metrics."""

    def __init__(self, settings: ServeSettings, loaded: Retriever | None = None, captioner: Any = None):
        self.settings = settings
        self.token = settings.bearer_token()
        self.metrics = Metrics()
        self.admission = Admission(settings.queue_size)
        self.workers = {name: self._worker(name)
                        for name in ("clip", "minilm", *(("captioner",) if captioner is not None else ()))}
        self.metrics.watch(self.admission, self.workers)
        self.captioner = QueuedCaptioner(captioner, self.workers["captioner"]) if captioner is not None else None
        self.served: Served | None = self._serve(loaded) if loaded is not None else None
        self.damaged: str | None = None  # what changed in place, when the served store's files did
        self.version: int | None = None  # the served store folder's inode: a new version of the store is another
        self._refused: int | None = None  # a new version that failed to open (tried again when it changes)
        self._reload_lock = asyncio.Lock()

    def _worker(self, name: str) -> ModelWorker:
        return ModelWorker(name, max_batch=self.settings.max_batch, max_wait_s=self.settings.max_wait_ms / 1000,
                           on_pass=self.metrics.forward_pass)

    def clip_worker(self, space: str, primary: str) -> ModelWorker:
        """The worker of a CLIP text space's model: "clip" for the primary space, "clip-NAME" for the others."""
        name = "clip" if space == primary else f"clip-{space}"
        if name not in self.workers:
            self.workers[name] = self._worker(name)
            self.metrics.watch(self.admission, {name: self.workers[name]})
        return self.workers[name]

    def _serve(self, loaded: Retriever) -> Served:
        self.version = store_version(loaded.store.path)
        primary = loaded.store.primary
        clips = {name: QueuedClip(loaded.clip_for(name), self.clip_worker(name, primary))
                 for name in loaded.text_spaces()}
        queued = loaded.with_encoders(clip=clips.pop(primary), minilm=QueuedMiniLM(loaded.minilm, self.workers["minilm"]),
                                      clips=clips)
        return Served(models=loaded, retriever=queued)

    def current(self) -> Retriever:
        if self.served is None:
            raise ClientError(503, "the index is still loading; retry in a moment", {"Retry-After": "1"})
        if self.damaged:
            raise ClientError(503, f"the index's files were changed in place ({self.damaged}); rebuild the store and "
                                   "reload the server (SIGHUP or /admin/reload)")
        return self.served.retriever

    async def watch_store(self) -> None:
        """Every ``store_check_s`` seconds: a new version of the store in its place (a build, ``add`` or ``remove``
        swaps in a new folder) is opened and served once validated (the old one keeps serving if it fails); else
        the served store's file sizes are held against its manifest: a file changed in place (a truncation would
        end the process at its next read of the lost pages) is logged and every request refused until a reload
        brings a good store."""
        while self.settings.store_check_s:
            await asyncio.sleep(self.settings.store_check_s)
            if self.served is None:
                continue
            version = await run_in_threadpool(store_version, self.served.models.store.path)
            if version is not None and version != self.version and version != self._refused:
                try:
                    await self.reload()
                except NearestPromptError as e:
                    self._refused = version
                    log.error("a new version of the store is in place but does not open (%s); still serving the "
                              "old one", e)
                continue
            if self.damaged:
                continue
            what = await run_in_threadpool(changed_in_place, self.served.models.store)
            if what:
                self.damaged = what
                log.error("the store's files were changed in place (%s): refusing requests until a reload; store "
                          "files must never be modified in place, build into the folder instead", what)

    async def load(self) -> None:
        if self.served is None:
            self.served = self._serve(await run_in_threadpool(open_served, self.settings))

    async def reload(self) -> Retriever:
        async with self._reload_lock:
            old = self.served.models if self.served is not None else None
            self.served = self._serve(await run_in_threadpool(open_served, self.settings, reuse=old))
            self.damaged = None
            log.info("reloaded %s: %d prompts", self.settings.index, self.served.models.rows)
            return self.served.retriever

    @asynccontextmanager
    async def admitted(self, n: int):
        """Hold ``n`` units of work for the request (503 when the server holds too much), with its deadline set
        for the model calls it makes."""
        try:
            self.admission.take(n)
        except Busy as e:
            raise ClientError(503, f"the server is busy ({e}); retry in a moment", {"Retry-After": "1"}) from None
        except TooLarge as e:
            raise ClientError(413, str(e)) from None
        token = models.deadline.set(time.monotonic() + self.settings.timeout_s if self.settings.timeout_s else None)
        try:
            yield
        except TimedOut:
            raise ClientError(503, f"the request took over {self.settings.timeout_s:g} s; retry later",
                              {"Retry-After": "1"}) from None
        finally:
            models.deadline.reset(token)
            self.admission.give(n)

    async def run(self, n: int, work: Callable[..., Any], *args: Any, blobs: list[bytes] = (), **kw: Any) -> Any:
        """Admit ``n`` units, decode ``blobs`` (in parallel threads), then ``work(images, *args)`` in a thread."""
        async with self.admitted(n):
            images = await decode_images(list(blobs), max_pixels=self.settings.max_pixels) if blobs else []
            return await run_in_threadpool(work, images, *args, **kw)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


# -- the app ----------------------------------------------------------------------------------------------------
def create_app(settings: ServeSettings, *, retriever: Retriever | None = None, captioner: Any = None) -> FastAPI:
    """The app over ``settings.index`` (opened at start-up unless ``retriever``, holding the loaded models, is
    given; ``captioner``: a loaded CoCa captioner, else one is loaded from ``settings.captioner``)."""
    set_pixel_limit(settings.max_pixels)
    if captioner is None and settings.captioner:
        captioner = load_captioner(settings)
    service = Service(settings, retriever, captioner)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.load()
        watcher = asyncio.get_running_loop().create_task(service.watch_store())
        try:
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_sighup()))
        except (ValueError, NotImplementedError, RuntimeError):  # not the main thread (tests), or no SIGHUP
            pass
        yield
        watcher.cancel()
        service.close()

    async def _sighup() -> None:
        try:
            await service.reload()
        except Exception as e:  # noqa: BLE001 - a bad store must never stop the server
            log.error("reload on SIGHUP refused, the old store keeps serving: %s", e)

    app = FastAPIOffline(title="nearest-prompt", version=_version(), lifespan=lifespan, redoc_url=None,
                         strict_content_type=False,
                         description="Which text prompt made this image? Nearest prompts, competition vectors and "
                                     "composed prompts over HTTP.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    bearer = HTTPBearer(auto_error=False, description="the server's token (serve --token-file)")

    async def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if service.token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), service.token.encode()):
            raise ClientError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (on the page: enter "
                                   "it in the token box)", {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_token)] if service.token else []

    def route(path: str, *, method: str = "POST", cls: type = ParsingRoute, auth: bool = True,
              **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Add the handler as a route of class ``cls``, behind the token unless ``auth`` is False."""
        def add(handler: Callable[..., Any]) -> Callable[..., Any]:
            app.router.add_api_route(path, handler, methods=[method], route_class_override=cls,
                                     dependencies=guarded if auth else [], responses=ERRORS if auth else None, **kw)
            return handler
        return add

    json_route = functools.partial(route, cls=JsonRoute)
    upload_route = functools.partial(route, cls=UploadRoute)
    clip_back = functools.partial(route, auth=not settings.open_clip_back)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, http_message(e), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return error(*validation_message(e))

    @app.exception_handler(StoreError)
    async def _store(request: Request, e: StoreError) -> JSONResponse:
        log.error("store error: %s", e)
        return error(500, f"the index is damaged ({e})")

    @app.exception_handler(NearestPromptError)
    async def _library(request: Request, e: NearestPromptError) -> JSONResponse:
        return error(400, str(e))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error(500, f"internal error ({type(e).__name__}); see the server's log")

    # -- query ------------------------------------------------------------------------------------------
    async def query(*, image: bytes | None, text: str | None, embedding: list[float] | None, k: int,
                    where: str | None = None, options: Any = None, plan: SearchPlan | None = None) -> dict[str, Any]:
        r = service.current()
        where = checked_where(r, where)
        plan = plan or checked_plan(r, options)
        given = [name for name, v in (("image", image), ("text", text), ("embedding", embedding)) if v is not None]
        if len(given) != 1:
            raise ClientError(400, "give exactly one of image, text or embedding" + (f" (got {', '.join(given)})"
                                                                                     if given else ""))
        if text is not None and not text.strip():
            raise ClientError(400, "text: empty; give a text to search for")

        spaces = plan.spaces(r.store.primary)
        if embedding is not None and len({r.store.model_space(s) if s != "minilm" else s for s in spaces}) > 1:
            raise ClientError(400, "embedding: one vector cannot query spaces of different models; give an image "
                                   "or a text")
        if image is not None and "minilm" in spaces:
            raise ClientError(400, "space: images are searched in CLIP spaces, not minilm")

        def work(images: list[Any]) -> dict[str, Any]:
            if embedding is not None:
                q: Any = unit_embedding(embedding, r.store.indexes[spaces[0]].d, field="embedding")
            elif text is not None:
                q = r.embed_queries([text], spaces)
            else:
                q = r.embed_images(images, spaces=spaces).by_space
            nb = r.search(q, k=k, where=where, plan=plan)
            return {"neighbors": neighbors_of(r, nb.ids[0], nb.scores[0]), "note": r.store.note,
                    "search": plan.describe(r.store.primary)}

        return await service.run(1, work, blobs=[image] if image is not None else [])

    @json_route("/query", response_model=QueryResponse, summary="nearest prompts to an image, a text or a vector")
    async def query_json(req: QueryRequest) -> dict[str, Any]:
        image = Base64Image.of(req.image, "image") if req.image is not None else None
        return await query(image=image, text=req.text, embedding=req.embedding, k=k_of(req, service.current().rows),
                           where=req.where, options=req)

    @upload_route("/query", response_model=QueryResponse, summary="nearest prompts to an uploaded image")
    async def query_upload(form: Annotated[QueryForm, File()]) -> dict[str, Any]:
        [image] = await read_uploads(form.image, one=True)
        return await query(image=image, text=None, embedding=None, k=k_of(form, service.current().rows),
                           where=form.where, options=form)

    # -- predict ----------------------------------------------------------------------------------------
    async def predict(blobs: list[bytes], o: Any, captions: list[str | None] | None) -> dict[str, Any]:
        r = service.current()
        k = k_of(o, r.rows)
        where = checked_where(r, o.where)
        plan = checked_plan(r, o, images=True)
        captions = check_captions(captions, len(blobs))
        if o.caption_images and service.captioner is None:
            raise ClientError(400, "caption_images: this server has no captioner (start it with --captioner)")
        weighting = Weighting(scheme=o.weighting, power=o.power, eps=o.eps, temperature=o.temperature)
        missing = [i for i in range(len(blobs)) if not (captions and captions[i])] if o.caption_images else []
        texts = sum(1 for c in captions or [] if c)

        def work(images: list[Any]) -> dict[str, Any]:
            caps = list(captions) if captions is not None else [None] * len(images)
            if missing:
                for i, c in zip(missing, service.captioner.caption([images[i] for i in missing])):
                    caps[i] = c
            vectors = r.embed_images(images, spaces=plan.spaces(r.store.primary)).by_space
            pred = r.predict(vectors, k=k, weighting=weighting, captions=caps if any(caps) else None,
                             caption_weight=o.caption_weight, caption_space=o.caption_space, where=where, plan=plan)
            return {"results": [{"vector": v.tolist(), "confidence": float(c),
                                 "top_score": None if t != t else float(t)}
                                for v, c, t in zip(pred.vectors, pred.confidence, pred.top_score)],
                    "note": r.store.note}

        return await service.run(len(blobs) + texts + 2 * len(missing), work, blobs=blobs)

    @json_route("/predict", response_model=PredictResponse, summary="one unit 384-d vector and a confidence per image")
    async def predict_json(req: PredictRequest) -> dict[str, Any]:
        return await predict([Base64Image.of(im, f"images.{i}") for i, im in enumerate(req.images)], req, req.captions)

    @upload_route("/predict", response_model=PredictResponse, summary="vectors for uploaded images")
    async def predict_upload(form: Annotated[PredictForm, File()]) -> dict[str, Any]:
        blobs = await read_uploads(form.image, one=False)
        return await predict(blobs, form, parse_captions(form.captions, len(blobs)))

    # -- interrogate ------------------------------------------------------------------------------------
    async def interrogate(image: bytes, o: Any) -> dict[str, Any]:
        r = service.current()
        options = ComposeOptions(mode=o.mode, objective=o.objective, start=o.start, target_k=k_of(o, r.rows),
                                 neighbors=o.neighbors, fragments=o.fragments).validate()
        caption = o.caption if o.caption and o.caption.strip() else None
        where = checked_where(r, o.where)
        plan = checked_plan(r, o, images=True)
        spaces = list(dict.fromkeys([r.store.primary, *plan.spaces(r.store.primary)]))

        def work(images: list[Any]) -> dict[str, Any]:
            cap = caption
            if cap is None and service.captioner is not None:
                cap = service.captioner.caption(images)[0] or None
            vectors = r.embed_images(images, spaces=spaces).by_space
            [done] = Composer(r, options=options).interrogate(vectors, captions=[cap], where=where, plan=plan)
            return {**done.to_dict(), "caption": cap, "note": r.store.note}

        return await service.run(INTERROGATE_WORK + (service.captioner is not None and caption is None), work,
                                 blobs=[image])

    @json_route("/interrogate", response_model=InterrogateResponse,
              summary="a prompt to paste into a generator, composed for one image")
    async def interrogate_json(req: InterrogateRequest) -> dict[str, Any]:
        return await interrogate(Base64Image.of(req.image, "image"), req)

    @upload_route("/interrogate", response_model=InterrogateResponse, summary="a composed prompt for an uploaded image")
    async def interrogate_upload(form: Annotated[InterrogateForm, File()]) -> dict[str, Any]:
        [image] = await read_uploads(form.image, one=True)
        return await interrogate(image, form)

    # -- clip back ----------------------------------------------------------------------------------------
    @clip_back("/indices-list", method="GET", response_model=list[str], summary="clip back: the index names")
    async def indices_list() -> list[str]:
        return [settings.index_name]

    @clip_back("/knn-service", response_model=list[KnnResult], summary="clip back: nearest prompts as captions")
    async def knn_service(req: KnnRequest) -> list[dict[str, Any]]:
        r = service.current()
        _check_index_name(req.indice_name, settings)
        if req.image_url and not settings.allow_image_urls:
            raise ClientError(400, "image_url is refused: this server does not fetch URLs (start it with "
                                   "--allow-image-urls to allow that); send the image itself as base64 in image")
        given = [n for n in ("text", "image", "image_url", "embedding_input") if getattr(req, n)]
        if len(given) != 1:
            raise ClientError(400, "give exactly one of text, image, image_url or embedding_input")
        image = Base64Image.of(req.image, "image") if req.image else await _fetch(req.image_url) \
            if req.image_url else None
        space = r.store.primary
        if req.modality == "image" and image_space(space) in r.store.manifest.spaces:
            space = image_space(space)  # results that are images: the prompts' images, like with like
        res = await query(image=image, text=req.text or None, embedding=req.embedding_input,
                          k=min(req.num_images, r.rows), plan=SearchPlan(space=space))
        return [{"id": n["id"], "similarity": n["score"], "caption": n["prompt"]} for n in res["neighbors"]]

    @clip_back("/metadata", response_model=list[MetadataItem], summary="clip back: the prompt of each id")
    async def metadata(req: MetadataRequest) -> list[dict[str, Any]]:
        r = service.current()
        _check_index_name(req.indice_name, settings)
        bad = [i for i in req.ids if not 0 <= i < r.rows]
        if bad:
            raise ClientError(400, f"ids: {bad[0]} is not a row of the index (0..{r.rows - 1})")
        removed = r.store.removed
        gone = [i for i in req.ids if removed is not None and removed[i]]
        if gone:
            raise ClientError(404, f"ids: {gone[0]} was removed from the index")
        return [{"id": i, "metadata": {"caption": p, **m}}
                for i, p, m in zip(req.ids, r.prompts(req.ids), r.store.metadata(req.ids))]

    # -- operations ---------------------------------------------------------------------------------------
    @route("/health", method="GET", auth=False, response_model=HealthResponse,
           summary="liveness, and the number of prompts served")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "rows": service.current().rows, "token_required": service.token is not None}

    @route("/info", method="GET", summary="what `nearest-prompt info --json` prints")
    async def info() -> dict[str, Any]:
        return await run_in_threadpool(service.current().store.describe)

    @route("/metrics", method="GET", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @route("/admin/reload", response_model=ReloadResponse,
                summary="open the store again (after a rebuild) and swap it in once validated")
    async def admin_reload() -> dict[str, Any]:
        if not service.token:
            raise ClientError(403, "admin endpoints need a server started with a token (--token-file), or send it "
                                   "SIGHUP")
        try:
            r = await service.reload()
        except NearestPromptError as e:
            raise ClientError(409, f"reload refused, the old store keeps serving: {e}") from None
        return {"status": "reloaded", "rows": r.rows}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: merged_openapi(app)
    return app


def store_version(path: str | Path) -> int | None:
    """The store folder's inode (None while there is none): each version of a store is a new folder."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def checked_where(r: Retriever, where: str | None) -> str | None:
    """A request's filter, checked against the store's columns before any work (400 when it cannot apply)."""
    if where is not None:
        try:
            r.store.allowed(where)
        except NearestPromptError as e:
            raise ClientError(400, f"where: {e}") from None
    return where


def checked_plan(r: Retriever, options: Any, *, images: bool = False) -> SearchPlan:
    """A request's search plan (``space``, ``cascade``, ``fuse``, ``fuse_weights``, ``min_score``), checked against
    the store's spaces before any work (400 when it cannot apply)."""
    try:
        plan = r.plan(SearchPlan.parse(space=options.space, cascade=options.cascade, fuse=options.fuse,
                                       fuse_weights=options.fuse_weights, min_score=options.min_score))
    except NearestPromptError as e:
        raise ClientError(400, f"{e.param or 'space'}: {e}") from None
    if images and "minilm" in plan.spaces(r.store.primary):
        raise ClientError(400, "space: images are searched in CLIP spaces, not minilm")
    return plan


def k_of(options: Any, rows: int) -> int:
    """The ``k`` a request asked for, checked against the store's size; one it left out is the default, at most
    the store's size (``retriever.search.resolve_k``)."""
    return resolve_k(options.k if "k" in options.model_fields_set else None, default=options.k, rows=rows)[0]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def http_message(e: StarletteHTTPException) -> str:
    """One line for an HTTP error: ours as they are, the framework's made to say what to do."""
    detail = str(e.detail)
    if isinstance(e, ClientError):
        return detail
    if detail == "There was an error parsing the body":  # the framework's words for a body it could not read
        cause = e.__cause__
        if isinstance(cause, ClientError):
            return str(cause.detail)
        return f"malformed body ({type(cause).__name__ if cause else 'unreadable'}: {str(cause)[:100]})"
    return detail


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


def _version() -> str:
    from nearest_prompt.common.version import __version__

    return __version__
