"""A store that grows and is narrowed: add equals a build of the union, removed rows never come back, kept
columns and filters, a kill -9 at every stage of an addition.

The index machinery runs on stand-in encoders (``devkit.standin``: each prompt's vector depends on its text
alone, so the same prompt gets the same vector in any batch), which makes "bit for bit" a fair demand."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.standin import StandInClip, StandInMiniLM

from .conftest import CORPUS, assert_one_line_error, need_data, run

ROOT = Path(__file__).resolve().parents[1]
SOURCES_GROUP = 19  # the row group of the shared corpus holding every source (its rows 17,365.. are not discord)


def mixed_slice(n: int, *, offset: int = 15_500) -> pa.Table:
    """``n`` prompts of the shared corpus with their ``source``, several sources among them."""
    need_data()
    return pq.ParquetFile(CORPUS).read_row_group(SOURCES_GROUP).slice(offset, n)


@pytest.fixture(scope="module")
def encoders():
    return StandInClip(), StandInMiniLM()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """old.parquet (3,000 prompts), new.parquet (1,200: 100 of them already in old, and a prompt twice) and
    union.parquet (what a build of both reads)."""
    folder = tmp_path_factory.mktemp("grow")
    table = mixed_slice(4_100)
    old, new = table.slice(0, 3_000), table.slice(2_900, 1_200)
    new = pa.concat_tables([new, new.slice(5, 1)])  # a duplicate within the new file
    pq.write_table(old, folder / "old.parquet")
    pq.write_table(new, folder / "new.parquet")
    pq.write_table(table, folder / "union.parquet")
    return folder


def build(files, out, encoders, **options):
    from nearest_prompt import indexer

    clip, minilm = encoders
    config = indexer.BuildConfig(shard_size=500, max_fragments=2_000, **options)
    indexer.build(files, out, config=config, clip=clip, minilm=minilm, progress=False)
    return out


def grown(corpus, tmp_path, encoders, **options):
    """A store built from old.parquet, then new.parquet added: (that store, a build of the union)."""
    from nearest_prompt import indexer

    store = build([corpus / "old.parquet"], tmp_path / "grown", encoders, **options)
    result = indexer.add([corpus / "new.parquet"], store, clip=encoders[0], minilm=encoders[1], progress=False)
    union = build([corpus / "union.parquet"], tmp_path / "union", encoders, **options)
    return store, union, result


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_add_equals_a_build_of_the_union(corpus, tmp_path, encoders, index_type):
    from nearest_prompt import index_store
    from nearest_prompt.common.topk import recall_at_k
    from nearest_prompt.retriever import Retriever

    path, union_path, result = grown(corpus, tmp_path, encoders, index_type=index_type)
    assert result.added == 1_100 and result.stats["already_in_store"] == 100
    assert result.stats["exact_duplicates"] == 1
    a, u = index_store.open_store(path), index_store.open_store(union_path)
    assert a.rows == u.rows == 4_100
    assert a.table.equals(u.table)  # the same prompts, ids and kept columns, in the same order
    assert np.array_equal(np.asarray(a.minilm), np.asarray(u.minilm))
    assert np.array_equal(np.asarray(a.vectors["clip"]), np.asarray(u.vectors["clip"]))
    assert a.fragments.table.equals(u.fragments.table)  # the vocabulary mined again: same fragments and counts
    assert np.array_equal(np.asarray(a.fragments.vectors["clip"]), np.asarray(u.fragments.vectors["clip"]))
    queries = encoders[0].encode_text(a.table.column("prompt").to_pylist()[::41])
    got = Retriever(a, clip=encoders[0], minilm=encoders[1]).search(queries, k=10)
    want = Retriever(u, clip=encoders[0], minilm=encoders[1]).search(queries, k=10)
    if index_type == "flat":
        assert np.array_equal(got.ids, want.ids)
    else:
        assert recall_at_k(got.ids, want.ids) >= 0.95
        assert a.manifest.indexes["clip"].recall_at_10 >= 0.95  # measured again after the addition
    [entry] = a.manifest.build["additions"]
    assert entry["rows_before"] == 3_000 and entry["rows_after"] == 4_100
    assert entry["sources"][0]["path"].endswith("new.parquet") and entry["stats"]["added"] == 1_100


def test_ivf_lists_are_extended_not_retrained(corpus, tmp_path, encoders):
    """The grown IVF index keeps the centroids it was trained with; every row is in the list of its nearest."""
    import faiss

    from nearest_prompt import index_store

    base = build([corpus / "old.parquet"], tmp_path / "base", encoders, index_type="ivf")
    old = index_store.open_store(base)
    before = faiss.extract_index_ivf(old.indexes["clip"])
    centroids = before.quantizer.reconstruct_n(0, before.nlist)
    from nearest_prompt import indexer

    indexer.add([corpus / "new.parquet"], base, clip=encoders[0], minilm=encoders[1], progress=False)
    store = index_store.open_store(base)
    after = faiss.extract_index_ivf(store.indexes["clip"])
    assert np.array_equal(after.quantizer.reconstruct_n(0, after.nlist), centroids)
    assert after.ntotal == store.rows
    _, assigned = after.quantizer.search(np.asarray(store.vectors["clip"][3_000:], dtype=np.float32), 1)
    for row, lst in zip(range(3_000, store.rows, 97), assigned[::97, 0]):
        ids = faiss.rev_swig_ptr(after.invlists.get_ids(int(lst)), after.invlists.list_size(int(lst)))
        assert row in set(ids.tolist())
    info = store.manifest.indexes["clip"]
    assert info.imbalance and info.imbalance_at_training


def test_add_drops_exact_and_near_duplicates_of_the_store(tmp_path, clip_encoder, minilm):
    """With the real MiniLM: a prompt the store holds (in other case and spacing) and a near variant of one are
    dropped; a new prompt is added and found by its own text."""
    from nearest_prompt import indexer
    from nearest_prompt.retriever import Retriever

    from .conftest import corpus_slice

    prompts = corpus_slice(40, offset=7000)
    (tmp_path / "old.txt").write_text("\n".join(prompts) + "\n")
    config = indexer.BuildConfig(shard_size=64)
    out = tmp_path / "store"
    indexer.build([tmp_path / "old.txt"], out, config=config, clip=clip_encoder, minilm=minilm, progress=False)
    kept = Retriever.open(out, clip=clip_encoder, minilm=minilm).prompts(range(Retriever.open(out).rows))
    fresh = "a lighthouse made of glass on a stormy coast, oil painting"
    (tmp_path / "new.txt").write_text(f"  {kept[3].upper()}  \n{kept[4]}, 4k\n{fresh}\n")
    result = indexer.add([tmp_path / "new.txt"], out, clip=clip_encoder, minilm=minilm, progress=False)
    assert (result.added, result.stats["already_in_store"], result.stats["near_duplicates"]) == (1, 1, 1)
    r = Retriever.open(out, clip=clip_encoder, minilm=minilm)
    assert r.rows == len(kept) + 1 and r.prompts([len(kept)]) == [fresh]
    nb = r.search(r.embed_texts([fresh], space="minilm"), k=1, space="minilm")
    assert nb.ids[0, 0] == len(kept)


def test_a_second_run_of_the_same_addition_changes_nothing(corpus, tmp_path, encoders):
    from nearest_prompt import index_store, indexer

    path = build([corpus / "old.parquet"], tmp_path / "s", encoders)
    indexer.add([corpus / "new.parquet"], path, clip=encoders[0], minilm=encoders[1], progress=False)
    before = (path / "manifest.json").read_bytes()
    again = indexer.add([corpus / "new.parquet"], path, clip=encoders[0], minilm=encoders[1], progress=False)
    assert again.added == 0 and again.stats["already_in_store"] == 1_200
    assert (path / "manifest.json").read_bytes() == before
    assert index_store.open_store(path).rows == 4_100
    assert not (tmp_path / ".s.build").exists()


ADD_SCRIPT = """
import logging, os, signal, sys
sys.path.insert(0, {root!r})
from devkit.standin import StandInClip, StandInMiniLM
from nearest_prompt import indexer

