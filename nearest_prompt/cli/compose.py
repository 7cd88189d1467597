"""``nearest-prompt interrogate``: parsing and printing around ``composer``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nearest_prompt.common.errors import InputError
from nearest_prompt.common.text import printable

from .args import (
    add_plan_args,
    escape_c1,
    k_for,
    open_retriever,
    plans_for,
    print_random_weights_note,
    report_skipped,
    where_for,
)

log = logging.getLogger("nearest_prompt.cli")


def add_captioner_args(p: argparse.ArgumentParser) -> None:
    from nearest_prompt.encoders.captioner import DEFAULT_CAPTIONER, DEFAULT_CAPTIONER_PRETRAINED

    g = p.add_mutually_exclusive_group()
    g.add_argument("--captions", metavar="CSV",
                   help="captions from other models (columns imgId or image, and caption)")
    g.add_argument("--captioner", metavar="MODEL",
                   help=f"caption each image with an open_clip CoCa model: an architecture ({DEFAULT_CAPTIONER} takes "
                        f"{DEFAULT_CAPTIONER_PRETRAINED} by default), local-dir:PATH or hf-hub:ORG/NAME")
    p.add_argument("--captioner-pretrained", metavar="TAG|FILE", default=None,
                   help="pretrained tag or checkpoint file of --captioner")


def load_captions(args: argparse.Namespace) -> tuple[Any, Any]:
    """(captions by image id, or None; a loaded captioner, or None) from --captions / --captioner."""
    from nearest_prompt.evaluation.inputs import read_captions

    if args.captioner_pretrained and not args.captioner:
        raise InputError("--captioner-pretrained needs --captioner")
    if args.captioner:
        from nearest_prompt.encoders.captioner import load_captioner, parse_captioner_spec

        return None, load_captioner(parse_captioner_spec(args.captioner, args.captioner_pretrained), device=args.device)
    return (read_captions(args.captions) if args.captions else None), None


def report_captions(captions: Any, ids: list[str]) -> list[str | None]:
    """Captions for ``ids`` in order (None where there is none), naming empty ones and ones for images not
    given (not fatal: those images go without a caption)."""
    if captions is None:
        return [None] * len(ids)
    if captions.empty:
        log.warning("%d image(s) have an empty caption and go without one (e.g. %s)", len(captions.empty),
                    captions.empty[0])
    unknown = sorted(set(captions.by_image) - set(ids))
    if unknown:
        log.warning("%d caption(s) name images that were not given or not readable (e.g. %s)", len(unknown),
                    unknown[0])
    return [captions.by_image.get(i) for i in ids]


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    from nearest_prompt.composer import MODES, OBJECTIVES, ComposeOptions

    from .args import add_common, add_image_args, add_model_args, add_where_arg, default, positive_int

    p = cmd("interrogate", "compose a prompt to paste into a generator, for each image")
    p.add_argument("--index", required=True, metavar="DIR", help="index store directory")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    p.add_argument("--mode", choices=MODES, default=default(ComposeOptions, "mode"),
                   help="best: greedy chain scored exactly; fast: no chain, one encoder call; "
                        "classic: subject, medium artist, site, movement, flavors")
    p.add_argument("--objective", choices=OBJECTIVES, default=default(ComposeOptions, "objective"),
                   help="minilm: cosine of the prompt's MiniLM vector to the predicted vector (the competition's "
                        "score); clip: CLIP similarity of the prompt to the image")
    p.add_argument("--k", type=positive_int, default=None,
                   help=f"neighbours blended into the minilm objective's target vector (default: "
                        f"{default(ComposeOptions, 'target_k')}, at most the index's size)")
    p.add_argument("--neighbors", type=positive_int, default=default(ComposeOptions, "neighbors"),
                   help="neighbour prompts whose clauses are candidates")
    p.add_argument("--fragments", type=int, default=None,
                   help="nearest vocabulary fragments that are candidates (default: 0 for --objective minilm, "
                        "50 for clip)")
    p.add_argument("--start", choices=("prompt", "clause"), default=default(ComposeOptions, "start"),
                   help="without a caption, start from the top neighbour's prompt, or from the best first clause "
                        "of the neighbours")
    p.add_argument("--json", action="store_true",
                   help="print JSON: components with their scores, CLIP similarity, the MiniLM vector, the "
                        "neighbours with their kept columns and weights")
    add_where_arg(p)
    add_plan_args(p)
    add_captioner_args(p)
    add_image_args(p)
    add_model_args(p, building=False)
    add_common(p)


def cmd_interrogate(args: argparse.Namespace) -> int:
    from nearest_prompt.composer import ComposeOptions, Composer
    from nearest_prompt.encoders.images import collect_images

    options = ComposeOptions(mode=args.mode, objective=args.objective, neighbors=args.neighbors,
                             fragments=args.fragments, start=args.start).validate()
    images = collect_images(args.images, max_pixels=args.max_pixels, recursive=args.recursive)
    r = open_retriever(args)  # a missing or damaged store fails before a captioner loads
    [plan] = plans_for(args, r)
    if plan.space == "minilm":
        raise InputError("--space minilm is for text queries; images are searched in CLIP spaces")
    where = where_for(args, r.store)
    options = replace(options, target_k=k_for(args, r.rows, default=options.target_k))
    captions, captioner = load_captions(args)
    composer = Composer(r, options=options)
    if not composer.has_vocabulary:
        log.warning("this index has no fragment vocabulary (format version 1): composing from the neighbours' "
                    "clauses only; rebuild it with this version for the full vocabulary")
    by_id = None
    if captions is not None:
        ids = [p.stem for p in images.paths]
        by_id = {i: c for i, c in zip(ids, report_captions(captions, ids)) if c}
    result = composer.interrogate_images(images, captions=by_id, captioner=captioner,
                                         batch_size=args.batch_size, max_pixels=args.max_pixels,
                                         progress=not args.quiet and (len(images.paths) > 1 or captioner is not None),
                                         where=where, plan=plan)
    if args.json:
        doc = {"index": str(r.store.path), "mode": options.mode, "objective": options.objective,
               "search": plan.describe(r.store.primary), "where": where,
               "note": r.store.note,
               "results": [{"image": str(p), "caption": cap, **c.to_dict()}
                           for p, cap, c in zip(result.paths, result.captions, result.compositions)],
               "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped]}
        print(escape_c1(json.dumps(doc, indent=2, ensure_ascii=False)))
    else:
        for path, c in zip(result.paths, result.compositions):
            print(f"image {printable(str(path))}")
            print(f"  {printable(c.prompt)}")
    report_skipped(result.skipped)
    print_random_weights_note(r.store)
    return 0
