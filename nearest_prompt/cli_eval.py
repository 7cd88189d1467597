"""``nearest-prompt eval`` and ``nearest-prompt blend``: quality measurement and ensembles."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

IMAGE_COLUMNS = ("image", "path", "file", "imgId", "image_path", "filename")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def add_parsers(sub: Any, common: Any) -> None:
    from retriever.api import DEFAULT_K_PREDICT

    e = sub.add_parser("eval", help="score predictions as the competition does, beside baselines")
    e.add_argument("--index", required=True, metavar="DIR")
    mode = e.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pairs", metavar="CSV", help="CSV of image path (or id) and true prompt")
    mode.add_argument("--text-oracle", action="store_true",
                      help="query with MiniLM(true prompt), exact copies excluded: the corpus's ceiling")
    mode.add_argument("--text-degraded", action="store_true",
                      help="query with MiniLM(first clause of the prompt): retrieval as a caption refiner")
    e.add_argument("--prompts", metavar="FILE", help="held-out prompts for --text-oracle / --text-degraded")
    e.add_argument("--column", default=None, help="prompt column/key in --prompts or --pairs (default: prompt)")
    e.add_argument("--k", type=int, default=DEFAULT_K_PREDICT)
    e.add_argument("--report", default="eval_report.json", metavar="FILE.json",
                   help="JSON report (a PNG plot is written beside it)")
    e.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    common(e)

    b = sub.add_parser("blend", help="blend submission files (.csv or .npy + .ids.txt) into one")
    b.add_argument("inputs", nargs="+", metavar="FILE")
    b.add_argument("--out", required=True, metavar="FILE", help=".csv or .npy")
    b.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per input (default equal)")
    b.add_argument("--confidence", nargs="+", default=None, metavar="CSV|none",
                   help="per input: a *.confidence.csv from predict, or 'none'; scales that input's weight per image")
    b.add_argument("--power", type=float, default=1.0, help="weight = w * confidence^power")
    common(b)


# -- eval -------------------------------------------------------------------------------
def _read_pairs(path: Path, column: str | None) -> tuple[list[Path], list[str]]:
    if not path.is_file():
        raise InputError(f"--pairs {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"--pairs {path}: no rows")
    cols = list(rows[0])
    pcol = column or "prompt"
    if pcol not in cols:
        raise InputError(f"--pairs {path}: no column {pcol!r} ({', '.join(cols)}); pass --column NAME")
    icol = next((c for c in IMAGE_COLUMNS if c in cols), None) or next(c for c in cols if c != pcol)
    images = [_resolve_image(path.parent, r[icol]) for r in rows]
    return images, [r[pcol] for r in rows]


def _resolve_image(base: Path, ref: str) -> Path:
    ref_path = Path(ref)
    candidates = [ref_path, base / ref_path, base / "images" / ref_path]
    candidates += [c.with_name(c.name + s) for c in candidates[1:] for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"image {ref!r} of the pairs file not found (looked in {base} and {base / 'images'})")


def _read_prompts(path: str | None, column: str | None, limit: int | None) -> list[str]:
    from indexer.exact_dedup import read_unique_prompts
    from indexer.readers import check_sources

    if not path:
        raise InputError("--text-oracle and --text-degraded need --prompts FILE (held-out prompts)")
    prompts, _ = read_unique_prompts(check_sources([path], column=column), limit=limit)
    if not prompts:
        raise InputError(f"no usable prompts in {path}")
    return prompts


def cmd_eval(args: argparse.Namespace) -> int:
    from retriever import Retriever
    from retriever.evaluate import (CONSTANT_PROMPT, EvalReport, baselines, corpus_mean_vector, dedup_keys,
                                    first_clause, neighbour_methods, text_degraded_methods, text_oracle_methods)
    from retriever.plots import plot_report
    from retriever.search import check_k
    from retriever.weighting import Weighting

    from index_store.atomic import write_bytes_atomic

    report_path = Path(args.report)
    if report_path.suffix.lower() != ".json":
        raise InputError(f"--report {report_path}: give a .json file name")
    if args.pairs:
        images, prompts = _read_pairs(Path(args.pairs), args.column)
        items = [str(p) for p in images]
    else:
        prompts = _read_prompts(args.prompts, args.column, args.limit)
        items = prompts
    r = Retriever.open(args.index, device=getattr(args, "device", None))
    check_k(args.k, r.rows)
    weightings = {"power_p6": Weighting(), "softmax_t0.01": Weighting(scheme="softmax")}
    truth = r.minilm.encode(prompts)
    constant = r.minilm.encode([CONSTANT_PROMPT])[0]
    row_keys = lambda ids: np.where(ids >= 0, dedup_keys(r.prompts(ids.ravel())).reshape(ids.shape), b"")  # noqa: E731
    settings = {"index": str(r.store.path), "rows": r.rows, "k": args.k,
                "weightings": {n: vars(w) for n, w in weightings.items()}}
    if args.pairs:
        from nearest_prompt.images import ImageSet

        emb = r.embed_image_set(ImageSet(images, [], images), progress=not args.quiet)
        nb = r.search(emb.vectors, k=args.k)
        report = EvalReport(f"images from {args.pairs} ({r.store.clip_info.spec().label})", items, settings=settings)
        methods = neighbour_methods(nb, r.store.minilm, truth, weightings)
    elif args.text_oracle:
        report = EvalReport(f"text oracle: {args.prompts}", items, settings=settings)
        methods = text_oracle_methods(truth, dedup_keys(prompts), index=r.store.minilm_index, minilm=r.store.minilm,
                                      row_keys=row_keys, k=args.k, weightings=weightings)
    else:
        clauses = [first_clause(p) for p in prompts]
        report = EvalReport(f"text degraded (first clause): {args.prompts}", items, settings=settings)
        methods = text_degraded_methods(truth, r.minilm.encode(clauses), dedup_keys(prompts),
                                        index=r.store.minilm_index, minilm=r.store.minilm, row_keys=row_keys,
                                        k=args.k, weightings=weightings)
    for m in baselines(truth, constant=constant, corpus_mean=corpus_mean_vector(r.store.minilm)) + methods:
        report.add(m)
    print(report.table())
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(report_path, json.dumps(report.to_dict(), indent=2).encode())
    png = plot_report(report, report_path.with_suffix(".png"))
    print(f"wrote {report_path} and {png}")
    return 0


# -- blend ------------------------------------------------------------------------------
def _read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    from retriever.submission import ids_path, read_submission

    if path.suffix.lower() == ".npy":
        if not path.is_file() or not ids_path(path).is_file():
            raise InputError(f"{path}: need the .npy file and {ids_path(path).name} beside it")
        return ids_path(path).read_text().split(), np.load(path)
    if path.suffix.lower() == ".csv":
        return read_submission(path)
    raise InputError(f"{path}: use .csv submissions or .npy predictions")


def _read_confidence(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise InputError(f"--confidence {path}: no such file")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "confidence" not in rows[0] or "imgId" not in rows[0]:
        raise InputError(f"--confidence {path}: expected columns imgId,confidence (a predict sidecar)")
    return {r["imgId"]: float(r["confidence"]) for r in rows}


def cmd_blend(args: argparse.Namespace) -> int:
    from retriever.ensemble import blend_predictions
    from retriever.submission import write_npy, write_submission

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".npy"):
        raise InputError(f"--out {out}: use a .csv or .npy file name")
    loaded = [_read_predictions(Path(p)) for p in args.inputs]
    ids = loaded[0][0]
    vectors = []
    for (these, vecs), name in zip(loaded, args.inputs):
        if set(these) != set(ids) or len(these) != len(ids):
            raise InputError(f"{name} does not hold the same image ids as {args.inputs[0]}")
        pos = {img: i for i, img in enumerate(these)}
        vectors.append(vecs[[pos[img] for img in ids]])
    confidences: list[np.ndarray | None] | None = None
    if args.confidence:
        if len(args.confidence) != len(args.inputs):
            raise InputError("--confidence needs one entry (a file or 'none') per input")
        confidences = []
        for c in args.confidence:
            if c.lower() == "none":
                confidences.append(None)
                continue
            table = _read_confidence(Path(c))
            missing = [img for img in ids if img not in table]
            if missing:
                raise InputError(f"--confidence {c} has no row for image {missing[0]!r}")
            confidences.append(np.array([table[img] for img in ids]))
    blended = blend_predictions(vectors, weights=args.weights, confidences=confidences, power=args.power)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        write_submission(out, ids, blended)
    else:
        write_npy(out, ids, blended)
    print(f"blended {len(args.inputs)} inputs for {len(ids)} images into {out}", file=sys.stdout)
    return 0