class Kill(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "add stage: " + sys.argv[1]:
            os.kill(os.getpid(), signal.SIGKILL)

log = logging.getLogger("nearest_prompt.indexer.add")
log.setLevel(logging.DEBUG)
log.addHandler(Kill())
indexer.add([sys.argv[2]], sys.argv[3], clip=StandInClip(), minilm=StandInMiniLM(), progress=False, shard_size=400)
print("added")
"""

STAGES = ["read", "minilm", "near_dedup", "clip", "fragments", "store", "clip_index", "minilm_index", "commit",
          "committed"]


@pytest.mark.slow
def test_kill_9_at_each_stage_of_add_leaves_a_good_store_and_the_same_command_finishes(corpus, tmp_path, encoders):
    from nearest_prompt import index_store, indexer

    reference = build([corpus / "old.parquet"], tmp_path / "reference", encoders, index_type="ivf")
    indexer.add([corpus / "new.parquet"], reference, clip=encoders[0], minilm=encoders[1], progress=False,
                shard_size=400)
    want = index_store.open_store(reference)
    script = ADD_SCRIPT.format(root=str(ROOT))
    for stage in STAGES:
        path = build([corpus / "old.parquet"], tmp_path / stage, encoders, index_type="ivf")
        args = [sys.executable, "-c", script, stage, str(corpus / "new.parquet"), str(path)]
        killed = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (stage, killed.stderr[-2000:])
        serving = index_store.open_store(path)  # the last good store: complete and valid
        assert serving.rows == (4_100 if stage == "committed" else 3_000), stage
        finished = subprocess.run([*args[:3], "never", *args[4:]], capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, (stage, finished.stderr[-2000:])
        got = index_store.open_store(path)
        assert got.table.equals(want.table), stage
        assert np.array_equal(np.asarray(got.minilm), np.asarray(want.minilm)), stage
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{stage}.")], stage  # nothing left behind


def test_removed_prompts_never_come_back(corpus, tmp_path, encoders, rng):
    """1,000 random queries: search, predict's neighbours and the composer's neighbours and fragments never
    hold a removed row; the other rows keep their ids and prompts."""
    from nearest_prompt import index_store, indexer
    from nearest_prompt.composer import ComposeOptions, Composer
    from nearest_prompt.indexer.fragments import mine_fragments
    from nearest_prompt.retriever import Retriever

    path = build([corpus / "old.parquet"], tmp_path / "s", encoders, index_type="ivf")
    before = index_store.open_store(path)
    prompts = before.table.column("prompt").to_pylist()
    result = indexer.remove(path, matching=r"(?i)\bportrait\b", progress=False)
    removed_rows = np.array([bool(__import__("re").search(r"(?i)\bportrait\b", p)) for p in prompts])
    assert result.removed == removed_rows.sum() > 50
    ids_file = tmp_path / "ids.txt"
    extra = np.flatnonzero(~removed_rows)[:30]
    ids_file.write_text("# ids to remove\n" + "\n".join(map(str, extra)) + "\n")
    assert indexer.remove(path, ids=ids_file, progress=False).removed == 30
    removed_rows[extra] = True
    store = index_store.open_store(path)
    assert np.array_equal(store.removed, removed_rows)
    live = np.flatnonzero(~removed_rows)
    assert store.prompts(live) == [prompts[i] for i in live]  # ids stable
    assert set(store.prompts(np.flatnonzero(removed_rows))) == {""}  # their text is gone
    assert not np.asarray(store.minilm)[removed_rows].any()
    r = Retriever(store, clip=encoders[0], minilm=encoders[1])
    queries = rng.standard_normal((1_000, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    nb = r.search(queries, k=20)
    assert (nb.ids >= 0).all() and not removed_rows[nb.ids].any()
    pred = r.predict(queries, k=50)
    assert not removed_rows[pred.neighbors.ids[pred.neighbors.ids >= 0]].any()
    text_q = r.embed_texts([prompts[i] for i in np.flatnonzero(removed_rows)[:50]], space="minilm")
    nb = r.search(text_q, k=5, space="minilm")
    assert not removed_rows[nb.ids].any()
    live_vocab = mine_fragments([pa.array([prompts[i] for i in live])], min_count=3, max_fragments=2_000)
    assert set(store.fragments.texts(range(len(store.fragments)))) <= set(live_vocab.fragments.to_pylist())
    composed = Composer(r, options=ComposeOptions(objective="clip", fragments=20)).compose(
        queries[:20], neighbors=r.search(queries[:20], k=10), images=queries[:20])
    assert all(c.prompt for c in composed)
    [entry, second] = store.manifest.build["removals"]
    assert entry["selector"] == {"matching": r"(?i)\bportrait\b"} and second["removed"] == 30


def test_a_removed_prompt_is_not_added_again(corpus, tmp_path, encoders):
    from nearest_prompt import indexer

    path = build([corpus / "old.parquet"], tmp_path / "s", encoders)
    first = pq.read_table(corpus / "old.parquet").column("prompt")[0].as_py()
    (tmp_path / "ids.txt").write_text("0\n")
    indexer.remove(path, ids=tmp_path / "ids.txt", progress=False)
    (tmp_path / "again.txt").write_text(first + "\n")
    result = indexer.add([tmp_path / "again.txt"], path, clip=encoders[0], minilm=encoders[1], progress=False)
    assert result.added == 0 and result.stats["already_in_store"] == 1


def test_kept_columns_are_typed_and_filter_inside_the_search(tmp_path, encoders, monkeypatch):
    """A CSV's columns are kept typed (seed int64, cfg float64, model string); equality, in and ranges filter;
    k results come back whenever k rows match, through faiss's selector as well as exact scoring."""
    from nearest_prompt import index_store
    from nearest_prompt.retriever import Retriever
    search_module = importlib.import_module("nearest_prompt.retriever.search")  # the module, not its function

    prompts = mixed_slice(3_000).column("prompt").to_pylist()
    models = ["sd-1.5", "sd-2.1", "sdxl"]
    lines = ["prompt,seed,cfg,model"] + [f'"{p.replace(chr(34), "")}",{i},{7.5 if i % 2 else 5},{models[i % 3]}'
                                         for i, p in enumerate(prompts)]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    path = build([tmp_path / "c.csv"], tmp_path / "s", encoders, index_type="ivf", near_dup_threshold=None)
    store = index_store.open_store(path)
    assert [str(store.table.schema.field(c).type) for c in ("seed", "cfg", "model")] == ["int64", "double", "string"]
    r = Retriever(store, clip=encoders[0], minilm=encoders[1])
    q = encoders[0].encode_text(prompts[:40])
    seeds = store.table.column("seed").to_numpy()
    model = np.array(store.table.column("model").to_pylist())
    cases = {"model=sdxl": model == "sdxl", "model in (sd-1.5, 'sdxl')": np.isin(model, ["sd-1.5", "sdxl"]),
             "seed>=100 and seed<160": (seeds >= 100) & (seeds < 160), "cfg<6 and model!=sd-2.1":
             (store.table.column("cfg").to_numpy() < 6) & (model != "sd-2.1")}
    vectors = np.asarray(store.vectors["clip"], dtype=np.float32)
    for exact_max in (search_module.FILTER_EXACT_MAX, 0):  # exact scoring of the allowed rows, then faiss's selector
        monkeypatch.setattr(search_module, "FILTER_EXACT_MAX", exact_max)
        for expr, want in cases.items():
            nb = r.search(q, k=10, where=expr)
            assert (nb.ids >= 0).all(), expr  # at least 10 rows match each: 10 come back
            assert want[nb.ids].all(), expr
            scores = q @ vectors[want].T
            exact = np.flatnonzero(want)[np.argsort(-scores, axis=1)[:, :10]]
            hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb.ids, exact)])
            assert hits >= 0.95, (expr, exact_max, hits)
    few = r.search(q[:3], k=10, where="seed<4")
    assert (few.ids >= 0).sum(axis=1).tolist() == [4, 4, 4]  # fewer match than k: those, padded
    none = r.search(q[:2], k=10, where="model=dalle")
    assert (none.ids == -1).all()


