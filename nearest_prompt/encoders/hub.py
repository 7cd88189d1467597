"""Where open_clip weights come from when they are named by a pretrained tag: the local caches first, then a
download that fails fast where there is no way to the hub.

``cached(cfg)`` finds weights open_clip downloaded before (the Hugging Face cache, or open_clip's own for
URLs) without any network. ``unreachable(cfg)`` says, in a second or three, why a download cannot work:
``HF_HUB_OFFLINE`` is set, or the host does not answer (skipped behind a proxy, which a direct probe cannot
judge). ``quiet()`` keeps the hub client's retry messages ("Retrying in 8s") off the terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_files(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names, safetensors first) of a pretrained config that names a hub repo."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else \
        [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return repo, [*names, filename]


def cached(cfg: dict[str, Any]) -> str | None:
    """The weights file of a pretrained config already on this machine, or None (no network used)."""
    if "file" in cfg:
        return cfg["file"]
    hub = _hub_files(cfg)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache

        repo, names = hub
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = cfg.get("url", "")
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    return target if target and os.path.isfile(target) else None


def unreachable(cfg: dict[str, Any]) -> str | None:
    """Why a download of ``cfg``'s weights cannot work from here, found quickly; None when it may."""
    if offline():
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None  # only the download itself can tell
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url", "")
    host = urlparse(url).hostname
    if not host:
        return None
    try:
        with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__})"


@contextmanager
def quiet() -> Iterator[None]:
    """The hub client's own log (its retries and their waits) kept to errors while a download runs."""
    hub_log = logging.getLogger("huggingface_hub")
    old = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(old)
