"""Nothing lost, nothing left behind: a user's folder survives build, one build per --out, free
space and full disks, cleanup after failures, integrity checks that catch damaged stores, strict
readers, and every command failing in one line on a table of bad inputs."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from nearest_prompt import index_store, indexer
from nearest_prompt.common.errors import BusyError, InputError, StoreError
from nearest_prompt.common.text import clean_prompt, printable
from nearest_prompt.index_store.format import CLIP_INDEX, MANIFEST, MINILM
from nearest_prompt.retriever import Retriever

from .conftest import KAGGLE, assert_one_line_error, corpus_slice, need_data, run


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def small_corpus(tmp_path, n=40, offset=0, name="c.txt"):
    path = tmp_path / name
    path.write_text("\n".join(corpus_slice(n, offset=offset)) + "\n")
    return path


# -- a user's folder is never touched ------------------------------------------------------------
def test_folder_with_a_foreign_manifest_survives_build(capsys, tmp_path, clip_spec):
    app = tmp_path / "webapp"
    (app / "icons").mkdir(parents=True)
    (app / MANIFEST).write_text('{"manifest_version": 3, "name": "my extension"}')
    (app / "background.js").write_text("chrome.runtime.onInstalled.addListener(() => {});")
    (app / "icons" / "a.png").write_bytes(b"\x89PNG")
    before = {p: p.read_bytes() for p in app.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", app, "--clip", clip_spec, "-q")
    assert_one_line_error(code, err, "--out: ")
    assert "is a non-empty directory that is not an index store" in err
    assert {p: p.read_bytes() for p in app.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert not index_store.is_store(app)


def test_store_is_recognised_by_manifest_and_files(store_dir, tmp_path):
    assert index_store.is_store(store_dir)
    fake = tmp_path / "fake"
    shutil.copytree(store_dir, fake)
    m = json.loads((fake / MANIFEST).read_text())
    m["format"] = "something-else"
    (fake / MANIFEST).write_text(json.dumps(m))
    assert not index_store.is_store(fake)
    with pytest.raises(InputError, match="not an index store"):
        index_store.check_target(fake)


# -- one build per --out -------------------------------------------------------------------------
def test_second_build_into_the_same_out_is_refused_while_the_first_runs(capsys, tmp_path, clip_spec):
    out = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from nearest_prompt.indexer.workdir import WorkDir
        w = WorkDir(Path({str(out)!r})).lock()
        (w.path / "minilm").mkdir()
        (w.path / "minilm" / "00000.npy").write_bytes(b"the first build's shard")
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", out, "--clip", clip_spec,
                           "-q")
        assert_one_line_error(code, err, f"another build is writing {out} (pid {holder.pid} on ")
        assert (tmp_path / ".store.build" / "minilm" / "00000.npy").read_bytes() == b"the first build's shard"
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the next build takes the folder over and finishes
    code, out_text, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", out, "--clip", clip_spec,
                              "-q")
    assert code == 0, err
    assert index_store.open_store(out).rows == 5
    assert not (tmp_path / ".store.build").exists()


def test_workdir_lock_is_exclusive_in_one_process_too(tmp_path):
    from nearest_prompt.indexer.workdir import WorkDir

    with WorkDir(tmp_path / "s"):
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
            WorkDir(tmp_path / "s").lock()
    WorkDir(tmp_path / "s").lock().unlock()  # released


# -- disk space, failures, leftovers -------------------------------------------------------------
def test_too_little_free_space_is_refused_before_reading(capsys, tmp_path, clip_spec, monkeypatch):
    monkeypatch.setattr(indexer.disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 9 << 20, 2048))
    monkeypatch.setattr(indexer.exact_dedup, "iter_batches", lambda s, names: pytest.fail("the corpus was read"))
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 40), "--out", tmp_path / "s", "--clip",
                       clip_spec, "-q")
    assert_one_line_error(code, err, "--out: not enough free space for")
    assert "has 2.0 KiB free" in err and "work folder" in err and " prompts)" in err
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_disk_estimate_grows_with_the_corpus_and_the_clip_dimension():
    from nearest_prompt.indexer.disk import estimate

    small, big = estimate(1000, 100_000, clip_dim=512, index_bytes=0), estimate(2000, 200_000, clip_dim=512, index_bytes=0)
    assert big.work_bytes == 2 * small.work_bytes and big.store_bytes == 2 * small.store_bytes
    # float16 MiniLM + float32 CLIP shards per prompt, 2 copies of the text, dedup records
    assert small.work_bytes == 2 * 100_000 + 25 * 1000 + 1000 * 384 * 2 + 1000 * 512 * 4
    # the fragment vocabulary: text, float16 shards; in the store float16 vectors and a flat float32 index
    with_fragments = estimate(1000, 100_000, clip_dim=512, index_bytes=0, fragments=100)
    assert with_fragments.work_bytes - small.work_bytes == 100 * (40 + 896 * 2)
    assert with_fragments.store_bytes - small.store_bytes == 100 * (40 + 896 * 6)


def test_failed_build_keeps_only_resumable_shards_and_says_so(tmp_path, build_config, clip_encoder, minilm, caplog):
    from .test_build_store import Boom, FailingEncoder

    out = tmp_path / "store"
    with pytest.raises(Boom):
        indexer.build([small_corpus(tmp_path, 300, offset=900)], out, config=build_config,
                      clip=FailingEncoder(clip_encoder, 4), minilm=minilm, progress=False)
    work = tmp_path / ".store.build"
    # MiniLM 3 of 3, the fragment vocabulary's MiniLM and CLIP 1 + 1, CLIP text 1 of 3 (the encoder dies)
    assert "build failed; resumable: the deduplicated prompts and 6 of 8 embedding shards" in caplog.text
    assert str(work) in caplog.text
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["lock", "state.json", "prompts.arrow", "clean_stats.json", "minilm", "clip", "keep.npy", "fragments.arrow",
         "fragments.json", "fragments_minilm", "fragments_clip"]
        + (["kept.arrow"] if (work / "kept.arrow").exists() else []))
    assert not list(work.rglob(".*tmp*")) and not (work / "exact_dedup").exists()


def test_failure_before_any_resumable_work_leaves_nothing(capsys, tmp_path, clip_spec, monkeypatch, minilm):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "load_minilm",
                        lambda *a, **kw: pytest.fail("a model was loaded for an empty corpus"))
    code, _, err = run(capsys, "build", "--prompts", blank, "--out", tmp_path / "s", "--clip", clip_spec, "-q")
    assert_one_line_error(code, err, "--prompts: no usable prompts in")  # before any model is loaded
    assert tree(tmp_path) == ["blank.txt"]
    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "load_minilm", lambda *a, **kw: minilm)

    def broken(self):
        raise InputError("the corpus broke while it was read")
        yield

    monkeypatch.setattr(indexer.exact_dedup.ExactDedup, "batches", broken)
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", tmp_path / "s", "--clip",
                       clip_spec, "-q")
    assert_one_line_error(code, err, "the corpus broke while it was read; nothing was kept")
    assert tree(tmp_path) == ["blank.txt", "c.txt"]


def test_models_are_loaded_before_the_corpus_is_read(capsys, tmp_path, clip_spec, monkeypatch):
    monkeypatch.setattr(indexer.exact_dedup, "iter_batches", lambda s, names: pytest.fail("the corpus was read"))
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", tmp_path / "s", "--clip",
                       clip_spec, "--minilm", tmp_path / "no-such-model", "-q")
    assert_one_line_error(code, err, "--minilm: could not load the MiniLM model")
    assert tree(tmp_path) == ["c.txt"]


def test_orphaned_staging_folders_are_cleaned_by_the_next_build(tmp_path, build_config, clip_encoder, minilm):
    out = tmp_path / "store"
    for name in (".store.tmp-deadbeef", ".store.old-0badf00d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clip.faiss").write_bytes(b"x" * 1000)
    (tmp_path / ".other.tmp-12345678").mkdir()  # another store's: not ours to remove
    indexer.build([small_corpus(tmp_path, 20)], out, config=build_config, clip=clip_encoder, minilm=minilm,
                  progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-12345678", "c.txt", "store"]


def test_clean_discards_resumable_work(tmp_path, build_config, clip_encoder, minilm):
    from .test_build_store import Boom, FailingEncoder

    corpus = small_corpus(tmp_path, 300, offset=1200)
    out = tmp_path / "store"
    with pytest.raises(Boom):
        indexer.build([corpus], out, config=build_config, clip=FailingEncoder(clip_encoder, 4), minilm=minilm,
                      progress=False)
    counting = FailingEncoder(clip_encoder, -1)
    indexer.build([corpus], out, config=build_config, clip=counting, minilm=minilm, progress=False, clean=True)
    store = index_store.open_store(out)
    # everything embedded again: the prompts and the fragment vocabulary, in batches of 64
    assert counting.calls == -(-store.rows // 64) + -(-len(store.fragments) // 64)


def test_disk_full_while_writing_is_one_line_naming_what_was_kept(capsys, tmp_path, clip_spec, monkeypatch):
    def full(*a, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / ".s.tmp-1" / "clip.faiss"))

    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "build_index", full)  # the module, not the function
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 30), "--out", tmp_path / "s", "--clip",
                       clip_spec, "--shard-size", 16, "-q")
    assert_one_line_error(code, err, "--out: the disk filled up writing")
    # MiniLM and CLIP text 2 shards each, the fragment vocabulary 1 + 1
    assert "clip.faiss" in err and "resumable: the deduplicated prompts and 6 of 6 embedding shards" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.build", "c.txt"]


def test_outputs_are_checked_writable_before_any_work(cli_store_path, capsys, tmp_path, monkeypatch):
    need_data()
    from nearest_prompt.retriever import api

    monkeypatch.setattr(api.Retriever, "embed_images", lambda *a, **k: pytest.fail("work started"))
    img = KAGGLE / "images" / "20057f34d.png"
    code, _, err = run(capsys, "predict", "--index", cli_store_path, img, "--out", "/proc/np-test/sub.csv", "-q")
    assert_one_line_error(code, err, "--out: cannot write /proc/np-test/sub.csv")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "eval", "--index", cli_store_path, "--pairs", KAGGLE / "prompts.csv", "--report",
                       blocker / "r.json", "-q")
    assert_one_line_error(code, err, "--report: cannot write")


# -- integrity -------------------------------------------------------------------------------------
def _copy(store_dir, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(store_dir, s)
    return s


def test_manifest_has_block_checksums_and_verify_names_the_block(cli_store_path, capsys, tmp_path):
    s = _copy(cli_store_path, tmp_path)
    m = json.loads((s / MANIFEST).read_text())
    assert all(f["block_bytes"] == 64 << 20 and len(f["blocks"]) == 1 for f in m["files"].values())
    data = bytearray((s / MINILM).read_bytes())
    data[-3] ^= 0x40
    (s / MINILM).write_bytes(bytes(data))
    code, _, err = run(capsys, "info", "--index", s, "--verify")
    assert_one_line_error(code, err, "minilm.npy is corrupt (checksum mismatch in block 0 of 1")


def test_sampled_block_check_at_open_for_large_files(cli_store_path, tmp_path, monkeypatch):
    from nearest_prompt.index_store import reader as reader
    s = _copy(cli_store_path, tmp_path)
    monkeypatch.setattr(reader, "FULL_CHECK_MAX_BYTES", 0)  # every file "large": only sampled blocks
    index_store.open_store(s)
    data = bytearray((s / CLIP_INDEX).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (s / CLIP_INDEX).write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"clip.faiss is corrupt \(checksum mismatch in block 0"):
        index_store.open_store(s)


def test_impossible_search_scores_are_an_error_not_an_answer(cli_store_path, clip_encoder, tmp_path):
    s = _copy(cli_store_path, tmp_path)
    store = index_store.open_store(s)
    d, rows = store.indexes["clip"].d, store.rows
    data = bytearray((s / CLIP_INDEX).read_bytes())
    start = len(data) - rows * d * 4  # a flat index's vectors end the file
    data[start:start + 4] = np.float32(118.65).tobytes()  # row 0, dimension 0
    (s / CLIP_INDEX).write_bytes(bytes(data))
    r = Retriever.open(s, clip=clip_encoder, verify="size")
    q = np.zeros((1, d), dtype=np.float32)
    q[0, 0] = 1.0
    with pytest.raises(StoreError, match=r"clip.faiss returned similarity 118\.6.*info --index .* --verify"):
        r.search(q, k=3)


def test_non_finite_minilm_rows_are_an_error(cli_store_path, clip_encoder, tmp_path):
    s = _copy(cli_store_path, tmp_path)
    arr = np.load(s / MINILM, mmap_mode="r+")
    arr[:] = np.nan
    arr.flush()
    del arr
    r = Retriever.open(s, clip=clip_encoder, verify="size")
    with pytest.raises(StoreError, match="not finite.*minilm.npy is damaged.*--verify"):
        r.predict(r.embed_texts(["a castle"]), k=5)


# -- readers and terminal output --------------------------------------------------------------------
def test_csv_with_an_unterminated_quote_is_an_error_with_its_line(capsys, tmp_path, clip_spec):
    bad = tmp_path / "p.csv"
    bad.write_text('prompt\na cat\n"a dog, 4k\nnext prompt\nlast one\n')
    code, _, err = run(capsys, "build", "--prompts", bad, "--out", tmp_path / "s", "--clip", clip_spec, "-q")
    assert_one_line_error(code, err, f"{bad}:3: malformed CSV")
    assert "never closes" in err


def test_bare_carriage_return_does_not_split_a_text_prompt(tmp_path):
    from nearest_prompt.indexer.readers import check_sources, iter_values

    f = tmp_path / "p.txt"
    f.write_bytes(b"a red\rapple\r\nsecond prompt\nthird\n")
    values = [v for batch in iter_values(check_sources([f])[0]) for v in batch]
    assert [clean_prompt(v) for v in values] == ["a red apple", "second prompt", "third"]


def test_cleaning_strips_control_characters_and_escapes():
    assert clean_prompt("a \x1b[31mred\x1b[0m cat\x07\x00, 4k") == "a red cat, 4k"
    assert clean_prompt("\x1b]0;title\x07a cat\x9b") == "a cat"
    assert clean_prompt("tab\there\u200d") == "tab here\u200d"  # zero-width joiner (emoji) kept
    assert printable("ok \x1b[2J\n") == "ok \\x1b[2J\\n"


def test_query_escapes_what_a_terminal_would_run(capsys, tmp_path, build_config, clip_encoder, minilm):
    from dataclasses import replace

    out = tmp_path / "s"
    indexer.build([small_corpus(tmp_path, 10)], out, config=replace(build_config, near_dup_threshold=None),
                  clip=clip_encoder, minilm=minilm, progress=False)
    code, stdout, _ = run(capsys, "query", "--index", out, "--text", "evil \x1b[2J text", "--k", 2, "--clip",
                          build_config.clip_model, "-q")
    assert code == 0 and "\x1b" not in stdout and "\\x1b[2J" in stdout


# -- images -----------------------------------------------------------------------------------------
def test_folder_layout_of_a_pairs_set_names_its_subfolder(capsys, tmp_path, cli_store_path):
    need_data()
    code, _, err = run(capsys, "query", "--index", cli_store_path, KAGGLE, "-q")
    assert_one_line_error(code, err, "no usable images in")
    files = sorted(p for p in KAGGLE.iterdir() if p.is_file())  # prompts.csv and the like
    assert f"(skipped {len(files)} file(s) not an image, e.g. {files[0]}: not an image" in err
    assert "it has subfolders (images)" in err and "--recursive" in err
    code, out, err = run(capsys, "query", "--index", cli_store_path, KAGGLE, "--recursive", "--k", 1, "-q")
    assert code == 0 and out.count("image ") == len(list((KAGGLE / "images").glob("*.png"))) == 7
    assert f"skipped {len(files)} file(s): {len(files)} file(s) not an image, e.g." in err


def test_skipped_reasons_are_counted_by_kind(capsys, tmp_path, cli_store_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20)).save(folder / f"big{i}.png")
    (folder / "a.txt").write_text("x")
    code, _, err = run(capsys, "query", "--index", cli_store_path, folder, "--max-pixels", 10, "-q")
    assert_one_line_error(code, err, "no usable images")
    assert "3 file(s) over the pixel limit, e.g." in err and "1 file(s) not an image, e.g." in err
    assert "--max-pixels" in err


# -- model paths --------------------------------------------------------------------------------------
def test_local_dir_beside_the_store_is_recorded_relative(capsys, tmp_path, tiny_clip_dir, build_config, minilm):
    from dataclasses import replace

    site = tmp_path / "site"
    shutil.copytree(tiny_clip_dir, site / "clip")
    corpus = small_corpus(tmp_path, 12)
    indexer.build([corpus], site / "store", config=replace(build_config, clip_model=f"local-dir:{site / 'clip'}"),
                  minilm=minilm, progress=False)
    assert json.loads((site / "store" / MANIFEST).read_text())["spaces"]["clip"]["model"]["model"] == "local-dir:../clip"
    moved = tmp_path / "elsewhere"
    shutil.move(site, moved)  # the store and its model folder travel together
    code, out, err = run(capsys, "query", "--index", moved / "store", "--text", "a cat", "--k", 2, "-q")
    assert code == 0, err
    code, _, err = run(capsys, "eval", "--index", moved / "store", "--text-oracle", "--prompts", corpus, "--k", 3,
                       "--report", tmp_path / "r.json", "--device", "cpu", "--search-backend", "faiss", "-q")
    assert code == 0, err


def test_eval_takes_clip_like_query(capsys, tmp_path, cli_store_path, tiny_clip_dir):
    need_data()
    s = _copy(cli_store_path, tmp_path)
    m = json.loads((s / MANIFEST).read_text())
    m["spaces"]["clip"]["model"]["model"] = f"local-dir:{tmp_path / 'gone'}"
    (s / MANIFEST).write_text(json.dumps(m))
    args = ["eval", "--index", s, "--pairs", KAGGLE / "prompts.csv", "--k", 5, "--report", tmp_path / "r.json", "-q"]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "--clip: the CLIP model this index was built with")
    code, _, err = run(capsys, *args, "--clip", f"local-dir:{tiny_clip_dir}")
    assert code == 0, err


# -- every command, bad input: one line, status 2, nothing left behind ---------------------------------
@pytest.fixture
def bad_inputs(tmp_path, cli_store_path):
    need_data()
    t = tmp_path / "in"
    t.mkdir()
    (t / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (t / "latin1.csv").write_bytes("imgId,caption\n20057f34d,caf\xe9\n".encode("latin-1"))
    (t / "pairs_latin1.csv").write_bytes("image,prompt\n20057f34d.png,caf\xe9\n".encode("latin-1"))
    (t / "quote.csv").write_text('prompt\n"never closed\nmore\n')
    (t / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (t / "corrupt.ids.txt").write_text("a\nb\n")
    np.save(t / "short.npy", np.ones((1, 384), dtype=np.float32))
    (t / "short.ids.txt").write_text("a\nb\n")
    np.save(t / "ok.npy", np.ones((2, 384), dtype=np.float32))
    (t / "ok.ids.txt").write_text("a\nb\n")
    (t / "conf.csv").write_text("imgId,confidence,top_score\na,high,0\nb,0.5,0\n")
    (t / "head1.csv").write_text("imgId_eId,val\n")
    (t / "head2.csv").write_text("imgId_eId,val\n")
    (t / "bomb.png").write_bytes(b"")
    Image.new("RGB", (40, 40)).save(t / "big.png")
    rows = [f"x_{e},0.5" for e in range(384)]
    (t / "twice.csv").write_text("\n".join(["imgId_eId,val", *rows, *[f"y_{e},0.5" for e in range(384)], *rows]) + "\n")
    (t / "once.csv").write_text("\n".join(["imgId_eId,val", *rows, *[f"y_{e},0.5" for e in range(384)]]) + "\n")
    np.save(t / "dup.npy", np.ones((3, 384), dtype=np.float32))
    (t / "dup.ids.txt").write_text("a\nb\na\n")
    (t / "conf_dup.csv").write_text("imgId,confidence,top_score\na,0.5,0\nb,0.5,0\na,0.7,0\n")
    (t / "conf_negative.csv").write_text("imgId,confidence,top_score\na,-0.2,0\nb,0.5,0\n")
    (t / "conf_above.csv").write_text("imgId,confidence,top_score\na,1.5,0\nb,0.5,0\n")
    (t / "caps_dup.csv").write_text("imgId,caption\n20057f34d,a crater\n20057f34d,a moon\n")
    (t / "empty.txt").write_text("\n   \n\n")
    (t / "semicolon.csv").write_text("text;source\na red fox, 4k;lexica\n")
    return t


BAD = {  # name: (argv after the store is filled in, the text the one line must hold)
    "build_manifest_folder": (["build", "--prompts", "{in}/latin1.txt", "--out", "{in}", "--clip", "{clip}"],
                              "--out: "),
    "build_not_utf8": (["build", "--prompts", "{in}/latin1.txt", "--out", "{tmp}/s", "--clip", "{clip}"], "not UTF-8"),
    "build_quote": (["build", "--prompts", "{in}/quote.csv", "--out", "{tmp}/s", "--clip", "{clip}"], "quote.csv:2:"),
    "build_device": (["build", "--prompts", "{in}/quote.csv", "--out", "{tmp}/s", "--clip", "{clip}", "--device", "tpu"],
                     "--device: 'tpu' is not a torch device"),
    "build_limit": (["build", "--prompts", "{in}/quote.csv", "--out", "{tmp}/s", "--limit", "0"], "--limit: must be"),
    "query_k": (["query", "--index", "{store}", "--text", "x", "--k", "100000"], "--k: k=100000 is larger"),
    "query_pixels": (["query", "--index", "{store}", "{in}/big.png", "--max-pixels", "10"], "--max-pixels: "),
    "query_empty_image": (["query", "--index", "{store}", "{in}/bomb.png"], "not an image"),
    "query_device": (["query", "--index", "{store}", "--text", "x", "--device", "tpu"], "--device: "),
    "predict_captions_utf8": (["predict", "--index", "{store}", "{kaggle}", "--out", "{tmp}/p.csv",
                               "--captions", "{in}/latin1.csv"], "--captions: "),
    "predict_out_dir": (["predict", "--index", "{store}", "{kaggle}", "--out", "{in}"], "--out: "),
    "predict_suffix": (["predict", "--index", "{store}", "{kaggle}", "--out", "{tmp}/p.txt"], "use a .csv"),
    "eval_limit_zero": (["eval", "--index", "{store}", "--text-oracle", "--prompts", "{in}/latin1.txt", "--limit", "0"],
                        "--limit: must be at least 1"),
    "eval_limit_negative": (["eval", "--index", "{store}", "--text-oracle", "--prompts", "{in}/latin1.txt", "--limit",
                             "-3"], "--limit: must be at least 1"),
    "eval_pairs_utf8": (["eval", "--index", "{store}", "--pairs", "{in}/pairs_latin1.csv", "--report", "{tmp}/r.json"],
                        "--pairs: "),
    "eval_prompts_utf8": (["eval", "--index", "{store}", "--text-oracle", "--prompts", "{in}/latin1.txt", "--report",
                           "{tmp}/r.json"], "not UTF-8"),
    "blend_corrupt_npy": (["blend", "{in}/corrupt.npy", "{in}/ok.npy", "--out", "{tmp}/b.csv"], "not a readable .npy"),
    "blend_short_npy": (["blend", "{in}/short.npy", "{in}/ok.npy", "--out", "{tmp}/b.csv"], "shape (1, 384)"),
    "blend_confidence": (["blend", "{in}/ok.npy", "{in}/ok.npy", "--confidence", "{in}/conf.csv", "none", "--out",
                          "{tmp}/b.csv"], "--confidence: "),
    "blend_header_only": (["blend", "{in}/head1.csv", "{in}/head2.csv", "--out", "{tmp}/b.csv"], "holds no predictions"),
    "info_missing": (["info", "--index", "{tmp}/nothing"], "no index store at"),
    "interrogate_k": (["interrogate", "--index", "{store}", "{kaggle}", "--k", "100000"], "--k: k=100000 is larger"),
    "interrogate_pixels": (["interrogate", "--index", "{store}", "{in}/big.png", "--max-pixels", "10"], "--max-pixels: "),
    "interrogate_empty_image": (["interrogate", "--index", "{store}", "{in}/bomb.png"], "not an image"),
    "interrogate_captions_utf8": (["interrogate", "--index", "{store}", "{kaggle}", "--captions", "{in}/latin1.csv"],
                                  "--captions: "),
    "interrogate_fragments": (["interrogate", "--index", "{store}", "{kaggle}", "--fragments", "-1"], "--fragments: "),
    "interrogate_missing": (["interrogate", "--index", "{tmp}/nothing", "{kaggle}"], "no index store at"),
    "build_max_fragments": (["build", "--prompts", "{in}/quote.csv", "--out", "{tmp}/s", "--max-fragments", "-1"],
                            "--max-fragments: "),
    "build_empty_text": (["build", "--prompts", "{in}/empty.txt", "--out", "{tmp}/s", "--clip", "{clip}"],
                         "--prompts: no usable prompts in"),
    "build_no_column_any_delimiter": (["build", "--prompts", "{in}/semicolon.csv", "--out", "{tmp}/s"],
                                      "no column 'prompt' in the header (text;source), read separated by any of"),
    "build_wrong_delimiter": (["build", "--prompts", "{in}/semicolon.csv", "--out", "{tmp}/s", "--column", "text",
                               "--delimiter", ","], "read comma-separated"),
    "build_offline_hub": (["build", "--prompts", "{in}/semicolon.csv", "--column", "text", "--out", "{tmp}/s",
                           "--clip", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
                          "--clip: could not download CLIP weights ViT-B-32 / laion2b_s34b_b79k: HF_HUB_OFFLINE is set"),
    "blend_rows_twice": (["blend", "{in}/twice.csv", "{in}/once.csv", "--out", "{tmp}/b.csv"],
                         "twice.csv:770: x_0 again (first on line 2): image 'x' is given twice"),
    "blend_ids_twice": (["blend", "{in}/dup.npy", "{in}/ok.npy", "--out", "{tmp}/b.csv"],
                        "dup.ids.txt:3: image id 'a' again (first on line 1)"),
    "blend_confidence_twice": (["blend", "{in}/ok.npy", "{in}/ok.npy", "--confidence", "{in}/conf_dup.csv", "none",
                                "--out", "{tmp}/b.csv"], "conf_dup.csv:4: a confidence for image 'a' again (first on line 2)"),
    "blend_confidence_negative": (["blend", "{in}/ok.npy", "{in}/ok.npy", "--confidence", "{in}/conf_negative.csv",
                                   "none", "--out", "{tmp}/b.csv"], "is -0.2; a confidence is a number in [0, 1]"),
    "blend_confidence_above_one": (["blend", "{in}/ok.npy", "{in}/ok.npy", "--confidence", "{in}/conf_above.csv",
                                    "none", "--out", "{tmp}/b.csv"], "is 1.5; a confidence is a number in [0, 1]"),
    "blend_out_is_an_input": (["blend", "{in}/ok.npy", "{in}/once.csv", "--out", "{in}/once.csv"],
                              "--out: {in}/once.csv is one of the inputs"),
    "blend_out_is_an_input_npy": (["blend", "{in}/ok.npy", "{in}/ok.npy", "--out", "{in}/ok.npy"], "one of the inputs"),
    "predict_captions_twice": (["predict", "--index", "{store}", "{kaggle}", "--out", "{tmp}/p.csv", "--captions",
                                "{in}/caps_dup.csv"], "caps_dup.csv:3: a caption for image '20057f34d' again"),
    "query_empty_text": (["query", "--index", "{store}", "--text", ""], "--text: text 1 of 1 is empty"),
    "query_blank_text": (["query", "--index", "{store}", "--text", "a fox", "--text", "  "], "--text: text 2 of 2 is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_table(case, bad_inputs, cli_store_path, clip_spec, capsys, tmp_path):
    argv, match = BAD[case]
    subst = {"{in}": str(bad_inputs), "{tmp}": str(tmp_path), "{store}": str(cli_store_path), "{clip}": clip_spec,
             "{kaggle}": str(KAGGLE / "images")}
    argv = [a if a not in subst and not any(k in a for k in subst) else
            next(a.replace(k, v) for k, v in subst.items() if k in a) for a in argv]
    match = next((match.replace(k, v) for k, v in subst.items() if k in match), match)
    (bad_inputs / MANIFEST).write_text('{"name": "not a store"}')
    before, store_before = tree(tmp_path), tree(cli_store_path)
    code, _, err = run(capsys, *argv, "-q") if argv[0] != "build" or "--limit" not in argv else run(capsys, *argv)
    assert_one_line_error(code, err, match)
    assert tree(tmp_path) == before and tree(cli_store_path) == store_before  # nothing new, anywhere


def test_a_store_of_another_format_version_is_still_a_store_to_rebuild(store_dir, tmp_path):
    old = _copy(store_dir, tmp_path)
    m = json.loads((old / MANIFEST).read_text())
    m["format_version"] = 0
    (old / MANIFEST).write_text(json.dumps(m))
    assert index_store.is_store(old)  # replaceable by a build
    with pytest.raises(StoreError, match="format version 0 is not supported"):
        index_store.open_store(old)  # but not readable


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this machine lets the tests mount one (root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_disk_that_fills_anyway_is_one_line(capsys, small_disk, tmp_path, clip_spec, monkeypatch):
    """The free-space check switched off, so that a real disk fills mid-build."""
    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "check_free_space", lambda *a, **kw: None)
    corpus = small_corpus(tmp_path, 400, offset=100)
    code, _, err = run(capsys, "build", "--prompts", corpus, "--out", small_disk / "s", "--clip", clip_spec,
                       "--shard-size", 100, "-q")
    assert_one_line_error(code, err, "--out: the disk filled up writing")
    assert not (small_disk / "s").exists() and not list(small_disk.glob(".s.tmp-*"))


def test_faiss_write_errors_count_as_a_full_disk():
    from nearest_prompt.indexer.build import _disk_full

    assert _disk_full(RuntimeError("Error in faiss::BufferedIOWriter: write error (No space left on device)"))
    assert _disk_full(OSError(28, "No space left on device", "/x/clip.faiss")) == "/x/clip.faiss"
    assert _disk_full(RuntimeError("something else")) is None


# -- the faults a newcomer meets first -----------------------------------------------------------------
def test_a_rebuild_never_deletes_what_the_store_did_not_write(capsys, tmp_path, cli_store_path, clip_spec):
    store = tmp_path / "store"
    shutil.copytree(cli_store_path, store)
    (store / "NOTES.txt").write_text("my notes")
    (store / "myruns").mkdir()
    (store / "myruns" / "run1.json").write_text("{}")
    before = tree(store)
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 10), "--out", store, "--clip", clip_spec,
                       "-q")
    assert_one_line_error(code, err, f"--out: {store} holds files the index store did not write (NOTES.txt, myruns/)")
    assert tree(store) == before and (store / "NOTES.txt").read_text() == "my notes"
    shutil.rmtree(store / "myruns")
    (store / "NOTES.txt").unlink()
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 10), "--out", store, "--clip", clip_spec,
                       "-q")
    assert code == 0, err  # a store holding only its own files is rebuilt in place


def test_a_second_build_is_refused_before_any_model_loads(capsys, tmp_path, clip_spec, monkeypatch):
    from nearest_prompt.indexer.workdir import WorkDir

    out = tmp_path / "s"
    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "load_minilm",
                        lambda *a, **kw: pytest.fail("a model was loaded although the build could not run"))
    with WorkDir(out):  # another build holds out
        code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", out, "--clip", clip_spec,
                           "-q")
    assert_one_line_error(code, err, f"--out: another build is writing {out} (pid {os.getpid()}")


def test_a_read_only_place_for_the_store_is_one_line_before_any_model_loads(capsys, tmp_path, clip_spec, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "load_minilm",
                            lambda *a, **kw: pytest.fail("a model was loaded for a store that cannot be written"))
        code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", ro / "new" / "s",
                           "--clip", clip_spec, "-q")
        assert_one_line_error(code, err, f"--out: cannot write {ro / 'new'}: Read-only file system in {ro}")
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_a_disk_that_fills_while_embedding_names_the_shard(capsys, tmp_path, clip_spec, monkeypatch):
    """numpy reports a short write as "N requested and M written", without an errno: still a full disk."""
    real_save = np.save

    def short_write(file, arr, *a, **kw):
        if "minilm" in str(file) or "minilm" in str(getattr(file, "name", "")):
            raise OSError(f"{arr.nbytes} requested and 4032 written")
        return real_save(file, arr, *a, **kw)

    monkeypatch.setattr(np, "save", short_write)
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 30), "--out", tmp_path / "s", "--clip",
                       clip_spec, "-q")
    assert_one_line_error(code, err, "--out: the disk filled up writing")
    assert "/minilm/00000.npy" in err and "resumable" not in err.split("writing", 1)[0], err


def test_predict_outputs_say_where_they_go_and_never_overwrite_each_other(capsys, tmp_path, cli_store_path):
    need_data()
    img = KAGGLE / "images" / "20057f34d.png"
    new_folder = tmp_path / "new" / "dir"
    code, _, err = run(capsys, "predict", "--index", cli_store_path, img, "--out", new_folder / "sub.csv", "--k", 5)
    assert code == 0 and f"created the folder {new_folder}" in err, err
    code, _, err = run(capsys, "predict", "--index", cli_store_path, img, "--out", new_folder / "sub.npy", "--k", 5, "-q")
    assert code == 0, err
    assert sorted(p.name for p in new_folder.iterdir()) == ["sub.csv", "sub.csv.confidence.csv", "sub.ids.txt",
                                                            "sub.npy", "sub.npy.confidence.csv"]


def test_a_default_k_is_cut_to_a_small_store_and_a_given_one_is_checked(capsys, tmp_path, clip_spec):
    need_data()
    out = tmp_path / "five"
    assert run(capsys, "build", "--prompts", small_corpus(tmp_path, 5, offset=4000), "--out", out, "--clip", clip_spec,
               "--no-near-dedup", "-q")[0] == 0
    code, out_text, err = run(capsys, "query", "--index", out, "--text", "a castle", "--json")
    assert code == 0, err
    assert len(json.loads(out_text)["results"][0]["neighbors"]) == 5
    assert "the index holds 5 prompts, fewer than the default --k 10: using --k 5" in err
    code, _, err = run(capsys, "predict", "--index", out, KAGGLE / "images" / "20057f34d.png", "--out",
                       tmp_path / "p.npy")
    assert code == 0 and "fewer than the default --k 100: using --k 5" in err, err
    code, _, err = run(capsys, "query", "--index", out, "--text", "a castle", "--k", "10")
    assert_one_line_error(code, err, "--k: k=10 is larger than the index (5 prompts)")


def test_a_hub_that_cannot_be_reached_fails_in_seconds(capsys, tmp_path, monkeypatch):
    from nearest_prompt.encoders import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in hub.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # a name that never resolves
    code, _, err = run(capsys, "build", "--prompts", small_corpus(tmp_path, 5), "--out", tmp_path / "s", "--clip",
                       "ViT-B-32", "--pretrained", "laion2b_s34b_b79k", "-q")
    assert_one_line_error(code, err, "--clip: could not download CLIP weights ViT-B-32 / laion2b_s34b_b79k: "
                                     "hub.invalid cannot be reached")
    assert tree(tmp_path) == ["c.txt"]
