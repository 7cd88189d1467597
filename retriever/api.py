"""``Retriever``: open a store, embed queries with its CLIP model, search, predict."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import index_store
from nearest_prompt.clip import ClipEncoder, ClipSpec, load_clip, parse_clip_spec
from nearest_prompt.errors import InputError, ModelError
from nearest_prompt.images import DEFAULT_MAX_PIXELS, ImageSet, Skipped, load_image
from nearest_prompt.minilm import MiniLMEncoder, load_minilm
from nearest_prompt.progress import progress_bar

from .search import Neighbors, search
from .weighting import Prediction, Weighting, blend

log = logging.getLogger(__name__)

DEFAULT_K_QUERY = 10
DEFAULT_K_PREDICT = 100


@dataclass
class EmbeddedImages:
    """CLIP vectors for the images that could be read, plus those skipped."""

    paths: list[Path]
    vectors: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)


class Retriever:
    """Search and predict over one index store.

    The CLIP model is loaded on first use, from the store's manifest unless
    ``clip`` names another copy of it (e.g. ``local-dir:`` after moving the
    weights); a model that differs from the one the index was built with is
    refused.
    """

    def __init__(self, store: index_store.Store, *, clip: str | ClipSpec | ClipEncoder | None = None,
                 pretrained: str | None = None, minilm: str | MiniLMEncoder | None = None,
                 device: str | None = None):
        self.store = store
        self.device = device
        self._clip: ClipEncoder | None = None
        self._clip_search: Any = None  # a faster view of store.index (see use_search_backend)
        self._minilm: MiniLMEncoder | None = None
        self._minilm_spec: str | None = None
        if isinstance(minilm, MiniLMEncoder):
            self._check_minilm(minilm)
            self._minilm = minilm
        else:
            self._minilm_spec = minilm
        if isinstance(clip, ClipEncoder):
            self._check_model(clip)
            self._clip = clip
            self._clip_spec = None
        elif isinstance(clip, ClipSpec):
            self._clip_spec = clip
        elif clip is not None:
            self._clip_spec = parse_clip_spec(clip, pretrained)
        else:
            self._clip_spec = None

    @classmethod
    def open(cls, path: str | Path, *, clip: str | ClipSpec | ClipEncoder | None = None,
             pretrained: str | None = None, minilm: str | MiniLMEncoder | None = None,
             device: str | None = None, verify: str = "auto") -> "Retriever":
        return cls(index_store.open_store(path, verify=verify), clip=clip, pretrained=pretrained,
                   minilm=minilm, device=device)

    @property
    def rows(self) -> int:
        return self.store.rows

    # -- models ---------------------------------------------------------------
    @property
    def clip(self) -> ClipEncoder:
        if self._clip is None:
            built_with = self.store.clip_info
            spec = self._clip_spec or built_with.spec()
            try:
                encoder = load_clip(spec, device=self.device)
            except (ModelError, FileNotFoundError) as e:
                if self._clip_spec is None:
                    raise ModelError(
                        f"the CLIP model this index was built with ({built_with.spec().label}) cannot be loaded "
                        f"here ({e}); pass --clip with a copy of the same weights"
                    ) from e
                raise
            self._check_model(encoder)
            self._clip = encoder
        return self._clip

    def _check_model(self, encoder: ClipEncoder) -> None:
        built_with = self.store.clip_info
        why = built_with.mismatch(encoder.info)
        if why:
            raise ModelError(
                f"CLIP {encoder.info.model} does not match the model this index was built with "
                f"({built_with.spec().label}): {why}; query with the same model, or rebuild the index"
            )

    @property
    def minilm(self) -> MiniLMEncoder:
        """The MiniLM encoder (for text queries in MiniLM space and evaluation), loaded on first use."""
        if self._minilm is None:
            encoder = load_minilm(self._minilm_spec or self.store.minilm_info.model, device=self.device)
            self._check_minilm(encoder)
            self._minilm = encoder
        return self._minilm

    def _check_minilm(self, encoder: MiniLMEncoder) -> None:
        built = self.store.minilm_info
        if encoder.info.dim != built.dim or (built.weights and encoder.info.weights
                                             and built.weights != encoder.info.weights):
            raise ModelError(
                f"MiniLM {encoder.info.model} does not match the one this index was built with ({built.model}); "
                "use the same model"
            )

    # -- embedding ------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Unit CLIP text vectors [n, d] (the index's space)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.clip.encode_text(list(texts), batch_size=batch_size)

    def embed_images(self, images: Sequence[Any], *, batch_size: int = 16,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Unit CLIP image vectors [n, d] for PIL images or paths (any bad path raises)."""
        pils = [load_image(im, max_pixels=max_pixels) if isinstance(im, (str, Path)) else im for im in images]
        return self.clip.encode_images(pils, batch_size=batch_size)

    def embed_image_set(self, images: ImageSet, *, batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
                        progress: bool = False) -> EmbeddedImages:
        """Embed an ``ImageSet`` in batches (bounded memory). Files from folders that fail to decode
        are skipped and reported; an explicitly named file that fails raises."""
        explicit = set(images.explicit)
        used: list[Path] = []
        parts: list[np.ndarray] = []
        skipped = list(images.skipped)
        with progress_bar(total=len(images.paths), desc="images", enabled=progress, unit="img") as bar:
            for start in range(0, len(images.paths), batch_size):
                batch_paths, pils = [], []
                for p in images.paths[start:start + batch_size]:
                    try:
                        pils.append(load_image(p, max_pixels=max_pixels))
                        batch_paths.append(p)
                    except InputError as e:
                        if p in explicit:
                            raise
                        skipped.append(Skipped(str(p), str(e).split(": ", 1)[-1]))
                if pils:
                    parts.append(self.clip.encode_images(pils, batch_size=batch_size))
                    used.extend(batch_paths)
                bar.update(len(images.paths[start:start + batch_size]))
        if not used:
            raise InputError(f"no usable images ({len(skipped)} skipped: {skipped[0].path}: {skipped[0].reason})")
        return EmbeddedImages(used, np.concatenate(parts), skipped)

    # -- search and predict ---------------------------------------------------
    def use_search_backend(self, backend: str = "auto") -> "Retriever":
        """Search the CLIP index with ``faiss`` (CPU), ``faiss-gpu``, ``torch`` (exact, CUDA) or ``auto``."""
        from .torch_search import to_search_backend

        self._clip_search = to_search_backend(self.store.index, backend, device=self.device)
        return self

    def search(self, queries: np.ndarray, *, k: int = DEFAULT_K_QUERY) -> Neighbors:
        """Top-k prompts for unit CLIP query vectors [n, d]."""
        index = self.store.index if self._clip_search is None else self._clip_search
        return search(index, queries, k=k)

    def search_minilm(self, queries: np.ndarray, *, k: int = DEFAULT_K_QUERY) -> Neighbors:
        """Top-k prompts for unit MiniLM query vectors [n, 384] (``Retriever.minilm.encode``)."""
        return search(self.store.minilm_index, queries, k=k)

    def predict(self, queries: np.ndarray, *, k: int = DEFAULT_K_PREDICT,
                weighting: Weighting | None = None) -> Prediction:
        """One unit 384-d vector and a confidence per query vector (see ``retriever.weighting``)."""
        weighting = (weighting or Weighting()).validate()
        return blend(self.search(queries, k=k), self.store.minilm, weighting)

    def prompts(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        return self.store.prompts(ids)
