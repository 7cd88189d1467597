"""Compose a prompt a person can paste, from a query's neighbours, the store's fragments and a caption.

Candidates of one query: the clauses of its top ``neighbors`` neighbour prompts and the ``fragments``
vocabulary fragments nearest to its target (version-1 stores have no vocabulary: neighbour clauses
only), all normalised by ``common.text.split_fragments``. The prompt starts from the caption when there
is one; else (``start``) from the top neighbour's whole prompt ("prompt", the default: it scores higher on
held-out prompts, docs/quality.md) or from the neighbours' first clause that scores best
("clause"; always in classic mode). Then, by mode:

* ``best``: greedy chain, bounded. Each step estimates, for every unused candidate, the objective of
  "prompt, candidate" from vectors alone (``normalize(n_p * v_prompt + n_c * v_cand)``, n = tokens),
  encodes the ``shortlist`` best estimates exactly (one batched encoder call for all queries), and
  appends the best if it raises the objective by more than ``min_gain``; it stops when nothing does,
  after ``max_steps``, or when no candidate fits the CLIP context (77 tokens).
* ``fast``: the same chain on the estimate alone (no exact scoring), at most ``fast_fragments``
  appended; one encoder call for the final prompts (plus one for neighbour clauses the vocabulary lacks).
* ``classic``: CLIP Interrogator's classic shape, "subject, medium artist, site, movement, flavors",
  each slot the candidate of that family (``composer.families``) most similar to the target.

Objectives (``objective``): ``minilm``, cosine of the prompt's MiniLM embedding to the predicted
vector of the top ``target_k`` neighbours (what the competition scores); ``clip``, CLIP similarity of the
prompt to the image (what makes it regenerate a similar image). ``targets`` are unit vectors of the
objective's space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.text import clean_prompt, split_fragments
from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS, ImageSet, Skipped
from nearest_prompt.retriever import Neighbors, Retriever, SearchPlan, Weighting, blend
from nearest_prompt.retriever.weighting import neighbor_shares

from .candidates import Pool, gather
from .families import family

MODES = ("best", "fast", "classic")
STARTS = ("prompt", "clause")
OBJECTIVES = ("minilm", "clip")
DEFAULT_OBJECTIVE = "minilm"  # the competition's score; the clip objective needs real CLIP weights to judge
SEPARATOR = ", "
COMPOSE_CHUNK = 64  # images composed at a time by interrogate_images
CLASSIC_POOL = 500  # nearest fragments searched for the classic mode's family slots


@dataclass(frozen=True, kw_only=True)
class ComposeOptions:
    mode: str = "best"
    objective: str = DEFAULT_OBJECTIVE
    start: str = "prompt"  # without a caption: "prompt", the top neighbour's prompt; "clause", the best first clause
    target_k: int = 10  # neighbours blended into the minilm objective's target (sharper than predict's 100)
    neighbors: int = 10  # neighbour prompts whose clauses are candidates
    fragments: int | None = None  # nearest vocabulary fragments that are candidates; None: 0 for minilm, 50 for clip
    shortlist: int = 8  # candidates scored exactly per step (best)
    max_steps: int = 12  # appended components at most (best)
    fast_fragments: int = 5  # appended components at most (fast)
    flavors: int = 3  # flavor slots (classic)
    min_gain: float = 1e-4  # a step must raise the objective by more than this (best)

    def validate(self) -> ComposeOptions:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}", param="mode")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}",
                             param="objective")
        if self.start not in STARTS:
            raise InputError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}", param="start")
        for name in ("neighbors", "shortlist", "target_k"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        for name in ("fragments", "max_steps", "fast_fragments", "flavors"):
            if (getattr(self, name) or 0) < 0:
                raise InputError(f"{name} must be at least 0, got {getattr(self, name)}", param=name)
        return self

    @property
    def fragment_count(self) -> int:
        """Vocabulary fragments among the candidates: as set, else by objective (none for ``minilm``, where
        they pull the prompt towards generic clauses, docs/quality.md; 50 for ``clip``, where they play CLIP
        Interrogator's flavors)."""
        if self.fragments is not None:
            return self.fragments
        return 0 if self.objective == "minilm" else 50


@dataclass(frozen=True)
class Component:
    """One part of a composed prompt: its text, where it came from ("caption"; "prompt": the top neighbour's
    whole prompt; "neighbour": a clause of a neighbour prompt; "fragment": the store's vocabulary), its own
    similarity to the target, and the objective of the prompt once it was appended (the chain's
    trajectory; not scored (NaN) in classic; in fast, ``estimated`` from vectors alone but for the last)."""

    text: str
    source: str
    similarity: float
    score: float
    estimated: bool = False


@dataclass(frozen=True)
class Composition:
    prompt: str
    components: list[Component]
    objective: str
    score: float  # the objective of the whole prompt, encoded exactly
    minilm: np.ndarray  # float32 [384], the prompt's unit MiniLM vector
    tokens: int  # CLIP tokens, start and end included
    clip_similarity: float | None = None  # the prompt's CLIP similarity to the image (image queries)
    neighbors: list[dict[str, Any]] = field(default_factory=list)  # the neighbours searched (``interrogate``):
    # id, score, prompt, weight (share of a prediction blended from them), metadata (the store's kept columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``interrogate --json`` and the service's ``/interrogate`` answer)."""
        r = lambda x: None if x is None or x != x else round(float(x), 6)  # noqa: E731  (NaN: not scored)
        return {"prompt": self.prompt, "objective": self.objective, "score": r(self.score),
                "clip_similarity": r(self.clip_similarity), "tokens": self.tokens,
                "components": [{"text": c.text, "source": c.source, "similarity": r(c.similarity), "score": r(c.score),
                                "estimated": c.estimated} for c in self.components],
                "neighbors": self.neighbors,
                "minilm": [round(float(v), 7) for v in self.minilm]}


@dataclass(frozen=True)
class Interrogation:
    """What ``interrogate_images`` made: per image used, its path, the caption it started from and its
    composition; plus the folder files that were skipped."""

    paths: list[Path]
    captions: list[str | None]
    compositions: list[Composition]
    skipped: list[Skipped]


CAPTION, TOP_PROMPT = -1, -2  # parts that are not candidate rows


@dataclass
class _Prompt:
    parts: list[int]  # candidate rows, CAPTION or TOP_PROMPT
    text: str
    vector: np.ndarray
    score: float
    tokens: int
    trail: list[float]
    used: set[int] = field(default_factory=set)  # candidate rows already in the text


class Composer:
    """Composes prompts over one store. ``compose`` takes neighbours and targets (plain arrays);
    ``interrogate`` takes CLIP image vectors and does the search and prediction first."""

    def __init__(self, retriever: Retriever, *, options: ComposeOptions | None = None):
        self.r = retriever
        self.options = (options or ComposeOptions()).validate()
        self.max_tokens = int(retriever.store.clip_info.context_length or 77)

    @property
    def has_vocabulary(self) -> bool:
        return self.r.store.fragments is not None

    def interrogate(self, images: np.ndarray | Mapping[str, np.ndarray], *,
                    captions: Sequence[str | None] | None = None, weighting: Weighting | None = None,
                    where: str | None = None, plan: SearchPlan | None = None) -> list[Composition]:
        """Prompts for unit CLIP image vectors [n, d] of the primary space (or, with ``plan``, a mapping from each of
        its spaces, and the primary one, to the images' vectors there): their neighbours (among the rows matching
        ``where``), the predicted vector of the top ``target_k`` (fused with the captions, as
        ``Retriever.predict``) as the ``minilm`` target or the image vector as the ``clip`` one, then
        ``compose``. ``captions`` (one per image, None where there is none) start the prompts. Each composition
        lists the neighbours searched."""
        o = self.options
        primary = self.r.store.primary
        if isinstance(images, Mapping):
            if primary not in images:
                raise InputError(f"no vectors of the primary space {primary!r}, which the composer scores in "
                                 "(embed_images(spaces=[..., primary]))", param="images")
            vectors = np.asarray(images[primary], dtype=np.float32)
        else:
            vectors = images
        nb = self.r.search(images, k=min(o.neighbors, self.r.rows), where=where, plan=plan)
        if o.objective == "minilm":
            fused = captions if captions is not None and any(captions) else None
            targets = self.r.predict(images, k=min(o.target_k, self.r.rows), weighting=weighting,
                                     captions=fused, where=where, plan=plan).vectors
        else:
            targets = vectors
        out = self.compose(targets, neighbors=nb, captions=captions, images=vectors)
        return [replace(c, neighbors=self._listed(nb, i, weighting)) for i, c in enumerate(out)]

    def _listed(self, nb: Neighbors, row: int, weighting: Weighting | None) -> list[dict[str, Any]]:
        valid = nb.ids[row] >= 0
        ids, scores = nb.ids[row][valid], nb.scores[row][valid]
        shares = neighbor_shares(Neighbors(nb.ids[row:row + 1], nb.scores[row:row + 1]),
                                 weighting or Weighting())[0][valid]
        store = self.r.store
        return [{"id": int(i), "score": round(float(s), 6), "prompt": t, "weight": round(float(w), 6), "metadata": m}
                for i, s, t, w, m in zip(ids, scores, store.prompts(ids), shares, store.metadata(ids))]

    def interrogate_images(self, images: ImageSet | Sequence[Any], *, captions: Mapping[str, str] | None = None,
                           captioner: Any = None, weighting: Weighting | None = None, batch_size: int = 16,
                           max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                           where: str | None = None, plan: SearchPlan | None = None) -> Interrogation:
        """``interrogate`` for image files (an ``ImageSet``: files from folders that fail to decode are skipped
        and reported) or paths: embedded, captioned (``captions`` by file stem, or a ``captioner``:
        ``encoders.captioner``), then composed ``COMPOSE_CHUNK`` images at a time, with progress bars."""
        primary = self.r.store.primary
        spaces = list(dict.fromkeys([primary, *(self.r.plan(plan).spaces(primary))]))
        emb = self.r.embed_images(images, batch_size=batch_size, max_pixels=max_pixels, progress=progress,
                                  spaces=spaces)
        if captioner is not None:
            from nearest_prompt.encoders.captioner import caption_files

            texts: list[str | None] = list(caption_files(captioner, emb.paths, batch_size=batch_size,
                                                         max_pixels=max_pixels, progress=progress))
        else:
            texts = [(captions or {}).get(p.stem) for p in emb.paths]
        out: list[Composition] = []
        with progress_bar(total=len(emb.paths), desc="composing", enabled=progress, unit="img") as bar:
            for start in range(0, len(emb.paths), COMPOSE_CHUNK):
                part = slice(start, start + COMPOSE_CHUNK)
                vectors = {space: v[part] for space, v in emb.by_space.items()}
                out += self.interrogate(vectors, captions=texts[part], weighting=weighting, where=where, plan=plan)
                bar.update(len(emb.paths[part]))
        return Interrogation(paths=emb.paths, captions=texts, compositions=out, skipped=emb.skipped)

    def compose(self, targets: np.ndarray | None = None, *, neighbors: Neighbors,
                captions: Sequence[str | None] | None = None, images: np.ndarray | None = None) -> list[Composition]:
        """One composed prompt per query, from the clauses of its neighbours (store rows, best first), the
        vocabulary and its caption, towards ``targets`` (unit vectors in the objective's space; for ``minilm``
        they default to the blend of the top ``target_k`` neighbours). ``images`` (CLIP vectors) adds each
        prompt's CLIP similarity to its image."""
        o = self.options
        if targets is None:
            if o.objective != "minilm":
                raise InputError("the clip objective needs targets (the images' CLIP vectors)", param="targets")
            top = Neighbors(neighbors.ids[:, :o.target_k], neighbors.scores[:, :o.target_k])
            targets = blend(top, self.r.store.minilm, Weighting()).vectors
        targets = np.asarray(targets, dtype=np.float32)
        n = len(targets)
        if captions is not None and len(captions) != n:
            raise InputError(f"{len(captions)} captions for {n} queries", param="captions")
        captions = [clean_prompt(c) if c else None for c in (captions or [None] * n)]
        pools = self._pools(targets, neighbors)
        cap_vectors = self._encode_present(captions)
        use_top = o.start == "prompt" and o.mode != "classic"  # classic fills slots after a short subject
        tops = self._encode_present([p.top_prompt if use_top and not c else None for p, c in zip(pools, captions)])
        prompts = [self._start(pool, t, c, v, top) for pool, t, c, v, top in
                   zip(pools, targets, captions, cap_vectors, tops)]
        if o.mode == "best":
            self._chain_exact(pools, targets, prompts)
        elif o.mode == "fast":
            self._chain_estimated(pools, targets, prompts)
        else:
            self._classic(pools, targets, prompts)
        return self._finish(pools, targets, prompts, captions, images)

    # -- candidates -------------------------------------------------------------------------------
    def _pools(self, targets: np.ndarray, neighbors: Neighbors) -> list[Pool]:
        o = self.options
        pool_size = CLASSIC_POOL if o.mode == "classic" else o.fragment_count
        return gather(self.r, targets, neighbors, neighbors_used=o.neighbors, fragments=pool_size,
                      space=o.objective, encode=self._encode_some)

    def _objective_space(self, objective: str) -> str:
        """The retriever's space of an objective: MiniLM, or the primary CLIP space (the fragments' "clip")."""
        return "minilm" if objective == "minilm" else self.r.store.primary

    def _dim(self) -> int:
        return self.r.store.minilm_info.dim if self.options.objective == "minilm" else self.r.store.clip_info.embed_dim

    def _encode_some(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim()), dtype=np.float32)
        return self.r.embed_texts(list(texts), space=self._objective_space(self.options.objective))

    def _encode_present(self, texts: Sequence[str | None]) -> list[np.ndarray | None]:
        """Vectors of the texts that are there (one encoder call), None where a text is None or empty."""
        vectors = iter(self._encode_some([t for t in texts if t]))
        return [next(vectors) if t else None for t in texts]

    # -- the subject --------------------------------------------------------------------------------
    def _start(self, pool: Pool, target: np.ndarray, caption: str | None, cap_vector: np.ndarray | None,
               top_vector: np.ndarray | None) -> _Prompt:
        if caption:
            tokens = int(self.r.count_tokens([caption])[0])
            score = float(cap_vector @ target)
            said = set(split_fragments([caption])[0].to_pylist())  # candidates the caption already holds
            return _Prompt([CAPTION], caption, cap_vector, score, tokens, [score],
                           {i for i, t in enumerate(pool.texts) if t in said})
        if top_vector is not None and pool.top_prompt:
            score = float(top_vector @ target)
            return _Prompt([TOP_PROMPT], pool.top_prompt, top_vector, score,
                           int(self.r.count_tokens([pool.top_prompt])[0]), [score], set(pool.top_rows))
        if not pool.starts:
            return _Prompt([], "", np.zeros_like(target), 0.0, 2, [])
        sims = pool.vectors[pool.starts] @ target
        best = pool.starts[int(np.argmax(sims))]
        score = float(sims.max())
        return _Prompt([best], pool.texts[best], pool.vectors[best].copy(), score, int(pool.tokens[best]), [score],
                       {best})

    # -- modes ------------------------------------------------------------------------------------
    def _estimates(self, pool: Pool, prompt: _Prompt, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimated objective of "prompt, candidate" for every candidate (-inf where used or too long)."""
        w_p = max(prompt.tokens - 2, 0)
        w_c = np.maximum(pool.tokens - 2, 1)[:, None].astype(np.float32)
        mixed = w_p * prompt.vector[None, :] + w_c * pool.vectors
        mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
        usable = prompt.tokens + pool.tokens - 2 + 1 <= self.max_tokens  # joined with ", " (one token)
        usable[list(prompt.used)] = False
        return np.where(usable, mixed @ target, -np.inf), mixed

    def _chain_exact(self, pools: list[Pool], targets: np.ndarray, prompts: list[_Prompt]) -> None:
        o = self.options
        active = [i for i, p in enumerate(prompts) if p.text]
        for _ in range(o.max_steps):
            asks: list[tuple[int, np.ndarray]] = []
            texts: list[str] = []
            for q in active:
                est, _ = self._estimates(pools[q], prompts[q], targets[q])
                top = np.argsort(-est)[:o.shortlist]
                top = top[np.isfinite(est[top])]
                if len(top):
                    asks.append((q, top))
                    texts += [prompts[q].text + SEPARATOR + pools[q].texts[c] for c in top]
            if not asks:
                break
            vectors = self._encode_some(texts)
            at = 0
            still = []
            for q, top in asks:
                vecs = vectors[at:at + len(top)]
                at += len(top)
                scores = vecs @ targets[q]
                j = int(np.argmax(scores))
                p = prompts[q]
                if scores[j] > p.score + o.min_gain:
                    c = int(top[j])
                    p.parts.append(c)
                    p.used.add(c)
                    p.text = p.text + SEPARATOR + pools[q].texts[c]
                    p.vector, p.score = vecs[j], float(scores[j])
                    p.tokens = int(self.r.count_tokens([p.text])[0])
                    p.trail.append(p.score)
                    still.append(q)
            active = still
            if not active:
                break

    def _chain_estimated(self, pools: list[Pool], targets: np.ndarray, prompts: list[_Prompt]) -> None:
        for q, p in enumerate(prompts):
            if not p.text:
                continue
            pool, est_score = pools[q], p.score
            for _ in range(self.options.fast_fragments):
                est, mixed = self._estimates(pool, p, targets[q])
                if not len(est) or not np.isfinite(est.max()) or est.max() <= est_score:
                    break
                c = int(np.argmax(est))
                p.parts.append(c)
                p.used.add(c)
                p.text = p.text + SEPARATOR + pool.texts[c]
                p.vector, est_score = mixed[c], float(est[c])
                p.tokens += int(pool.tokens[c]) - 1
                p.trail.append(est_score)

    def _classic(self, pools: list[Pool], targets: np.ndarray, prompts: list[_Prompt]) -> None:
        """subject, medium artist, site, movement, flavors (CLIP Interrogator's classic order)."""
        for q, p in enumerate(prompts):
            pool = pools[q]
            if not p.text or not pool.texts:
                continue
            sims = pool.vectors @ targets[q]
            fams = np.array([family(t) for t in pool.texts])
            used = p.used

            def best(fam: str, count: int = 1, used: set[int] = used, sims: np.ndarray = sims,
                     fams: np.ndarray = fams) -> list[int]:
                return [int(i) for i in np.argsort(-sims) if fams[i] == fam and int(i) not in used][:count]

            slots = [best("medium") + best("artist"), best("site"), best("movement"),
                     *[[f] for f in best("flavor", self.options.flavors)]]
            for slot in slots:
                if not slot:
                    continue
                words = " ".join(pool.texts[c] for c in slot)
                tokens = p.tokens + int(sum(pool.tokens[c] - 2 for c in slot)) + 1
                if tokens > self.max_tokens:
                    continue
                p.parts += slot
                used.update(slot)  # p.used
                p.text = p.text + SEPARATOR + words
                p.tokens = tokens
                p.trail += [float("nan")] * len(slot)

    # -- results ----------------------------------------------------------------------------------
    def _finish(self, pools: list[Pool], targets: np.ndarray, prompts: list[_Prompt],
                captions: list[str | None], images: np.ndarray | None) -> list[Composition]:
        o = self.options
        texts = [p.text for p in prompts]
        if o.mode == "best":
            exact = np.stack([p.vector for p in prompts]) if prompts else np.zeros((0, self._dim()), np.float32)
        else:
            exact = self._encode_some(texts)
        scores = np.einsum("ij,ij->i", exact, targets) if len(texts) else np.zeros(0)
        minilm = exact if o.objective == "minilm" else self.r.embed_texts(texts, space="minilm")
        clip_sims = None
        if images is not None:
            clip_vecs = exact if o.objective == "clip" else self.r.embed_texts(texts, space=self.r.store.primary)
            clip_sims = np.einsum("ij,ij->i", clip_vecs, np.asarray(images, dtype=np.float32))
        tokens = self.r.count_tokens(texts) if texts else np.zeros(0, np.int64)
        out = []
        for q, p in enumerate(prompts):
            pool = pools[q]
            components = []
            for part, step_score in zip(p.parts, p.trail + [float("nan")] * len(p.parts)):
                if part == CAPTION:
                    components.append(Component(captions[q] or "", "caption", p.trail[0], p.trail[0]))
                elif part == TOP_PROMPT:
                    components.append(Component(pool.top_prompt, "prompt", p.trail[0], p.trail[0]))
                else:
                    components.append(Component(pool.texts[part], pool.sources[part],
                                                float(pool.vectors[part] @ targets[q]), step_score,
                                                estimated=o.mode == "fast"))
            if o.mode != "best" and components:  # the trail was estimated; the last step is now exact
                components[-1] = Component(components[-1].text, components[-1].source, components[-1].similarity,
                                           float(scores[q]))
            out.append(Composition(prompt=p.text, components=components, objective=o.objective,
                                   score=float(scores[q]) if p.text else 0.0,
                                   minilm=np.asarray(minilm[q], dtype=np.float32), tokens=int(tokens[q]),
                                   clip_similarity=None if clip_sims is None else float(clip_sims[q])))
        return out
