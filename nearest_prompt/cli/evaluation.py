"""``nearest-prompt eval`` and ``nearest-prompt blend``: parsing and printing around ``evaluation``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from nearest_prompt.common.errors import InputError
from nearest_prompt.retriever.api import DEFAULT_K_PREDICT

from .args import k_for, open_retriever, plans_for, print_random_weights_note


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    from .args import add_common, add_model_args, add_plan_args, positive_int

    e = cmd("eval", "score predictions as the competition does, beside baselines")
    e.add_argument("--index", required=True, metavar="DIR", help="index store directory")
    mode = e.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pairs", metavar="CSV", help="CSV of image path (or id) and true prompt")
    mode.add_argument("--text-oracle", action="store_true",
                      help="query with MiniLM(true prompt), exact copies excluded: the corpus's ceiling")
    mode.add_argument("--text-degraded", action="store_true",
                      help="query with MiniLM(first clause of the prompt): retrieval as a caption refiner")
    e.add_argument("--prompts", metavar="FILE", help="held-out prompts for --text-oracle / --text-degraded")
    e.add_argument("--column", default=None, help="prompt column/key in --prompts or --pairs (default: prompt)")
    e.add_argument("--k", type=positive_int, default=None,
                   help=f"neighbours blended per query (default: {DEFAULT_K_PREDICT}, at most the index's size)")
    e.add_argument("--report", default="eval_report.json", metavar="FILE.json",
                   help="JSON report (a PNG plot is written beside it)")
    e.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate the first N prompts only (default: all)")
    e.add_argument("--compose", choices=("best", "fast", "classic", "off"), default="best",
                   help="add the composed prompt's row in this interrogate mode (off: skip it; it is the slow row)")
    add_plan_args(e, many=True)
    add_model_args(e, building=False)
    add_common(e)

    b = cmd("blend", "blend submission files (.csv or .npy + .ids.txt) into one")
    b.add_argument("inputs", nargs="+", metavar="FILE", help="prediction files, aligned by image id")
    b.add_argument("--out", required=True, metavar="FILE", help=".csv or .npy")
    b.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per input (default equal)")
    b.add_argument("--confidence", nargs="+", default=None, metavar="CSV|none",
                   help="per input: a *.confidence.csv from predict, or 'none'; scales that input's weight per image")
    b.add_argument("--power", type=float, default=1.0, help="weight = w * confidence^power")
    add_common(b)


def cmd_eval(args: argparse.Namespace) -> int:
    from nearest_prompt.common.atomic import check_writable
    from nearest_prompt.common.extras import require
    from nearest_prompt.composer import ComposeOptions
    from nearest_prompt.evaluation.inputs import read_pairs
    from nearest_prompt.evaluation.run import evaluate, write_report
    from nearest_prompt.indexer.exact_dedup import read_unique_prompts
    from nearest_prompt.indexer.readers import check_sources

    require("eval", what="eval (its report plot)")
    report_path = check_writable(args.report, param="report")
    if report_path.suffix.lower() != ".json":
        raise InputError(f"{report_path}: give a .json file name", param="report")
    check_writable(report_path.with_suffix(".png"), param="report")
    images = None
    if args.pairs:
        images, prompts = read_pairs(args.pairs, prompt_column=args.column)
        if args.limit:
            images, prompts = images[:args.limit], prompts[:args.limit]
        route, title = "pairs", f"images from {args.pairs}"
    else:
        if not args.prompts:
            raise InputError("--text-oracle and --text-degraded need --prompts FILE (held-out prompts)")
        prompts, _ = read_unique_prompts(check_sources([args.prompts], column=args.column), limit=args.limit)
        if not prompts:
            raise InputError(f"no usable prompts in {args.prompts}", param="prompts")
        route = "text-oracle" if args.text_oracle else "text-degraded"
        title = f"{route.replace('-', ' ')}: {args.prompts}"
    r = open_retriever(args)
    asked = args.space or args.cascade or args.fuse or args.min_score is not None
    plans = plans_for(args, r) if asked else []
    compose = None if args.compose == "off" else ComposeOptions(mode=args.compose)
    k = k_for(args, r.rows, default=DEFAULT_K_PREDICT)
    report = evaluate(r, route=route, prompts=prompts, images=images, k=k, title=title, compose=compose,
                      progress=not args.quiet, plans=plans)
    print(report.table())
    json_path, png = write_report(report, report_path)
    print(f"wrote {json_path} and {png}")
    print_random_weights_note(r.store)
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    from nearest_prompt.evaluation.ensemble import blend_files

    if args.confidence and len(args.confidence) != len(args.inputs):
        raise InputError("--confidence needs one entry (a file or 'none') per input")
    confidences = None if not args.confidence else [None if c.lower() == "none" else c for c in args.confidence]
    ids = blend_files(args.inputs, args.out, weights=args.weights, confidences=confidences, power=args.power)
    print(f"blended {len(args.inputs)} inputs for {len(ids)} images into {args.out}")
    return 0
