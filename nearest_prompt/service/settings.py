"""The service's options, validated once: ``nearest-prompt serve`` fills them from its flags."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS

ENV = "NEAREST_PROMPT_SERVE"  # settings as JSON, for uvicorn worker processes (--workers > 1)


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    index: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # every endpoint but /health and the page then needs "Authorization: Bearer TOKEN"
    max_batch: int = 32  # images sharing one CLIP forward pass
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    workers: int = 1  # server processes, each with its own model
    max_body_bytes: int = 20 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    queue_size: int = 256  # images waiting for the encoder; beyond it, 503 with Retry-After
    timeout_s: float = 60.0  # per request
    allow_image_urls: bool = False  # clip back's image_url: fetching URLs for strangers is an SSRF hole
    device: str | None = None
    search_backend: str = "auto"
    clip: str | None = None  # where to find a copy of the store's CLIP weights (as query's --clip)
    pretrained: str | None = None
    name: str | None = None  # the index's name in the clip back protocol (default: the folder's name)

    def validate(self) -> ServeSettings:
        if not Path(self.index).expanduser().is_dir():
            raise InputError(f"{self.index}: no index store there", param="index")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}", param="port")
        for name in ("max_batch", "workers", "max_body_bytes", "max_pixels", "queue_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        for name in ("max_wait_ms", "timeout_s"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be at least 0, got {getattr(self, name)}", param=name)
        if self.token is not None and len(self.token) < 8:
            raise InputError("token must have at least 8 characters", param="token")
        return self

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

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        return cls(**json.loads(os.environ[ENV]))
