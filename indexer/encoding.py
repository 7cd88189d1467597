"""How any process gets a text encoder: what the engines send to where the embedding runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TextEncoding:
    """How any process gets a text encoder: ``kind`` ("minilm" or "clip") and the loader's ``spec`` (a
    model name, or an ``encoders.clip.ClipSpec``), or an ``encoder`` object (loaded here, or to be shipped
    by pickling where there is no spec)."""

    kind: str
    spec: Any = None
    device: str | None = None
    encoder: Any = None

    def load(self) -> Any:
        if self.encoder is not None:
            return self.encoder
        if self.kind == "minilm":
            from nearest_prompt.encoders.minilm import load_minilm

            return load_minilm(self.spec, device=self.device)
        from nearest_prompt.encoders.clip import load_clip

        return load_clip(self.spec, device=self.device)

    def portable(self) -> TextEncoding:
        """What to send to another machine: the spec alone where there is one (workers load the model)."""
        return replace(self, encoder=None) if self.spec is not None else self


def encode_fn(kind: str, encoder: Any) -> Callable[[list[str]], np.ndarray]:
    if kind == "minilm":
        return lambda batch: encoder.encode(batch, batch_size=len(batch))
    return lambda batch: encoder.encode_text(batch, batch_size=len(batch))
