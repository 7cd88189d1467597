"""One evaluation run: queries from images (``pairs``) or held-out prompts (the text routes), scored
side by side with the baselines, and its report files. The CLI and a service call this; they only
parse and print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from nearest_prompt.common.atomic import atomic_path, write_bytes_atomic
from nearest_prompt.common.errors import InputError
from nearest_prompt.common.progress import progress_bar
from nearest_prompt.common.text import dedup_keys, first_clause
from nearest_prompt.composer import ComposeOptions, Composer
from nearest_prompt.composer.compose import COMPOSE_CHUNK
from nearest_prompt.retriever import Neighbors, Retriever, SearchPlan
from nearest_prompt.retriever.search import check_k
from nearest_prompt.retriever.weighting import Weighting

from .evaluate import (
    COMPOSED,
    EvalReport,
    MethodScores,
    baselines,
    corpus_mean_vector,
    cosine,
    neighbour_methods,
    text_degraded_methods,
    text_oracle_methods,
)
from .inputs import made_parent

ROUTES = ("pairs", "text-oracle", "text-degraded")
WEIGHTINGS = {"power_p6": Weighting(), "softmax_t0.01": Weighting(scheme="softmax")}


def evaluate(r: Retriever, *, route: str, prompts: Sequence[str], images: Sequence[Path] | None = None,
             k: int, title: str, weightings: dict[str, Weighting] | None = None,
             compose: ComposeOptions | None = ComposeOptions(), progress: bool = False,
             plans: Sequence[SearchPlan] = ()) -> EvalReport:
    """Score ``route`` ("pairs": ``images`` with their true ``prompts``; "text-oracle", "text-degraded":
    held-out ``prompts``) with the competition metric, beside the constant-prompt and corpus-mean
    baselines; with ``compose`` (None: skip), also the composed prompt (``composer``; on the text routes
    the query is a MiniLM vector, so it composes towards the predicted vector, objective ``minilm``).
    ``plans`` (pairs only): the CLIP spaces, cascades and fusions to score, each a set of rows (its name in
    brackets); the images are embedded once per model. Default: the primary space."""
    from .evaluate import CONSTANT_PROMPT

    if route not in ROUTES:
        raise InputError(f"route must be one of {', '.join(ROUTES)}, got {route!r}", param="route")
    if plans and route != "pairs":
        raise InputError("spaces, cascades and fusions are scored on image pairs (the text routes search MiniLM)",
                         param="space")
    plans = [r.plan(p) for p in plans] or [r.plan()]
    if not prompts:
        raise InputError("nothing to evaluate: no prompts", param="prompts")
    check_k(k, r.rows)
    weightings = weightings or WEIGHTINGS
    truth = r.embed_texts(list(prompts), space="minilm")
    constant = r.embed_texts([CONSTANT_PROMPT], space="minilm")[0]
    items = [str(p) for p in images] if route == "pairs" else list(prompts)
    primary = r.store.primary
    settings = {"index": str(r.store.path), "rows": r.rows, "k": k,
                "searches": [p.describe(primary) for p in plans] if route == "pairs" else [],
                "weightings": {n: vars(w) for n, w in weightings.items()},
                "compose": None if compose is None else vars(compose)}
    composer = compose_fn = None
    if compose is not None:
        text_route = route != "pairs"
        composer = Composer(r, options=replace(compose, objective="minilm") if text_route else compose)
        compose_fn = _composing(composer, progress=progress)

    report = EvalReport(title, items, settings=settings)

    def row_keys(ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, dedup_keys(r.prompts(ids.ravel())).reshape(ids.shape), b"")

    minilm, minilm_index = r.store.minilm, r.store.indexes["minilm"]
    if route == "pairs":
        if images is None or len(images) != len(prompts):
            raise InputError("the pairs route needs one image per prompt", param="images")
        spaces = list(dict.fromkeys([primary, *(s for p in plans for s in p.spaces(primary))]))
        emb = r.embed_images(list(images), progress=progress, spaces=spaces)  # named files: any failure is an error
        methods = []
        for plan in plans:
            found = neighbour_methods(r.search(emb.by_space, k=k, plan=plan), minilm, truth, weightings)
            if len(plans) > 1 or plans[0] != r.plan():
                found = [replace(m, name=f"{m.name} [{plan.describe(primary)}]") for m in found]
            methods += found
        if composer is not None:
            with progress_bar(total=len(emb.vectors), desc="composing", enabled=progress, unit="img") as bar:
                done = composer.interrogate(emb.by_space, weighting=next(iter(weightings.values())), plan=plans[0])
                bar.update(len(done))
            methods.append(MethodScores(COMPOSED, cosine(np.stack([c.minilm for c in done]), truth),
                                        note=f"MiniLM of the composed prompt (composer, objective {compose.objective})"))
    elif route == "text-oracle":
        methods = text_oracle_methods(truth, dedup_keys(prompts), index=minilm_index, minilm=minilm,
                                      row_keys=row_keys, k=k, weightings=weightings,
                                      compose=compose_fn)
    else:
        clause_texts = [first_clause(p) for p in prompts]
        clauses = r.embed_texts(clause_texts, space="minilm")
        methods = text_degraded_methods(truth, clauses, dedup_keys(prompts), index=minilm_index, minilm=minilm,
                                        row_keys=row_keys, k=k, weightings=weightings, clauses=clause_texts,
                                        compose=compose_fn)
    for m in baselines(truth, constant=constant, corpus_mean=corpus_mean_vector(minilm)) + methods:
        report.add(m)
    return report


def _composing(composer: Composer, *, progress: bool):
    """The ``compose`` callable of the text routes: MiniLM vectors of the prompts composed from each query's
    neighbours (towards ``targets``, or the composer's own target), ``COMPOSE_CHUNK`` queries at a time."""

    def compose_fn(nb: Neighbors, targets: np.ndarray | None, captions: Sequence[str] | None) -> np.ndarray:
        parts = []
        with progress_bar(total=len(nb.ids), desc="composing", enabled=progress, unit="query") as bar:
            for start in range(0, len(nb.ids), COMPOSE_CHUNK):
                part = slice(start, start + COMPOSE_CHUNK)
                done = composer.compose(None if targets is None else targets[part],
                                        neighbors=Neighbors(nb.ids[part], nb.scores[part]),
                                        captions=None if captions is None else captions[part])
                parts.append(np.stack([c.minilm for c in done]))
                bar.update(len(done))
        return np.concatenate(parts)

    return compose_fn


def write_report(report: EvalReport, path: str | Path) -> tuple[Path, Path]:
    """The JSON report at ``path`` and its PNG plot beside it, both written atomically."""
    from .plots import plot_report

    path = Path(path)
    made_parent(path)
    write_bytes_atomic(path, json.dumps(report.to_dict(), indent=2).encode())
    png = path.with_suffix(".png")
    with atomic_path(png) as tmp:
        plot_report(report, tmp)
    return path, png
