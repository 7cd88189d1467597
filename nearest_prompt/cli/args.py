"""Argument helpers shared by the commands: options, their defaults (read from the library's config
dataclasses, where they live once), and the map from a library parameter to its flag."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from typing import Any

# library parameter -> command-line flag, where the two are not simply "--" + the name with dashes
FLAGS = {"memory_budget_gb": "--memory-budget", "clip_model": "--clip", "clip_pretrained": "--pretrained",
         "minilm_model": "--minilm", "images": None, "inputs": None, "queries": None, "route": None,
         "spaces": "--space", "spaces_pretrained": "--space"}


def flag(param: str) -> str | None:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def default(cls: type, name: str) -> Any:
    """A field's default in a config dataclass: defaults live there, once."""
    return next(f.default for f in fields(cls) if f.name == name)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error: ``nearest-prompt: error: ...``, status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"nearest-prompt: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class Formatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_model_args(p: argparse.ArgumentParser, *, building: bool) -> None:
    from nearest_prompt.encoders.clip import DEFAULT_CLIP, DEFAULT_PRETRAINED

    g = p.add_argument_group("models")
    if building:
        g.add_argument("--clip", default=None, metavar="MODEL",
                       help=f"open_clip architecture (with --pretrained; {DEFAULT_CLIP} takes {DEFAULT_PRETRAINED} "
                            f"by default), local-dir:PATH or hf-hub:ORG/NAME: the space 'clip' (default: {DEFAULT_CLIP})")
        g.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                       help="open_clip pretrained tag or a local checkpoint file, with an architecture in --clip")
    else:
        g.add_argument("--clip", default=None, metavar="MODEL",
                       help="load the index's CLIP model from here instead of the place in its manifest "
                            "(must be the same weights)")
        g.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                       help="checkpoint file of the same weights, with an architecture in --clip")
        g.add_argument("--search-backend", choices=("auto", "faiss", "faiss-gpu", "torch"), default="auto",
                       help="faiss (CPU, all threads), faiss-gpu, torch (exact matmul+top-k on CUDA, flat "
                            "indexes); auto picks the fastest available")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present, else cpu)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages, build stages")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_image_args(p: argparse.ArgumentParser) -> None:
    from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS

    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images as decompression bombs (Pillow's own check runs at the same limit)")
    p.add_argument("--recursive", action="store_true", help="also read images in the subfolders of folders")


def add_weighting_args(p: argparse.ArgumentParser) -> None:
    from nearest_prompt.retriever.weighting import SCHEMES, Weighting

    p.add_argument("--weighting", choices=SCHEMES, default=default(Weighting, "scheme"),
                   help="neighbour weights: power 1/((1-cos)^p+eps), or softmax exp(cos/T)")
    p.add_argument("--power", type=float, default=default(Weighting, "power"), help="p of the power weighting")
    p.add_argument("--eps", type=float, default=default(Weighting, "eps"), help="eps of the power weighting")
    p.add_argument("--temperature", type=float, default=default(Weighting, "temperature"),
                   help="T of the softmax weighting")


def add_where_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", default=None, metavar="EXPR",
                   help="search only the prompts whose kept columns match, e.g. source=lexica, "
                        "\"source in (lexica,krea)\", \"seed>=10 and seed<20\" (docs/filters.md)")


def add_plan_args(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """--space, --cascade, --fuse (+ --fuse-weights) and --min-score: which CLIP spaces a search uses
    (``retriever.plans``); ``many``: each may be given several times, each a row of the report (eval)."""
    g = p.add_argument_group("spaces (docs/spaces.md)")
    action = "append" if many else "store"
    once = "" if not many else "; repeat to compare, each is a row of the report"
    ex = g if many else g.add_mutually_exclusive_group()
    ex.add_argument("--space", action=action, default=None, metavar="NAME",
                    help="search this space: a CLIP space of the index (default: its first), NAME-image for its "
                         "image space" + (", or minilm for --text" if not many else "") + once)
    ex.add_argument("--cascade", action=action, default=None, metavar="A:N,B",
                    help="the top N of space A scored again exactly in space B" + once)
    ex.add_argument("--fuse", action=action, default=None, metavar="A,B",
                    help="the union of each space's top k, scored exactly in each and summed with --fuse-weights"
                         + once)
    g.add_argument("--fuse-weights", default=None, metavar="W,W",
                   help="one weight per fused space, scaled to sum to 1 (default: equal)")
    g.add_argument("--min-score", type=float, default=None, metavar="COS",
                   help="drop neighbours whose final score is below COS (e.g. 0.29 after a cascade)")


def plans_for(args: argparse.Namespace, retriever: Any) -> list[Any]:
    """The search plans the options ask for, checked against the index (one for a plain search of its first
    space when none is asked for)."""
    from nearest_prompt.retriever import SearchPlan

    def each(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [] if value is None else [value]

    plans = [SearchPlan.parse(space=s, min_score=args.min_score) for s in each(args.space)]
    plans += [SearchPlan.parse(cascade=c, min_score=args.min_score) for c in each(args.cascade)]
    plans += [SearchPlan.parse(fuse=f, fuse_weights=args.fuse_weights, min_score=args.min_score)
              for f in each(args.fuse)]
    if args.fuse_weights is not None and not args.fuse:
        raise_input("--fuse-weights is for --fuse only")
    plans = plans or [SearchPlan.parse(min_score=args.min_score)]
    return [retriever.plan(plan) for plan in plans]


def raise_input(message: str) -> None:
    from nearest_prompt.common.errors import InputError

    raise InputError(message)


def where_for(args: argparse.Namespace, store: Any) -> str | None:
    """``--where``, checked against the store's columns before any slow work (the row mask is kept)."""
    where = getattr(args, "where", None)
    if where is not None:
        store.allowed(where)
    return where


def open_retriever(args: argparse.Namespace) -> Any:
    from nearest_prompt.retriever import Retriever

    r = Retriever.open(args.index, clip=args.clip, pretrained=args.pretrained, device=args.device)
    return r.use_search_backend(args.search_backend)


def print_random_weights_note(store: Any) -> None:
    """The banner shown with every result of a store whose CLIP model has random weights (``Store.note``)."""
    if store.note:
        print(f"note: {store.note}", file=sys.stderr)


def report_skipped(skipped: Any) -> None:
    from nearest_prompt.encoders.images import summarize_skipped

    if skipped:
        print(f"skipped {len(skipped)} file(s): " + "; ".join(summarize_skipped(list(skipped))), file=sys.stderr)


def escape_c1(text: str) -> str:
    """JSON escapes C0 controls itself; C1 controls (a terminal's CSI among them) are escaped here."""
    return re.sub(r"[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text)


def k_for(args: argparse.Namespace, rows: int, *, default: int) -> int:
    """``--k`` as given (checked against the index), or the command's default cut to the index's size (said on
    stderr)."""
    import logging

    from nearest_prompt.retriever.search import resolve_k

    k, cut = resolve_k(args.k, default=default, rows=rows)
    if cut:
        logging.getLogger("nearest_prompt.cli").info(
            "the index holds %d prompts, fewer than the default --k %d: using --k %d", rows, default, k)
    return k
