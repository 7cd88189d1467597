"""Run the service with uvicorn: ``nearest-prompt serve`` calls ``serve``.

The store is opened, the models loaded and the port bound before anything is announced, so a bad store,
a missing model or a busy port is one line and status 2. SIGTERM and Ctrl-C stop accepting connections
and let requests in flight finish (uvicorn's graceful shutdown); SIGHUP reloads the store
(``app.Service.reload``). With ``--workers`` > 1 each worker process opens the store and loads the
models itself; it reads its options from ``NEAREST_PROMPT_*`` variables and the token from a private file
(mode 0600, removed when the server stops), never from a variable or an argument.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
from contextlib import suppress

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.extras import require

from .settings import ServeSettings

log = logging.getLogger(__name__)

GRACEFUL_S = 30  # how long requests in flight may take to finish after SIGTERM


def app_from_env():  # uvicorn's factory in worker processes (--workers > 1)
    from .app import create_app

    return create_app(ServeSettings.from_env())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or one line saying why there is none."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use by another program; stop it, or choose another "
                             "port (0 picks a free one)", param="port") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise InputError(f"port {port} on {host} needs privileges this user lacks; choose a port above 1023",
                             param="port") from None
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})", param="host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings) -> None:
    require("serve", what="serve")
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .app import create_app, load_captioner, open_served

    settings = settings.validate()
    retriever = open_served(settings)  # a bad store or model fails here, in one line, before any port opens
    captioner = load_captioner(settings)
    if not settings.is_local() and not settings.bearer_token():
        log.warning("serving on %s without a token: anyone who can reach this address can use the index",
                    settings.host)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    log.info("serving %s on http://%s:%d (page at /, API at /docs)", settings.index, settings.host, port)
    common = dict(timeout_graceful_shutdown=GRACEFUL_S, log_level="warning", access_log=False)
    if settings.workers == 1:
        config = uvicorn.Config(create_app(settings, retriever=retriever, captioner=captioner), **common)
        uvicorn.Server(config).run(sockets=[sock])
        return
    del retriever, captioner  # each worker process opens the store and loads the models itself
    token = settings.bearer_token()
    token_file = None
    try:
        env = settings.replace(token=None, token_file=None).to_env()
        if token is not None:
            fd, token_file = tempfile.mkstemp(prefix=".nearest-prompt-token-")  # mode 0600
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            env["NEAREST_PROMPT_TOKEN_FILE"] = token_file
        os.environ.pop("NEAREST_PROMPT_TOKEN", None)
        os.environ.update(env)
        config = uvicorn.Config("nearest_prompt.service.server:app_from_env", factory=True, workers=settings.workers,
                                **common)
        Multiprocess(config, sockets=[sock]).run()
    finally:
        if token_file:
            with suppress(OSError):
                os.unlink(token_file)