def test_query_json_shows_kept_columns_and_weights(tmp_path, encoders, capsys, monkeypatch):
    from nearest_prompt import index_store
    from nearest_prompt.retriever import Retriever

    table = mixed_slice(800, offset=17_000)
    pq.write_table(table, tmp_path / "c.parquet")
    path = build([tmp_path / "c.parquet"], tmp_path / "s", encoders)
    store = index_store.open_store(path)
    assert store.columns == ["source"]
    r = Retriever(store, clip=encoders[0], minilm=encoders[1])
    results, _ = r.query(texts=["a castle at dawn"], k=5, where="source in (songjein_28th_real, i2p_lexica)")
    [res] = results
    assert {m["source"] for m in res.metadata} <= {"songjein_28th_real", "i2p_lexica"}
    assert abs(float(res.weights.sum()) - 1) < 1e-6 and (np.diff(res.weights) <= 1e-9).all()
    # through the command, with stand-in encoders: the CLI loads the store's models, so hand it these
    monkeypatch.setattr(importlib.import_module("nearest_prompt.cli.main"), "open_retriever", lambda args: r)
    code, out, err = run(capsys, "query", "--index", path, "--text", "a castle", "--json", "--k", "3",
                         "--where", "source=songjein_28th_real")
    assert code == 0, err
    doc = json.loads(out)
    [hit] = doc["results"]
    assert doc["where"] == "source=songjein_28th_real" and len(hit["neighbors"]) == 3
    assert all(n["metadata"] == {"source": "songjein_28th_real"} for n in hit["neighbors"])
    assert abs(sum(n["weight"] for n in hit["neighbors"]) - 1) < 1e-5
    code, out, err = run(capsys, "query", "--index", path, "--text", "a castle", "--json", "--where", "source=nowhere")
    assert code == 0 and json.loads(out)["results"][0]["neighbors"] == [], err


