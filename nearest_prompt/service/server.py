"""Run the service with uvicorn: ``nearest-prompt serve`` calls ``serve``.

SIGTERM and Ctrl-C stop accepting connections and let requests in flight finish (uvicorn's graceful
shutdown); SIGHUP reloads the store (see ``app.Service.reload``).
"""

from __future__ import annotations

import logging
import os

from nearest_prompt.common.extras import require

from .settings import ENV, ServeSettings

log = logging.getLogger(__name__)

GRACEFUL_S = 30  # how long requests in flight may take to finish after SIGTERM


def app_from_env():  # uvicorn's factory for worker processes (--workers > 1)
    from .app import create_app

    return create_app(ServeSettings.from_env())


def serve(settings: ServeSettings) -> None:
    require("serve", what="serve")
    import uvicorn

    from .app import create_app, open_served

    settings = settings.validate()
    retriever = open_served(settings)  # a bad store or model fails here, in one line, before any port opens
    if not settings.is_local() and not settings.token:
        log.warning("serving on %s without --token: anyone who can reach this address can use the index",
                    settings.host)
    log.info("serving %s on http://%s:%d (page at /, API at /docs)", settings.index, settings.host, settings.port)
    common = dict(host=settings.host, port=settings.port, timeout_graceful_shutdown=GRACEFUL_S,
                  log_level="warning", access_log=False, limit_concurrency=None)
    if settings.workers > 1:  # each worker process opens the store and loads the model itself
        del retriever
        os.environ[ENV] = settings.to_env()
        uvicorn.run("nearest_prompt.service.server:app_from_env", factory=True, workers=settings.workers, **common)
    else:
        uvicorn.run(create_app(settings, retriever=retriever), **common)
