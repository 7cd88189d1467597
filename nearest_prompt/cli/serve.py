"""``nearest-prompt serve``: its options (each also a ``NEAREST_PROMPT_*`` variable) and the call to the service."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import fields

from nearest_prompt.service.settings import ENV_PREFIX, MIN_TOKEN_CHARS, ServeSettings

from .args import add_common, add_model_args, default, positive_int

log = logging.getLogger("nearest_prompt.cli")


def _d(name: str) -> str:
    value = default(ServeSettings, name)
    return f"default: {value}; env {ENV_PREFIX}{name.upper()}" if value is not None else \
        f"env {ENV_PREFIX}{name.upper()}"


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    sv = cmd("serve", "serve query, predict, interrogate and clip-retrieval's clip back protocol over HTTP, with a "
                      "web page")
    sv.add_argument("--index", default=None, metavar="DIR", help=f"index store directory (env {ENV_PREFIX}INDEX)")
    sv.add_argument("--host", default=None, help=f"address to bind; anything but loopback without a token prints a "
                                                 f"warning ({_d('host')})")
    sv.add_argument("--port", type=int, default=None, help=f"port, 0 for any free one ({_d('port')})")
    auth = sv.add_argument_group("access")
    auth.add_argument("--token-file", default=None, metavar="FILE",
                      help="require 'Authorization: Bearer TOKEN' on every endpoint but /health, the page and the API "
                           f"description, TOKEN being the first line of FILE (at least {MIN_TOKEN_CHARS} characters; "
                           f"env {ENV_PREFIX}TOKEN_FILE, or the token itself in {ENV_PREFIX}TOKEN)")
    auth.add_argument("--token", default=None, help="the token itself; every user of this machine can read it in the "
                                                    "process list, so prefer --token-file")
    auth.add_argument("--open-clip-back", action="store_true", default=None,
                      help="answer the clip back routes (/indices-list, /knn-service, /metadata) without the token, "
                           "for clip-retrieval's ClipClient, which cannot send one (limits still apply)")
    lim = sv.add_argument_group("limits")
    lim.add_argument("--max-batch", type=positive_int, default=None,
                     help=f"items (images, texts) in one forward pass of a model ({_d('max_batch')})")
    lim.add_argument("--max-wait-ms", type=float, default=None,
                     help=f"how long a forward pass waits after its first item for others to join ({_d('max_wait_ms')})")
    lim.add_argument("--queue-size", type=positive_int, default=None,
                     help="images and texts the server works on at once, an interrogate counting 2; beyond it, 503 "
                          f"with Retry-After ({_d('queue_size')})")
    lim.add_argument("--timeout", type=float, default=None,
                     help=f"seconds per request before 503 (default: {default(ServeSettings, 'timeout_s'):g}; "
                          f"env {ENV_PREFIX}TIMEOUT_S)")
    lim.add_argument("--max-body-mb", type=float, default=None,
                     help=f"largest request body in MiB (default: {default(ServeSettings, 'max_body_bytes') / 2**20:g}; "
                          f"env {ENV_PREFIX}MAX_BODY_BYTES, in bytes)")
    lim.add_argument("--max-pixels", type=positive_int, default=None,
                     help=f"refuse larger images as decompression bombs ({_d('max_pixels')})")
    lim.add_argument("--store-check", type=float, default=None, metavar="SECONDS",
                     help="how often the server looks at its store: a new version in its place (a build, add or "
                          "remove) is opened and served; a file changed in place makes the server refuse requests "
                          f"until a reload; 0: never (default: "
                          f"{default(ServeSettings, 'store_check_s'):g}; env {ENV_PREFIX}STORE_CHECK_S)")
    lim.add_argument("--allow-image-urls", action="store_true", default=None,
                     help="let /knn-service fetch image_url (off: fetching URLs for strangers is an SSRF hole)")
    sv.add_argument("--workers", type=positive_int, default=None,
                    help=f"server processes, each holding its own models ({_d('workers')})")
    sv.add_argument("--name", default=None, help="the index's name in /indices-list (default: the folder's name)")
    sv.add_argument("--captioner", default=None, metavar="MODEL",
                    help="an open_clip CoCa model: /interrogate captions images that come without a caption, and "
                         "/predict with caption_images fuses its captions")
    sv.add_argument("--captioner-pretrained", default=None, metavar="TAG|FILE", help="pretrained tag or checkpoint of "
                                                                                      "--captioner")
    add_model_args(sv, building=False)
    add_common(sv)


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """Flags over ``NEAREST_PROMPT_*`` variables over the defaults."""
    given = {f.name: getattr(args, f.name, None) for f in fields(ServeSettings)}
    given["timeout_s"] = args.timeout
    given["store_check_s"] = args.store_check
    given["max_body_bytes"] = None if args.max_body_mb is None else int(args.max_body_mb * 2**20)
    return ServeSettings.from_env(**given)


def cmd_serve(args: argparse.Namespace) -> int:
    from nearest_prompt.service.server import serve

    settings = settings_from(args).validate()
    if args.token is not None:
        log.warning("--token is visible to every user of this machine in the process list; use --token-file "
                    "(or %sTOKEN) instead", ENV_PREFIX)
    serve(settings)
    return 0