@pytest.mark.parametrize("where, match", [
    ("colour=red", "no column 'colour' in this index (it keeps: source"),
    ("source ~ lexica", "cannot read 'source ~ lexica'"),
    ("source>=lexica", ">= needs a numeric column"),
    ("", "--where: empty; give a condition"),
])
def test_bad_filters_are_one_line_errors(tmp_path, encoders, capsys, monkeypatch, where, match):
    from nearest_prompt.retriever import Retriever

    pq.write_table(mixed_slice(200, offset=17_000), tmp_path / "c.parquet")
    path = build([tmp_path / "c.parquet"], tmp_path / "s", encoders)
    r = Retriever.open(path, clip=encoders[0], minilm=encoders[1])
    monkeypatch.setattr(importlib.import_module("nearest_prompt.cli.main"), "open_retriever", lambda args: r)
    capsys.readouterr()
    code, _, err = run(capsys, "query", "--index", path, "--text", "a castle", "--where", where)
    assert_one_line_error(code, err, match)
    code, _, err = run(capsys, "remove", "--index", path, "--where", where)
    assert_one_line_error(code, err, match)


def test_bad_changes_are_one_line_errors(tmp_path, encoders, capsys):
    pq.write_table(mixed_slice(200, offset=17_000), tmp_path / "c.parquet")
    path = build([tmp_path / "c.parquet"], tmp_path / "s", encoders)
    (tmp_path / "ids.txt").write_text("3\nseven\n")
    (tmp_path / "far.txt").write_text("3\n5000\n")
    (tmp_path / "ids.npy").write_bytes(b"not numpy")
    (tmp_path / "notes").mkdir()
    capsys.readouterr()
    cases = [
        (["remove", "--index", path, "--ids", tmp_path / "ids.txt"], "ids.txt:2: 'seven' is not a row id"),
        (["remove", "--index", path, "--ids", tmp_path / "far.txt"], "row id 5000 is outside the store (0..199)"),
        (["remove", "--index", path, "--ids", tmp_path / "ids.npy"], "is not a readable .npy file"),
        (["remove", "--index", path, "--matching", "([a-z"], "is not a regular expression"),
        (["remove", "--index", tmp_path / "notes", "--matching", "x"], "manifest.json"),
        (["add", "--index", tmp_path / "nowhere", "--prompts", tmp_path / "c.parquet"], "no index store at"),
        (["add", "--index", path, "--prompts", tmp_path / "missing.txt"], "missing.txt"),
    ]
    for argv, match in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, match)
    code, out, _ = run(capsys, "remove", "--index", path, "--where", "source=nowhere")
    assert code == 0 and "nothing to remove" in out and "unchanged" in out


