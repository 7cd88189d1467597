"""Where the shared development data lives (tests, benchmarks, the quick start)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "NEAREST_PROMPT_DATA"


def shared_data_dir() -> Path:
    """``$NEAREST_PROMPT_DATA``, else ``../shared/data`` beside the project root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"
