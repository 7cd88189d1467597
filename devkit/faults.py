"""Fault injection for tests: encoders that kill the process they run in, once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class DyingOnceClip:
    """The CLIP text encoder of ``spec`` that kills its own process (``os._exit``, as a crash or an OOM kill
    would) on its first encode while ``marker`` exists, removing the marker first: the next process to run
    it lives. Pickles as (spec, marker), so a Ray worker loads the model itself."""

    def __init__(self, spec: str, marker: str | Path):
        from nearest_prompt.encoders.clip import load_clip, parse_clip_spec

        self.spec, self.marker = spec, Path(marker)
        self._encoder = load_clip(parse_clip_spec(spec), device="cpu")
        self.info, self.dim = self._encoder.info, self._encoder.dim

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "marker": str(self.marker)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["marker"])

    def encode_text(self, texts: list[str], *, batch_size: int = 64) -> Any:
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return self._encoder.encode_text(texts, batch_size=batch_size)
        os._exit(1)
