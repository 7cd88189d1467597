"""The ``nearest-prompt`` command: build, query, predict, info (eval and blend in ``cli_eval``).

A thin adapter: it parses arguments, calls the library, and prints. Errors a user can fix print one
line (``nearest-prompt: error: ...``, the option named by its flag) and exit with status 2; Ctrl-C
exits with 130. Output files are checked writable before any work, and nothing is written on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nearest_prompt.common.errors import InputError, NearestPromptError
from nearest_prompt.common.sizes import format_bytes
from nearest_prompt.common.text import printable
from nearest_prompt.common.version import __version__, library_versions
from nearest_prompt.retriever.api import DEFAULT_K_PREDICT, DEFAULT_K_QUERY

from .args import (
    Formatter,
    Parser,
    add_common,
    add_image_args,
    add_model_args,
    add_plan_args,
    add_weighting_args,
    add_where_arg,
    default,
    escape_c1,
    flag,
    k_for,
    open_retriever,
    plans_for,
    positive_int,
    print_random_weights_note,
    report_skipped,
    where_for,
)
from .compose import add_captioner_args, load_captions, report_captions

log = logging.getLogger("nearest_prompt.cli")

_OUR_LOGGERS = ("nearest_prompt",)

def build_parser() -> argparse.ArgumentParser:
    from nearest_prompt.indexer.config import INDEX_TYPES, BuildConfig

    parser = Parser(prog="nearest-prompt", description="Which text prompt made this image?", formatter_class=Formatter)
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items() if k != "nearest-prompt")
    parser.add_argument("--version", action="version", version=f"nearest-prompt {__version__} ({versions})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=Formatter)

    b = cmd("build", "build an index store from prompt files (or add a CLIP space to one: --add-space)")
    b.add_argument("--prompts", nargs="+", default=None, metavar="FILE",
                   help="parquet, CSV/TSV, text (one prompt a line) or JSONL files")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="index store directory: new, empty, or a store (replaced atomically)")
    b.add_argument("--column", default=None, help="prompt column/key for parquet, CSV and JSONL (default: prompt)")
    b.add_argument("--columns", default=None, metavar="NAME,...",
                   help="columns of the corpus kept beside each prompt, typed, for filters and answers (default: every "
                        "column but the prompt's; '' for none)")
    b.add_argument("--delimiter", default=None, metavar="CHAR",
                   help="field delimiter of CSV files (default: the first of , ; tab | whose header holds the column)")
    b.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="keep the first N unique prompts read (default: all)")
    sp = b.add_argument_group("spaces (docs/spaces.md)")
    sp.add_argument("--space", action="append", default=None, metavar="NAME=MODEL[@PRETRAINED]",
                    help="a CLIP space: the prompts' text embeddings under MODEL (as --clip takes it), repeatable; "
                         "the first is the default of every search (without --space: one space 'clip' of --clip)")
    sp.add_argument("--image-column", default=None, metavar="COL",
                    help="the column naming each prompt's images (paths next to the corpus file or in its images/ "
                         "folder, a list of them, or bytes): an image space NAME-image for each space")
    sp.add_argument("--add-space", default=None, metavar="NAME=MODEL[@PRETRAINED]",
                    help="add this CLIP space to the store at --out (no --prompts); the other spaces are untouched")
    dd = b.add_mutually_exclusive_group()
    dd.add_argument("--near-dup-threshold", type=float, default=default(BuildConfig, "near_dup_threshold"),
                    metavar="COS", help="drop a prompt whose MiniLM cosine to an earlier kept one is above COS")
    dd.add_argument("--no-near-dedup", action="store_true", help="keep near-duplicates (exact ones are always removed)")
    b.add_argument("--minilm", default=default(BuildConfig, "minilm_model"), metavar="MODEL",
                   help="sentence-transformers name or path (the default package loads offline)")
    b.add_argument("--batch-size", type=positive_int, default=default(BuildConfig, "batch_size"),
                   help="prompts per encoder batch")
    b.add_argument("--shard-size", type=positive_int, default=default(BuildConfig, "shard_size"),
                   help="prompts per resumable shard")
    b.add_argument("--index-type", choices=INDEX_TYPES, default=default(BuildConfig, "index_type"),
                   help="FAISS index; auto picks by corpus size and --memory-budget")
    b.add_argument("--memory-budget", type=float, default=default(BuildConfig, "memory_budget_gb"), metavar="GB",
                   help="size budget in GiB for the two FAISS indexes (what searching them keeps in "
                        "memory) when --index-type auto: 3/4 for the CLIP index, 1/4 for the MiniLM index; "
                        "the build writes IVF indexes to disk and does not hold them")
    b.add_argument("--fragment-min-count", type=positive_int, default=default(BuildConfig, "fragment_min_count"),
                   metavar="N", help="keep clauses held by at least N prompts in the fragment vocabulary (interrogate)")
    b.add_argument("--max-fragments", type=int, default=default(BuildConfig, "max_fragments"), metavar="N",
                   help="at most N fragments, the most frequent (0: an empty vocabulary)")
    b.add_argument("--clean", action="store_true",
                   help="discard the resumable work of an interrupted build into --out and start afresh")
    eg = b.add_argument_group("engine")
    eg.add_argument("--engine", choices=("local", "ray"), default=default(BuildConfig, "engine"),
                    help="where embedding and the IVF block work run: this process, or Ray "
                         "(pip install 'nearest-prompt[ray]'); the store is the same")
    eg.add_argument("--ray-address", default=None, metavar="auto|ray://HOST:PORT",
                    help="join this Ray cluster (default: start a local Ray runtime)")
    eg.add_argument("--workers", type=positive_int, default=None,
                    help="Ray actors embedding at once (default: the cluster's CPUs, or GPUs / --gpus-per-worker)")
    eg.add_argument("--gpus-per-worker", type=float, default=default(BuildConfig, "gpus_per_worker"),
                    help="GPUs per Ray actor (each loads its models on its GPU)")
    add_model_args(b, building=True)
    add_common(b)

    q = cmd("query", "nearest prompts for images or texts")
    q.add_argument("--index", required=True, metavar="DIR", help="index store directory")
    q.add_argument("images", nargs="*", metavar="IMAGE|FOLDER", help="image files or folders of images")
    q.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="query by text (repeatable), through the encoder of --space")
    q.add_argument("--k", type=positive_int, default=None,
                   help=f"neighbours per query (default: {DEFAULT_K_QUERY}, at most the index's size)")
    q.add_argument("--json", action="store_true",
                   help="print JSON instead of a table (each neighbour with its kept columns and its weight)")
    add_where_arg(q)
    add_plan_args(q)
    add_image_args(q)
    add_model_args(q, building=False)
    add_common(q)

    a = cmd("add", "add prompts to an index store without a rebuild")
    a.add_argument("--index", required=True, metavar="DIR", help="index store directory (its next version replaces it)")
    a.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                   help="parquet, CSV/TSV, text or JSONL files, read as build reads them")
    a.add_argument("--column", default=None, help="prompt column/key for parquet, CSV and JSONL (default: prompt)")
    a.add_argument("--delimiter", default=None, metavar="CHAR", help="field delimiter of CSV files")
    a.add_argument("--limit", type=positive_int, default=None, metavar="N", help="add at most N new prompts")
    a.add_argument("--batch-size", type=positive_int, default=None, help="prompts per encoder batch")
    a.add_argument("--clean", action="store_true", help="discard the resumable work of an interrupted addition")
    a.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present, else cpu)")
    add_common(a)

    rm = cmd("remove", "remove prompts from an index store (the other rows keep their ids)")
    rm.add_argument("--index", required=True, metavar="DIR", help="index store directory (its next version replaces it)")
    which = rm.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", metavar="FILE", help="row ids to remove: one a line, or an .npy of integers")
    which.add_argument("--where", metavar="EXPR", help="remove the prompts whose kept columns match (as query --where)")
    which.add_argument("--matching", metavar="REGEX", help="remove the prompts a Python regular expression finds "
                                                             "(anywhere in the text; (?i) ignores case)")
    add_common(rm)

    pr = cmd("predict", "one 384-d MiniLM vector per image (competition submission or .npy)")
    pr.add_argument("--index", required=True, metavar="DIR", help="index store directory")
    pr.add_argument("images", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    pr.add_argument("--out", required=True, metavar="FILE",
                    help="FILE.csv (imgId_eId,val) or FILE.npy (+ FILE.ids.txt); beside it FILE.csv.confidence.csv "
                         "(or FILE.npy.confidence.csv)")
    pr.add_argument("--k", type=positive_int, default=None,
                    help=f"neighbours blended per image (default: {DEFAULT_K_PREDICT}, at most the index's size)")
    add_weighting_args(pr)
    add_captioner_args(pr)  # --captions CSV | --captioner MODEL: fused with the image query (docs/python-api.md)
    pr.add_argument("--caption-weight", type=float, default=1.0, help="weight of the caption neighbours (image: 1)")
    pr.add_argument("--caption-space", default="clip", metavar="SPACE",
                    help="search captions in this space: a CLIP space of the index ('clip': its first one) or minilm")
    add_where_arg(pr)
    add_plan_args(pr)
    add_image_args(pr)
    add_model_args(pr, building=False)
    add_common(pr)

    from .evaluation import add_parsers

    add_parsers(cmd)
    from .compose import add_parsers as add_compose_parsers

    add_compose_parsers(cmd)

    from .serve import add_parser as add_serve_parser

    add_serve_parser(cmd)

    i = cmd("info", "what an index store holds")
    i.add_argument("--index", required=True, metavar="DIR", help="index store directory")
    i.add_argument("--json", action="store_true", help="print the manifest and sizes as JSON")
    i.add_argument("--verify", action="store_true", help="checksum every file in full (every 64 MiB block)")
    add_common(i)
    return parser


class _TqdmHandler(logging.Handler):
    """Log lines through ``tqdm.write``, so that they never land inside a progress bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(printable(self.format(record)), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in _OUR_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if not args.verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_build(args: argparse.Namespace) -> int:
    from nearest_prompt import indexer
    from nearest_prompt.encoders.clip import DEFAULT_CLIP

    if args.add_space is not None:
        if args.prompts or args.space or args.image_column:
            raise InputError("--add-space adds a space to the store at --out: give it without --prompts, --space "
                             "and --image-column")
        done = indexer.add_space(args.out, args.add_space, device=args.device, batch_size=args.batch_size,
                                 shard_size=args.shard_size, progress=not args.quiet, clean=args.clean)
        print(f"added space {done.space} to {done.path}: {done.rows} prompts, {done.index.type} index, recall@10 "
              f"{done.index.recall_at_10}")
        return 0
    if not args.prompts:
        raise InputError("the following arguments are required: --prompts (or --add-space NAME=MODEL to add a space "
                         "to the store at --out)")
    spaces = tuple(args.space or ())
    if spaces and args.clip is not None:  # --clip given beside --space: the space "clip", first
        spaces = (f"clip={args.clip}" + (f"@{args.pretrained}" if args.pretrained else ""), *spaces)
    config = indexer.BuildConfig(
        clip_model=args.clip or DEFAULT_CLIP, clip_pretrained=args.pretrained, minilm_model=args.minilm,
        spaces=spaces, image_column=args.image_column,
        column=args.column, delimiter=args.delimiter, limit=args.limit,
        columns=None if args.columns is None else tuple(c.strip() for c in args.columns.split(",") if c.strip()),
        near_dup_threshold=None if args.no_near_dedup else args.near_dup_threshold,
        batch_size=args.batch_size, shard_size=args.shard_size,
        index_type=args.index_type, memory_budget_gb=args.memory_budget,
        fragment_min_count=args.fragment_min_count, max_fragments=args.max_fragments,
        engine=args.engine, ray_address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
    )
    result = indexer.build(args.prompts, args.out, config=config, device=args.device, progress=not args.quiet,
                           clean=args.clean)
    st = result.stats
    print(f"built {result.path}: {result.rows} prompts "
          f"({st['values_read']} read, {st['exact_duplicates']} exact and {st['near_duplicates']} near duplicates, "
          f"{st['empty'] + st['not_text']} empty or not text), {st.get('fragments', 0)} fragments")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from nearest_prompt import indexer

    result = indexer.add(args.prompts, args.index, column=args.column, delimiter=args.delimiter, limit=args.limit,
                         batch_size=args.batch_size, device=args.device, progress=not args.quiet, clean=args.clean)
    st = result.stats
    print(f"added {result.added} prompts to {result.path}, now {result.rows} "
          f"({st.get('values_read', 0)} read: {st.get('already_in_store', 0)} already in the store, "
          f"{st.get('exact_duplicates', 0)} exact and {st.get('near_duplicates', 0)} near duplicates, "
          f"{st.get('empty', 0) + st.get('not_text', 0)} empty or not text)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from nearest_prompt import indexer

    result = indexer.remove(args.index, ids=args.ids, where=args.where, matching=args.matching,
                            progress=not args.quiet)
    if result.removed == 0:
        print(f"nothing to remove from {result.path}" + (f" ({result.already} chosen were removed before)"
                                                          if result.already else "") + "; the store is unchanged")
    else:
        print(f"removed {result.removed} prompts from {result.path}; {result.live} remain, ids unchanged "
              f"({result.fragments} fragments)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from nearest_prompt.encoders.images import collect_images

    if not args.images and not args.text:
        raise InputError("nothing to query: give IMAGE or FOLDER arguments, or --text TEXT")
    if args.space == "minilm" and args.images:
        raise InputError("--space minilm is for --text queries only; images are searched in CLIP spaces")
    images = collect_images(args.images, max_pixels=args.max_pixels, recursive=args.recursive) \
        if args.images else None
    r = open_retriever(args)
    [plan] = plans_for(args, r)
    where = where_for(args, r.store)
    k = k_for(args, r.rows, default=DEFAULT_K_QUERY)
    results, skipped = r.query(images=images, texts=args.text, plan=plan, k=k,
                               batch_size=args.batch_size, max_pixels=args.max_pixels,
                               progress=not args.quiet and images is not None and len(images.paths) > 1, where=where)
    if args.json:
        doc = {"index": str(r.store.path), "k": k, "search": plan.describe(r.store.primary), "where": where,
               "note": r.store.note,
               "results": [
            {res.kind: res.label, "neighbors": [
                {"rank": j + 1, "id": int(i), "score": round(float(s), 6), "prompt": t, "weight": round(float(w), 6),
                 "metadata": m}
                for j, (i, s, t, w, m) in enumerate(zip(res.ids, res.scores, res.prompts, res.weights, res.metadata))]}
            for res in results],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
        print(escape_c1(json.dumps(doc, indent=2, ensure_ascii=False)))
    else:
        for res in results:
            print(f"image {printable(res.label)}" if res.kind == "image" else f"text {printable(repr(res.label))}")
            for j, (s, t) in enumerate(zip(res.scores, res.prompts)):
                print(f"  {j + 1:>3}  {s:.4f}  {printable(t)}")
    report_skipped(skipped)
    print_random_weights_note(r.store)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:

    from nearest_prompt.common.atomic import check_writable
    from nearest_prompt.encoders.captioner import caption_files
    from nearest_prompt.encoders.images import collect_images
    from nearest_prompt.evaluation.inputs import check_prediction_path, write_predictions
    from nearest_prompt.evaluation.submission import confidence_path, duplicate_ids, write_confidence
    from nearest_prompt.retriever.weighting import Weighting

    out = check_writable(check_prediction_path(args.out))
    weighting = Weighting(scheme=args.weighting, power=args.power, eps=args.eps,
                          temperature=args.temperature).validate()
    image_set = collect_images(args.images, max_pixels=args.max_pixels, recursive=args.recursive)
    dupes = duplicate_ids([p.stem for p in image_set.paths])  # checked before the slow part
    if dupes:
        raise InputError(f"several images share the id (file stem) {dupes[0]!r}; the submission needs unique ids")
    r = open_retriever(args)  # a missing or damaged store fails before a captioner loads
    [plan] = plans_for(args, r)
    if plan.space == "minilm":
        raise InputError("--space minilm is for text queries; images are searched in CLIP spaces")
    where = where_for(args, r.store)
    captions, captioner = load_captions(args)
    k = k_for(args, r.rows, default=DEFAULT_K_PREDICT)
    emb = r.embed_images(image_set, batch_size=args.batch_size, max_pixels=args.max_pixels, progress=not args.quiet,
                         spaces=plan.spaces(r.store.primary))
    ids = [p.stem for p in emb.paths]
    texts = None
    if captioner is not None:
        texts = caption_files(captioner, emb.paths, batch_size=args.batch_size, max_pixels=args.max_pixels,
                              progress=not args.quiet)
    elif captions is not None:
        texts = report_captions(captions, ids)
    pred = r.predict(emb.by_space, k=k, weighting=weighting, captions=texts, caption_weight=args.caption_weight,
                     caption_space=args.caption_space, where=where, plan=plan)
    written = write_predictions(out, ids, pred.vectors)
    written.append(write_confidence(confidence_path(out), ids, pred.confidence, pred.top_score))
    print(f"wrote {len(ids)} prediction(s) to {', '.join(str(p) for p in written)}")
    report_skipped(emb.skipped)
    print_random_weights_note(r.store)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from nearest_prompt.index_store import open_store

    store = open_store(args.index, verify="full" if args.verify else "auto")
    d = store.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    m = store.manifest
    mini = m.minilm
    lines = [
        f"index store   {store.path}",
        f"format        {m.format} v{m.format_version}, created {m.created or '?'}",
        f"prompts       {store.rows}" + (f" ({store.rows - store.live_rows} removed, {store.live_rows} searched)"
                                              if store.removed is not None else ""),
        "columns       " + (", ".join(f"{n} ({store.table.schema.field(n).type})" for n in store.columns) or "none"),
        *[f"added         {a.get('time')}: {a.get('stats', {}).get('added', 0)} prompts from "
          + ", ".join(Path(src["path"]).name for src in a.get("sources", [])) for a in m.build.get("additions", [])],
        *[f"removed       {r.get('time')}: {r.get('removed')} prompts ("
          + ", ".join(f"{k} {v}" for k, v in r.get("selector", {}).items()) + ")" for r in m.build.get("removals", [])],
        *[line for name, info in m.spaces.items() for line in _space_lines(name, info, store.rows)],
        f"MiniLM        {mini.model}  (dim {mini.dim}, max tokens {mini.max_seq_length})",
        *[f"{space + ' index':<14}{ix.type} ({ix.factory}) {ix.params or ''}  recall@10 vs exact {ix.recall_at_10}"
          + (f" (lower bound {ix.recall_at_10_low})" if ix.recall_at_10_low is not None else "")
          + (f"; {ix.ram_bytes / max(store.rows, 1):,.0f} B of memory and {ix.disk_bytes / max(store.rows, 1):,.0f} B "
             "of disk a prompt" if ix.ram_bytes is not None else "")
          for space, ix in m.indexes.items()],
        ("fragments     none (format version 1: rebuild for interrogate's fragment vocabulary)" if m.fragments is None
         else f"fragments     {m.fragments.rows} (held by >= {m.fragments.rule.get('min_count')} prompts, at most "
              f"{m.fragments.rule.get('max_fragments')}), indexes "
              + ", ".join(f"{sp} {ix.type}" for sp, ix in m.fragments.indexes.items())),
        "files:",
        *[f"  {name:<14}{format_bytes(f.bytes):>12}" for name, f in m.files.items()],
        f"  {'total':<14}{format_bytes(d['bytes_total']):>12}  ({d['disk_bytes_per_prompt']:,.0f} bytes of disk a "
        f"prompt; searching keeps {d['ram_bytes_per_prompt']:,.0f} bytes a prompt in memory)",
        "opened        " + ", ".join(f"{k} index {'memory-mapped' if v else 'read into memory'}"
                                     for k, v in d["memory_mapped"].items()),
        "build options: " + ", ".join(f"{k}={v}" for k, v in m.build.get("config", {}).items()),
        "build stats:   " + ", ".join(f"{k}={v}" for k, v in m.build.get("stats", {}).items()),
        "sources:       " + ", ".join(s["path"] for s in m.build.get("sources", [])),
        "built with:    " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        "running:       " + ", ".join(f"{k} {v}" for k, v in d["running_versions"].items()),
        "checksums:     " + ("all verified, every block" if args.verify else
                             "sizes checked; files up to 256 MiB checksummed, one random 64 MiB block of "
                             "larger ones (--verify checks all)"),
    ]
    print("\n".join(printable(line) for line in lines))
    print_random_weights_note(store)
    return 0


def _space_lines(name: str, info: Any, rows: int) -> list[str]:
    clip = info.model
    label = f"space {name}"
    what = (f"images of {info.rows:,} of {rows:,} prompts ({info.images.get('images', 0):,} images, column "
            f"{info.images.get('column')!r}), embedded by space {info.of}'s model" if info.kind == "image" else
            f"{clip.model}" + (f" / {clip.pretrained}" if clip.pretrained else "")
            + f"  (dim {clip.embed_dim}, context {clip.context_length})")
    lines = [f"{label:<14}{what}"]
    if info.kind == "text":
        lines.append(f"              weights {clip.weights}")
    return lines


def commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from .compose import cmd_interrogate
    from .evaluation import cmd_blend, cmd_eval
    from .serve import cmd_serve

    return {"build": cmd_build, "add": cmd_add, "remove": cmd_remove, "query": cmd_query, "predict": cmd_predict,
            "info": cmd_info,
            "eval": cmd_eval, "blend": cmd_blend, "serve": cmd_serve, "interrogate": cmd_interrogate}


def error_line(e: NearestPromptError) -> str:
    """One line: the option's flag (when the error names a parameter that has one), then the message."""
    text = " ".join(str(e).split())
    name = flag(e.param) if e.param else None
    return printable(f"{name}: {text}" if name and not text.startswith(name) else text)


def main(argv: Sequence[str] | None = None) -> int:
    if not faulthandler.is_enabled():  # a fatal signal (a store file truncated under its memory map: SIGBUS)
        with contextlib.suppress(ValueError, OSError):  # says where it hit; stderr may have no file (tests)
            faulthandler.enable()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2, already printed in one line)
        return int(e.code or 0)
    _setup_logging(args)
    try:
        from nearest_prompt.encoders.images import DEFAULT_MAX_PIXELS, pixel_limit

        with pixel_limit(getattr(args, "max_pixels", None) or DEFAULT_MAX_PIXELS):  # Pillow's own check, as ours
            return commands()[args.command](args)
    except NearestPromptError as e:
        print(f"nearest-prompt: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nearest-prompt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nearest-prompt: error: out of memory; lower --batch-size (or --shard-size for build)", file=sys.stderr)
        return 2
    except OSError as e:  # permissions and the like on paths the checks could not foresee
        print(f"nearest-prompt: error: {printable(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
