"""``Retriever``: open a store, embed queries with its models, search its spaces, predict.

Spaces: the store's CLIP spaces (``"clip"`` by default; more with ``build --space``, and image spaces
``NAME-image``: images, and texts through that space's CLIP text encoder) and ``"minilm"`` (texts through
MiniLM). Every search and embedding takes the space as a parameter; a ``SearchPlan`` (``retriever.plans``)
searches several (a cascade, a fusion), with the queries embedded once per model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
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
from nearest_prompt.index_store.format import MINILM_SPACE

from .plans import SearchPlan, run_plan
from .search import Neighbors, check_k, search
from .weighting import Prediction, Weighting, blend, fuse, neighbor_shares

log = logging.getLogger(__name__)

DEFAULT_K_QUERY = 10
DEFAULT_K_PREDICT = 100


@dataclass
class EmbeddedImages:
    """CLIP vectors for the images that could be read, plus those skipped. ``vectors``: the first space's asked
    for (the primary one by default); ``by_space``: every space's asked for (each model ran once)."""

    paths: list[Path]
    vectors: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    by_space: dict[str, np.ndarray] = field(default_factory=dict)


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


class Retriever:
    """Search and predict over one index store.

    Each CLIP model is loaded on first use, from the store's manifest unless ``clip`` names another copy of the
    primary space's model (e.g. ``local-dir:`` after moving the weights); a model that differs from the one the
    index was built with is refused. ``clip`` and ``minilm`` also take loaded encoders: ``ClipEncoder`` and
    ``MiniLMEncoder``, or any object with the same methods and ``info`` (the service passes encoders that queue
    their work); ``clips`` the encoders of other CLIP text spaces, by name.
    """

    def __init__(self, store: index_store.Store, *, clip: str | ClipSpec | ClipEncoder | Any = None,
                 pretrained: str | None = None, minilm: str | MiniLMEncoder | Any = None,
                 device: str | None = None, clips: dict[str, Any] | None = None):
        self.store = store
        self.device = device
        self._clips: dict[str, Any] = {}  # text space -> its CLIP encoder, loaded on first use
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
            self._check_model(clip, store.primary)
            self._clips[store.primary] = clip
        for name, encoder in (clips or {}).items():
            self._check_model(encoder, name)
            self._clips[name] = encoder

    @classmethod
    def open(cls, path: str | Path, *, clip: str | ClipSpec | ClipEncoder | None = None,
             pretrained: str | None = None, minilm: str | MiniLMEncoder | None = None,
             device: str | None = None, verify: str = "auto") -> Retriever:
        return cls(index_store.open_store(path, verify=verify), clip=clip, pretrained=pretrained,
                   minilm=minilm, device=device)

    def with_encoders(self, *, clip: Any, minilm: Any, clips: dict[str, Any] | None = None) -> Retriever:
        """The same store and search backend with other encoders (e.g. ones that queue their work)."""
        other = Retriever(self.store, clip=clip, minilm=minilm, device=self.device, clips=clips)
        other._search_views = self._search_views
        return other

    @property
    def rows(self) -> int:
        return self.store.rows

    # -- models ---------------------------------------------------------------
    @property
    def clip(self) -> ClipEncoder:
        """The primary CLIP space's encoder."""
        return self.clip_for(self.store.primary)

    def text_spaces(self) -> list[str]:
        """The CLIP text spaces: one a CLIP model (an image space is embedded by its text space's model)."""
        return [name for name, info in self.store.manifest.spaces.items() if info.kind == "text"]

    def clip_for(self, space: str) -> ClipEncoder:
        """The CLIP encoder of a space (an image space's is its text space's), loaded on first use."""
        name = self.store.model_space(space)
        if name not in self._clips:
            info = self.store.space(name).model
            given = self._clip_spec if name == self.store.primary else None
            spec = given or resolve_spec(info.spec(), store=self.store.path)
            try:
                encoder = load_clip(spec, device=self.device)
            except (ModelError, FileNotFoundError) as e:
                if given is None:
                    raise ModelError(
                        f"the CLIP model this index was built with ({spec.label}) cannot be loaded here ({e}); give "
                        "the location of a copy of the same weights as clip" if name == self.store.primary else
                        f"the CLIP model of the index's space {name!r} ({spec.label}) cannot be loaded here ({e}); "
                        "put a copy of the same weights where the store's manifest says", param="clip") from e
                raise
            self._check_model(encoder, name)
            self._clips[name] = encoder
        return self._clips[name]

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP tokens of each text, untruncated, start and end included (the primary space's CLIP tokenizer; the
        model's weights are not loaded for this)."""
        primary = self._clips.get(self.store.primary)
        if primary is not None:
            return primary.count_tokens(texts)
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._clip_spec or resolve_spec(self.store.clip_info.spec(),
                                                                             store=self.store.path))
        return count_tokens(self._tokenizer, texts)

    def _check_model(self, encoder: ClipEncoder, space: str) -> None:
        built_with = self.store.space(space).model
        why = built_with.mismatch(encoder.info)
        if why:
            raise ModelError(
                f"CLIP {encoder.info.model} does not match the model this index was built with (space {space!r}: "
                f"{built_with.spec().label}): {why}; query with the same model, or rebuild the index", param="clip"
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

    def check_space(self, space: str) -> str:
        """``space`` when the store has it (a CLIP space or "minilm"); else an ``InputError`` naming them."""
        if space != MINILM_SPACE:
            self.store.space(space)
        return space

    def plan(self, plan: SearchPlan | None = None, *, space: str | None = None) -> SearchPlan:
        """``plan`` (or a plain search of ``space``, the primary space by default), its spaces checked."""
        plan = plan or SearchPlan(space=space)
        for name in plan.spaces(self.store.primary):
            self.check_space(name)
        if plan.cascade or plan.fuse:
            if MINILM_SPACE in plan.spaces(self.store.primary):
                raise InputError("cascades and fusions combine CLIP spaces; minilm is not one", param="space")
            missing = [s for s in plan.spaces(self.store.primary) if s not in self.store.vectors]
            if missing:
                raise InputError(f"this index keeps no vectors of space {missing[0]!r} to score exactly (a store "
                                 "before format version 3); rebuild it", param="space")
        return plan

    # -- embedding ------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], *, space: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Unit text vectors [n, d] in ``space``: its CLIP text encoder (the primary space's by default; an image
        space's is its text space's), or MiniLM."""
        if isinstance(texts, str):
            texts = [texts]
        if space == MINILM_SPACE:
            return self.minilm.encode(list(texts), batch_size=batch_size)
        return self.clip_for(space or self.store.primary).encode_text(list(texts), batch_size=batch_size)

    def embed_queries(self, texts: Sequence[str], spaces: Sequence[str]) -> dict[str, np.ndarray]:
        """Text queries in each of ``spaces``, each model run once (an image space shares its text space's)."""
        by_model: dict[str, np.ndarray] = {}
        out = {}
        for space in spaces:
            model = MINILM_SPACE if space == MINILM_SPACE else self.store.model_space(space)
            if model not in by_model:
                by_model[model] = self.embed_texts(texts, space=model)
            out[space] = by_model[model]
        return out

    def embed_images(self, images: ImageSet | Sequence[Any], *, batch_size: int = 16,
                     max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                     spaces: Sequence[str] | None = None) -> EmbeddedImages:
        """Unit CLIP vectors of images, in batches (bounded memory), in each of ``spaces`` (the primary space by
        default; each model runs once): an ``ImageSet`` (files from folders that fail to decode are skipped and
        reported), or paths and PIL images (any failure raises)."""
        spaces = list(spaces or [self.store.primary])
        models = list(dict.fromkeys(self.store.model_space(s) for s in spaces))
        encoders = {m: self.clip_for(m) for m in models}

        def encode(pils: list[Any]) -> dict[str, np.ndarray]:
            return {m: encoder.encode_images(pils, batch_size=batch_size) for m, encoder in encoders.items()}

        def result(paths: list[Path], parts: list[dict[str, np.ndarray]], skipped: list[Skipped]) -> EmbeddedImages:
            by_model = {m: np.concatenate([p[m] for p in parts]) for m in models}
            by_space = {s: by_model[self.store.model_space(s)] for s in spaces}
            return EmbeddedImages(paths, by_space[spaces[0]], skipped, by_space)

        if not isinstance(images, ImageSet):
            pils = [im for im in images if not isinstance(im, (str, Path))]
            if pils:
                if len(pils) != len(images):
                    raise InputError("give either image paths or PIL images, not both", param="images")
                return result([], [encode(pils)], [])
            paths = [Path(p) for p in images]
            images = ImageSet(paths, [], paths)
        explicit = set(images.explicit)
        used: list[Path] = []
        parts: list[dict[str, np.ndarray]] = []
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
                    parts.append(encode(pils))
                    used.extend(batch_paths)
                bar.update(len(images.paths[start:start + batch_size]))
        if not used:
            raise InputError(f"no usable images ({len(skipped)} skipped: {skipped[0].path}: {skipped[0].reason})",
                             param="images")
        return result(used, parts, skipped)

    # -- search and predict ---------------------------------------------------
    def use_search_backend(self, backend: str = "auto") -> Retriever:
        """Search the primary CLIP index with ``faiss`` (CPU), ``faiss-gpu``, ``torch`` (exact, CUDA) or ``auto``."""
        from .torch_search import to_search_backend

        primary = self.store.primary
        self._search_views[primary] = to_search_backend(self.store.indexes[primary], backend, device=self.device)
        return self

    def search(self, queries: np.ndarray | Mapping[str, np.ndarray], *, k: int = DEFAULT_K_QUERY,
               space: str | None = None, where: str | None = None, plan: SearchPlan | None = None) -> Neighbors:
        """Top-k prompts for unit query vectors [n, d] of ``space`` (the primary CLIP space by default; see
        ``embed_texts``, ``embed_images``), among the rows matching ``where`` (``index_store.where``; fewer than
        k come back, padded with -1, only when fewer rows match). ``plan`` searches several spaces (a cascade, a
        fusion: ``retriever.plans``); ``queries`` then maps each of its spaces to the query in that space's
        model (one array will do when they share one model). Removed prompts never come back. Results a damaged
        index could give (impossible scores, ids outside the store) raise ``StoreError``."""
        plan = self.plan(plan, space=space)
        check_k(k, self.rows)
        spaces = plan.spaces(self.store.primary)
        by_space = self._by_space(queries, spaces)
        n = len(next(iter(by_space.values())))
        if any(len(q) != n for q in by_space.values()):
            raise InputError("the queries of the spaces differ in number", param="queries")
        return run_plan(plan, by_space, k=k, primary=self.store.primary, search=functools.partial(self._search, where),
                        vectors=self.store.vectors, members=self.store.members)

    def _search(self, where: str | None, space: str, queries: np.ndarray, k: int) -> Neighbors:
        allowed = self.store.allowed(where, space=space)
        views = self._search_views
        index = views[space] if space in views and allowed is None else self.store.indexes[space]
        nb = search(index, queries, k=min(k, self.rows), allowed=allowed, vectors=self.store.vectors.get(space))
        self.store.check_results(space, nb.ids, nb.scores)
        return nb

    def _by_space(self, queries: np.ndarray | Mapping[str, np.ndarray], spaces: list[str]) -> dict[str, np.ndarray]:
        if isinstance(queries, Mapping):
            missing = [s for s in spaces if s not in queries]
            if missing:
                raise InputError(f"no query vectors for space {missing[0]!r} (embed the queries in every space the "
                                 "search uses: embed_images(spaces=...), embed_queries)", param="queries")
            return {s: queries[s] for s in spaces}
        models = {MINILM_SPACE if s == MINILM_SPACE else self.store.model_space(s) for s in spaces}
        if len(models) > 1:
            raise InputError(f"the spaces {', '.join(spaces)} use different models: give the queries as a mapping "
                             "from space to vectors (embed_images(spaces=...), embed_queries)", param="queries")
        return {s: queries for s in spaces}

    def search_fragments(self, queries: np.ndarray, *, k: int, space: str = "clip") -> Neighbors:
        """The ``k`` fragments of the store's vocabulary nearest to unit query vectors of ``space`` ("clip": the
        primary CLIP space's model, or "minilm"; ids are fragment rows: ``store.fragments.texts(ids)``); no
        columns for a version-1 store or an empty vocabulary."""
        fragments = self.store.fragments
        n = len(queries)
        if fragments is None or len(fragments) == 0 or k < 1:
            return Neighbors(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32))
        if space not in fragments.indexes:
            raise InputError(f"the fragment vocabulary has spaces {', '.join(fragments.indexes)}, not {space!r}",
                             param="space")
        return search(fragments.indexes[space], queries, k=min(k, len(fragments)))

    def predict(self, queries: np.ndarray | Mapping[str, np.ndarray], *, k: int = DEFAULT_K_PREDICT,
                weighting: Weighting | None = None, captions: Sequence[str | None] | None = None,
                caption_weight: float = 1.0, caption_space: str = "clip", where: str | None = None,
                plan: SearchPlan | None = None) -> Prediction:
        """One unit 384-d vector and a confidence per query (CLIP image vectors of the primary space, or of every
        space of ``plan``: see ``search``; ``retriever.weighting``), from the neighbours matching ``where`` (all
        when None).

        ``captions`` (one per query, ``None`` where there is none) adds a second query per image, fused
        with the image's neighbours (``weighting.fuse``): its text searched in ``caption_space`` (a CLIP space,
        "clip" meaning the primary one when no space has that name, or "minilm") with weight ``caption_weight``
        (the image has 1)."""
        weighting = (weighting or Weighting()).validate()
        check_k(k, self.rows)
        image_nb = self.search(queries, k=k, where=where, plan=plan)
        if captions is None:
            return blend(image_nb, self.store.minilm, weighting)
        n = len(image_nb.ids)
        if len(captions) != n:
            raise InputError(f"{len(captions)} captions for {n} queries", param="captions")
        space = self.store.primary if caption_space == "clip" and "clip" not in self.store.manifest.spaces \
            else self.check_space(caption_space)
        have = [i for i, c in enumerate(captions) if c]
        cap_ids = np.full((n, k), -1, dtype=np.int64)
        cap_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if have:
            nb = self.search(self.embed_texts([captions[i] for i in have], space=space), k=k, space=space,
                             where=where)
            cap_ids[have], cap_scores[have] = nb.ids, nb.scores
        log.info("%d of %d images have a caption", len(have), n)
        return fuse([(image_nb, 1.0), (Neighbors(cap_ids, cap_scores), caption_weight)], self.store.minilm,
                    weighting)

    def query(self, *, images: ImageSet | None = None, texts: Sequence[str] = (), space: str | None = None,
              k: int = DEFAULT_K_QUERY, batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
              progress: bool = False, where: str | None = None, weighting: Weighting | None = None,
              plan: SearchPlan | None = None) -> tuple[list[QueryResult], list[Skipped]]:
        """Nearest prompts for images (in CLIP spaces) and texts (in ``space``, or the spaces of ``plan``) among the
        rows matching ``where``: one result per query, images first, plus the folder files that were skipped. Each
        neighbour carries its kept columns and its share of a prediction blended from these neighbours
        (``weighting``, the default one when None)."""
        weighting = (weighting or Weighting()).validate()
        if images is None and not texts:
            raise InputError("nothing to query: give images or texts", param="images")
        plan = self.plan(plan, space=space)
        spaces = plan.spaces(self.store.primary)
        if MINILM_SPACE in spaces and images is not None:
            raise InputError(f"images are searched in CLIP spaces only, not {MINILM_SPACE!r}; query texts in that "
                             "space on their own", param="space")
        check_k(k, self.rows)
        empty = [i for i, text in enumerate(texts) if not str(text).strip()]
        if empty:
            raise InputError(f"text {empty[0] + 1} of {len(texts)} is empty; give a text to search for", param="text")
        results: list[QueryResult] = []
        skipped: list[Skipped] = []
        batches: list[tuple[str, list[str], dict[str, np.ndarray]]] = []
        if images is not None:
            emb = self.embed_images(images, batch_size=batch_size, max_pixels=max_pixels, progress=progress,
                                    spaces=spaces)
            batches.append(("image", [str(p) for p in emb.paths], emb.by_space))
            skipped = emb.skipped
        if texts:
            batches.append(("text", list(texts), self.embed_queries(list(texts), spaces)))
        for kind, labels, vectors in batches:
            nb = self.search(vectors, k=k, where=where, plan=plan)
            shares = neighbor_shares(nb, weighting)
            for label, ids, scores, share in zip(labels, nb.ids, nb.scores, shares):
                valid = ids >= 0
                results.append(QueryResult(kind, label, ids[valid], scores[valid], self.prompts(ids[valid]),
                                           weights=share[valid], metadata=self.store.metadata(ids[valid])))
        return results, skipped

    def prompts(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        return self.store.prompts(ids)
