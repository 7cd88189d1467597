"""The service's options, validated once, from ``nearest-prompt serve``'s flags or the environment.

Every option can also be set as ``NEAREST_PROMPT_<NAME>`` (``NEAREST_PROMPT_PORT=9000``,
``NEAREST_PROMPT_QUEUE_SIZE=64``); a flag wins over the environment. The token is a secret: pass it as a
file (``--token-file``, ``NEAREST_PROMPT_TOKEN_FILE``) or as ``NEAREST_PROMPT_TOKEN``; ``--token`` works but
shows it to every user of the machine in the process list. Worker processes (``--workers`` > 1) get the
other options as ``NEAREST_PROMPT_*`` variables and the token through a private file, never in a
variable or an argument.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS

ENV_PREFIX = "NEAREST_PROMPT_"
MIN_TOKEN_CHARS = 8


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    index: str
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the one chosen is announced)
    token: str | None = field(default=None, repr=False)  # every endpoint but /health, the page and the docs then
    token_file: str | None = None  # needs "Authorization: Bearer TOKEN"; at least MIN_TOKEN_CHARS characters
    open_clip_back: bool = False  # clip back routes (/knn-service, /metadata, /indices-list) without the token
    max_batch: int = 32  # items (images, texts) in one forward pass of a model
    max_wait_ms: float = 10.0  # how long a forward pass waits after its first item for others to join it
    workers: int = 1  # server processes, each with its own models
    max_body_bytes: int = 20 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    queue_size: int = 256  # images and texts worked on at once (an interrogate counts 2); beyond it, 503
    timeout_s: float = 60.0  # per request
    store_check_s: float = 10.0  # how often the store's file sizes are held against its manifest (0: never)
    allow_image_urls: bool = False  # clip back's image_url: fetching URLs for strangers is an SSRF hole
    device: str | None = None
    search_backend: str = "auto"
    clip: str | None = None  # where to find a copy of the store's CLIP weights (as query's --clip)
    pretrained: str | None = None
    captioner: str | None = None  # an open_clip CoCa model: /interrogate captions images that come without one
    captioner_pretrained: str | None = None
    name: str | None = None  # the index's name in the clip back protocol (default: the folder's name)

    SECRET = ("token",)

    def validate(self) -> ServeSettings:
        if not Path(self.index).expanduser().is_dir():
            raise InputError(f"{self.index}: no index store there", param="index")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}", param="port")
        for name in ("max_batch", "workers", "max_body_bytes", "max_pixels", "queue_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        for name in ("max_wait_ms", "timeout_s", "store_check_s"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be at least 0, got {getattr(self, name)}", param=name)
        if self.token is not None and self.token_file is not None:
            raise InputError("give the token once: token or token_file, not both", param="token_file")
        token = self.bearer_token()
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise InputError(f"token must have at least {MIN_TOKEN_CHARS} characters", param="token")
        return self

    def bearer_token(self) -> str | None:
        """The token clients must send: ``token``, else the first line of ``token_file``, else None."""
        if self.token is not None:
            return self.token
        if self.token_file is None:
            return None
        try:
            text = Path(self.token_file).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the token file {self.token_file} ({getattr(e, 'strerror', None) or e})",
                             param="token_file") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise InputError(f"the token file {self.token_file} is empty", param="token_file")
        return token

    @property
    def index_name(self) -> str:
        return self.name or Path(self.index).expanduser().absolute().name

    def is_local(self) -> bool:
        """True when the server binds to loopback only."""
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(self.host, None))
        except (OSError, ValueError):
            return False

    # -- the environment ----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> ServeSettings:
        """Settings from ``given`` (flags), then ``NEAREST_PROMPT_<NAME>`` variables, then the defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if given.get(f.name) is not None:
                values[f.name] = given[f.name]
            elif ENV_PREFIX + f.name.upper() in environ:
                values[f.name] = _parse(environ[ENV_PREFIX + f.name.upper()], hints[f.name], f.name)
        if "index" not in values:
            raise InputError(f"no index store given: pass index (or set {ENV_PREFIX}INDEX)", param="index")
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The options that differ from the defaults as ``NEAREST_PROMPT_*`` variables, the token left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECRET or value is None or value == f.default:
                continue
            out[ENV_PREFIX + f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def replace(self, **changes: Any) -> ServeSettings:
        return dataclasses.replace(self, **changes)


def _parse(text: str, hint: Any, name: str) -> Any:
    """A variable's text as the field's type (str, int, float, bool, or one of them or None)."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else [hint]
    kind = kinds[0]
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise InputError(f"{ENV_PREFIX}{name.upper()}={text!r} is not a valid {kind.__name__}", param=name) from None
