"""``Retriever``: open a store, embed queries with its models, search a space, predict.

Spaces (``index_store.format.SPACES``): ``"clip"`` (images, and texts through the CLIP text encoder)
and ``"minilm"`` (texts through MiniLM). Every search and text embedding takes the space as a
parameter, so a third space is a new entry, not a copy of these methods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt import index_store
from nearest_prompt.common.errors import InputError, ModelError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.encoders.clip import (
    ClipEncoder,
    ClipSpec,
    count_tokens,
    load_clip,
    load_tokenizer,
    parse_clip_spec,
    resolve_spec,
)
from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS, ImageSet, Skipped, load_image
from nearest_prompt.encoders.minilm import MiniLMEncoder, load_minilm
from nearest_prompt.index_store.format import SPACES

from .search import Neighbors, check_k, search
from .weighting import Prediction, Weighting, blend, fuse, neighbor_shares

log = logging.getLogger(__name__)

DEFAULT_K_QUERY = 10
DEFAULT_K_PREDICT = 100


@dataclass
class EmbeddedImages:
    """CLIP vectors for the images that could be read, plus those skipped."""

    paths: list[Path]
    vectors: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class QueryResult:
    """The neighbours of one query: ``kind`` "image" or "text", its ``label`` (path or text), row ids,
    scores and prompts, best first, without faiss padding."""

    kind: str
    label: str
    ids: np.ndarray
    scores: np.ndarray
    prompts: list[str]
    weights: np.ndarray | None = None  # each neighbour's share of a prediction blended from these (sums to 1)
    metadata: list[dict[str, Any]] = field(default_factory=list)  # the store's kept columns, one dict a neighbour


def check_space(space: str) -> str:
    if space not in SPACES:
        raise InputError(f"space must be one of {', '.join(SPACES)}, got {space!r}", param="space")
    return space


class Retriever:
    """Search and predict over one index store.

    The CLIP model is loaded on first use, from the store's manifest unless
    ``clip`` names another copy of it (e.g. ``local-dir:`` after moving the
    weights); a model that differs from the one the index was built with is
    refused. ``clip`` and ``minilm`` also take loaded encoders: ``ClipEncoder`` and ``MiniLMEncoder``, or
    any object with the same methods and ``info`` (the service passes encoders that queue their work).
    """

    def __init__(self, store: index_store.Store, *, clip: str | ClipSpec | ClipEncoder | Any = None,
                 pretrained: str | None = None, minilm: str | MiniLMEncoder | Any = None,
                 device: str | None = None):
        self.store = store
        self.device = device
        self._clip: ClipEncoder | None = None
        self._search_views: dict[str, Any] = {}  # faster views of store.indexes (see use_search_backend)
        self._minilm: MiniLMEncoder | None = None
        self._minilm_spec: str | None = None
        if minilm is not None and not isinstance(minilm, str):  # an encoder: MiniLMEncoder, or one like it
            self._check_minilm(minilm)
            self._minilm = minilm
        else:
            self._minilm_spec = minilm
        self._clip_spec: ClipSpec | None = None
        self._tokenizer: Any = None
        if isinstance(clip, ClipSpec):
            self._clip_spec = clip
        elif isinstance(clip, str):
            self._clip_spec = parse_clip_spec(clip, pretrained)
        elif clip is not None:  # an encoder: ClipEncoder, or one like it (encode_text, encode_images, info)
            self._check_model(clip)
            self._clip = clip

    @classmethod
    def open(cls, path: str | Path, *, clip: str | ClipSpec | ClipEncoder | None = None,
             pretrained: str | None = None, minilm: str | MiniLMEncoder | None = None,
             device: str | None = None, verify: str = "auto") -> Retriever:
        return cls(index_store.open_store(path, verify=verify), clip=clip, pretrained=pretrained,
                   minilm=minilm, device=device)

    def with_encoders(self, *, clip: Any, minilm: Any) -> Retriever:
        """The same store and search backend with other encoders (e.g. ones that queue their work)."""
        other = Retriever(self.store, clip=clip, minilm=minilm, device=self.device)
        other._search_views = self._search_views
        return other

    @property
    def rows(self) -> int:
        return self.store.rows

    # -- models ---------------------------------------------------------------
    @property
    def clip(self) -> ClipEncoder:
        if self._clip is None:
            built_with = self.store.clip_info
            spec = self._clip_spec or resolve_spec(built_with.spec(), store=self.store.path)
            try:
                encoder = load_clip(spec, device=self.device)
            except (ModelError, FileNotFoundError) as e:
                if self._clip_spec is None:
                    raise ModelError(
                        f"the CLIP model this index was built with ({spec.label}) cannot be loaded "
                        f"here ({e}); give the location of a copy of the same weights as clip", param="clip"
                    ) from e
                raise
            self._check_model(encoder)
            self._clip = encoder
        return self._clip

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP tokens of each text, untruncated, start and end included (the store's CLIP tokenizer; the
        model's weights are not loaded for this)."""
        if self._clip is not None:
            return self._clip.count_tokens(texts)
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._clip_spec or resolve_spec(self.store.clip_info.spec(),
                                                                             store=self.store.path))
        return count_tokens(self._tokenizer, texts)

    def _check_model(self, encoder: ClipEncoder) -> None:
        built_with = self.store.clip_info
        why = built_with.mismatch(encoder.info)
        if why:
            raise ModelError(
                f"CLIP {encoder.info.model} does not match the model this index was built with "
                f"({built_with.spec().label}): {why}; query with the same model, or rebuild the index", param="clip"
            )

    @property
    def minilm(self) -> MiniLMEncoder:
        """The MiniLM encoder (text queries in MiniLM space, evaluation), loaded on first use."""
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
                "use the same model", param="minilm"
            )

    # -- embedding ------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], *, space: str = "clip", batch_size: int = 64) -> np.ndarray:
        """Unit text vectors [n, d] in ``space``: the CLIP text encoder, or MiniLM."""
        if isinstance(texts, str):
            texts = [texts]
        if check_space(space) == "minilm":
            return self.minilm.encode(list(texts), batch_size=batch_size)
        return self.clip.encode_text(list(texts), batch_size=batch_size)

    def embed_images(self, images: ImageSet | Sequence[Any], *, batch_size: int = 16,
                     max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False) -> EmbeddedImages:
        """Unit CLIP vectors of images, in batches (bounded memory): an ``ImageSet`` (files from folders
        that fail to decode are skipped and reported), or paths and PIL images (any failure raises)."""
        if not isinstance(images, ImageSet):
            pils = [im for im in images if not isinstance(im, (str, Path))]
            if pils:
                if len(pils) != len(images):
                    raise InputError("give either image paths or PIL images, not both", param="images")
                return EmbeddedImages([], self.clip.encode_images(pils, batch_size=batch_size), [])
            paths = [Path(p) for p in images]
            images = ImageSet(paths, [], paths)
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
            raise InputError(f"no usable images ({len(skipped)} skipped: {skipped[0].path}: {skipped[0].reason})",
                             param="images")
        return EmbeddedImages(used, np.concatenate(parts), skipped)

    # -- search and predict ---------------------------------------------------
    def use_search_backend(self, backend: str = "auto") -> Retriever:
        """Search the CLIP index with ``faiss`` (CPU), ``faiss-gpu``, ``torch`` (exact, CUDA) or ``auto``."""
        from .torch_search import to_search_backend

        self._search_views["clip"] = to_search_backend(self.store.indexes["clip"], backend, device=self.device)
        return self

    def search(self, queries: np.ndarray, *, k: int = DEFAULT_K_QUERY, space: str = "clip",
               where: str | None = None) -> Neighbors:
        """Top-k prompts for unit query vectors [n, d] of ``space`` (see ``embed_texts``, ``embed_images``),
        among the rows matching ``where`` (``index_store.where``; fewer than k come back, padded with -1,
        only when fewer rows match). Removed prompts never come back. Results a damaged index could give
        (impossible scores, ids outside the store) raise ``StoreError``."""
        allowed = self.store.allowed(where)
        views = self._search_views
        index = views[space] if check_space(space) in views and allowed is None else self.store.indexes[space]
        nb = search(index, queries, k=k, allowed=allowed, vectors=self.store.vectors.get(space))
        self.store.check_results(space, nb.ids, nb.scores)
        return nb

    def search_fragments(self, queries: np.ndarray, *, k: int, space: str = "clip") -> Neighbors:
        """The ``k`` fragments of the store's vocabulary nearest to unit query vectors of ``space`` (ids are
        fragment rows: ``store.fragments.texts(ids)``); no columns for a version-1 store or an empty
        vocabulary."""
        fragments = self.store.fragments
        n = len(queries)
        if fragments is None or len(fragments) == 0 or k < 1:
            return Neighbors(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32))
        return search(fragments.indexes[check_space(space)], queries, k=min(k, len(fragments)))

    def predict(self, queries: np.ndarray, *, k: int = DEFAULT_K_PREDICT, weighting: Weighting | None = None,
                captions: Sequence[str | None] | None = None, caption_weight: float = 1.0,
                caption_space: str = "clip", where: str | None = None) -> Prediction:
        """One unit 384-d vector and a confidence per CLIP query vector (see ``retriever.weighting``), from
        the neighbours matching ``where`` (all when None).

        ``captions`` (one per query, ``None`` where there is none) adds a second query per image, fused
        with the image's neighbours (``weighting.fuse``): its text searched in ``caption_space`` with
        weight ``caption_weight`` (the image has 1)."""
        weighting = (weighting or Weighting()).validate()
        check_k(k, self.rows)
        image_nb = self.search(queries, k=k, where=where)
        if captions is None:
            return blend(image_nb, self.store.minilm, weighting)
        if len(captions) != len(queries):
            raise InputError(f"{len(captions)} captions for {len(queries)} queries", param="captions")
        have = [i for i, c in enumerate(captions) if c]
        cap_ids = np.full((len(queries), k), -1, dtype=np.int64)
        cap_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        if have:
            nb = self.search(self.embed_texts([captions[i] for i in have], space=caption_space), k=k,
                             space=caption_space, where=where)
            cap_ids[have], cap_scores[have] = nb.ids, nb.scores
        log.info("%d of %d images have a caption", len(have), len(queries))
        return fuse([(image_nb, 1.0), (Neighbors(cap_ids, cap_scores), caption_weight)], self.store.minilm,
                    weighting)

    def query(self, *, images: ImageSet | None = None, texts: Sequence[str] = (), space: str = "clip",
              k: int = DEFAULT_K_QUERY, batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
              progress: bool = False, where: str | None = None,
              weighting: Weighting | None = None) -> tuple[list[QueryResult], list[Skipped]]:
        """Nearest prompts for images (always in CLIP space) and texts (in ``space``) among the rows matching
        ``where``: one result per query, images first, plus the folder files that were skipped. Each
        neighbour carries its kept columns and its share of a prediction blended from these neighbours
        (``weighting``, the default one when None)."""
        weighting = (weighting or Weighting()).validate()
        if images is None and not texts:
            raise InputError("nothing to query: give images or texts", param="images")
        if check_space(space) != "clip" and images is not None:
            raise InputError(f"images are searched in CLIP space only, not {space!r}; query texts in that "
                             "space on their own", param="space")
        check_k(k, self.rows)
        empty = [i for i, text in enumerate(texts) if not str(text).strip()]
        if empty:
            raise InputError(f"text {empty[0] + 1} of {len(texts)} is empty; give a text to search for", param="text")
        results: list[QueryResult] = []
        skipped: list[Skipped] = []
        batches: list[tuple[str, list[str], np.ndarray]] = []
        if images is not None:
            emb = self.embed_images(images, batch_size=batch_size, max_pixels=max_pixels, progress=progress)
            batches.append(("image", [str(p) for p in emb.paths], emb.vectors))
            skipped = emb.skipped
        if texts:
            batches.append(("text", list(texts), self.embed_texts(list(texts), space=space)))
        for kind, labels, vectors in batches:
            nb = self.search(vectors, k=k, space=space, where=where)
            shares = neighbor_shares(nb, weighting)
            for label, ids, scores, share in zip(labels, nb.ids, nb.scores, shares):
                valid = ids >= 0
                results.append(QueryResult(kind, label, ids[valid], scores[valid], self.prompts(ids[valid]),
                                           weights=share[valid], metadata=self.store.metadata(ids[valid])))
        return results, skipped

    def prompts(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        return self.store.prompts(ids)