def test_add_and_remove_are_refused_while_a_build_holds_the_lock(tmp_path, encoders):
    from nearest_prompt import indexer
    from nearest_prompt.common.errors import BusyError
    from nearest_prompt.indexer.workdir import WorkDir

    pq.write_table(mixed_slice(200, offset=17_000), tmp_path / "c.parquet")
    path = build([tmp_path / "c.parquet"], tmp_path / "s", encoders)
    holder = WorkDir(path).lock()
    try:
        with pytest.raises(BusyError, match="another build is writing"):
            indexer.add([tmp_path / "c.parquet"], path, clip=encoders[0], minilm=encoders[1], progress=False)
        with pytest.raises(BusyError):
            indexer.remove(path, matching="a", progress=False)
    finally:
        holder.unlock()


def test_old_stores_are_refused_for_changes_in_one_line(tmp_path, capsys):
    """A store of an older format (here: the manifest says version 2) is not changed; it says to rebuild."""
    from nearest_prompt.index_store.format import FORMAT_NAME

    path = tmp_path / "old"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"format": FORMAT_NAME, "format_version": 7, "files": {}}))
    code, _, err = run(capsys, "remove", "--index", path, "--matching", "x")
    assert_one_line_error(code, err, "format version 7 is not supported")
    assert os.listdir(path) == ["manifest.json"]
