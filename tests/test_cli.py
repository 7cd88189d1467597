"""The nearest-prompt command end to end, and every bad input: one line, exit 2, nothing written."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nearest_prompt.evaluation.submission import read_submission
from nearest_prompt.index_store.format import CLIP_INDEX, MANIFEST, MINILM

from .conftest import KAGGLE, assert_one_line_error, corpus_slice, need_data, run


@pytest.fixture
def cli_store(cli_store_path):
    return cli_store_path


def test_build_query_predict_info(cli_store, capsys, tmp_path, clip_encoder):
    need_data()
    img = KAGGLE / "images" / "20057f34d.png"
    code, out, _ = run(capsys, "query", "--index", cli_store, img, "--k", 3, "--json", "-q")
    assert code == 0
    res = json.loads(out)
    assert res["k"] == 3 and len(res["results"]) == 1
    nbrs = res["results"][0]["neighbors"]
    assert [n["rank"] for n in nbrs] == [1, 2, 3] and all(isinstance(n["prompt"], str) for n in nbrs)
    assert nbrs[0]["score"] >= nbrs[1]["score"] >= nbrs[2]["score"]

    prompt = corpus_slice(60, offset=3000)[7]
    code, out, _ = run(capsys, "query", "--index", cli_store, "--text", prompt, "--k", 2, "-q")
    assert code == 0 and out.splitlines()[1].split(None, 2)[2] == prompt

    sub = tmp_path / "out" / "sub.csv"
    code, out, _ = run(capsys, "predict", "--index", cli_store, KAGGLE / "images", "--out", sub, "--k", 20, "-q")
    assert code == 0
    ids, vecs = read_submission(sub)
    assert sorted(ids) == sorted(p.stem for p in (KAGGLE / "images").glob("*.png"))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    conf = (tmp_path / "out" / "sub.csv.confidence.csv").read_text().splitlines()
    assert conf[0] == "imgId,confidence,top_score" and len(conf) == 8

    npy = tmp_path / "pred.npy"
    code, _, _ = run(capsys, "predict", "--index", cli_store, img, "--out", npy, "--k", 20, "-q")
    assert code == 0
    assert np.load(npy).shape == (1, 384)
    assert (tmp_path / "pred.ids.txt").read_text() == "20057f34d\n"
    # the wiring, against a blend computed by hand: numpy brute force over the stored CLIP vectors, the
    # documented weights 1 / ((1 - s)^6 + 1e-6), the MiniLM rows of the 20 best, normalised
    from nearest_prompt.encoders.images import load_image
    from nearest_prompt.index_store import open_store

    store = open_store(cli_store)
    q = clip_encoder.encode_images([load_image(img)])[0]
    scores = store.indexes["clip"].reconstruct_n(0, store.rows) @ q
    best = np.argsort(-scores, kind="stable")[:20]
    w = 1.0 / ((1.0 - scores[best].astype(np.float64)) ** 6 + 1e-6)
    v = (w[:, None] * store.minilm[best].astype(np.float64)).sum(0)
    np.testing.assert_allclose(np.load(npy)[0], v / np.linalg.norm(v), atol=2e-6)
    conf = np.linalg.norm(v) / w.sum()
    row = (tmp_path / "pred.npy.confidence.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "20057f34d" and abs(float(row[1]) - conf) < 2e-6 and abs(float(row[2]) - scores[best[0]]) < 2e-6

    code, out, _ = run(capsys, "info", "--index", cli_store, "--verify")
    assert code == 0 and "bytes of disk a prompt" in out and "all verified" in out
    assert "clip index memory-mapped, minilm index memory-mapped" in out
    code, out, _ = run(capsys, "info", "--index", cli_store, "--json")
    info = json.loads(out)
    assert info["rows"] > 0 and info["bytes_per_prompt"] > 0
    assert info["memory_mapped"] == {"clip": True, "minilm": True}


def test_console_script_error_has_no_traceback(tmp_path):
    exe = shutil.which("nearest-prompt") or str(__import__("pathlib").Path(sys.executable).parent / "nearest-prompt")
    p = subprocess.run([exe, "query", "--index", str(tmp_path / "missing"), "--text", "x"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("nearest-prompt: error: no index store at")
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


# -- build: bad input ---------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "empty", "column", "clip_name", "threshold", "file_as_clip"])
def test_build_bad_input(case, capsys, tmp_path, clip_spec):
    good = tmp_path / "good.txt"
    good.write_text("a red apple\n")
    args = {"missing": ["--prompts", tmp_path / "nope.txt", "--clip", clip_spec],
            "empty": ["--prompts", tmp_path / "blank.txt", "--clip", clip_spec],
            "column": ["--prompts", tmp_path / "c.csv", "--clip", clip_spec],
            "clip_name": ["--prompts", good, "--clip", "ViT-Bogus-99"],
            "threshold": ["--prompts", good, "--clip", clip_spec, "--near-dup-threshold", "1.5"],
            "file_as_clip": ["--prompts", good, "--clip", good]}[case]
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    (tmp_path / "c.csv").write_text("text\nhello\n")
    expect = {"missing": "no such prompt file", "empty": "no usable prompts", "column": "no column 'prompt'",
              "clip_name": "unknown CLIP model 'ViT-Bogus-99'", "threshold": "near-dup-threshold",
              "file_as_clip": "is a file"}[case]
    out = tmp_path / "store"
    code, _, err = run(capsys, "build", "--out", out, "-q", *args)
    assert_one_line_error(code, err, expect)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] in ([], [".store.build"])


def test_build_weights_that_cannot_be_downloaded(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = tmp_path / "good.txt"
    good.write_text("a red apple\n")
    code, _, err = run(capsys, "build", "--prompts", good, "--out", tmp_path / "s", "--clip", "ViT-B-32",
                       "--pretrained", "laion2b_s34b_b79k", "-q")
    assert_one_line_error(code, err, "could not download CLIP weights")
    assert "local-dir:" in err and "--pretrained FILE" in err
    code, _, err = run(capsys, "build", "--prompts", good, "--out", tmp_path / "s", "--clip", "ViT-B-32", "-q")
    assert_one_line_error(code, err, "--pretrained: clip=ViT-B-32 needs pretrained")


def test_build_refuses_to_replace_a_non_store_directory(capsys, tmp_path, clip_spec):
    good = tmp_path / "good.txt"
    good.write_text("a red apple\n")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, "build", "--prompts", good, "--out", precious, "--clip", clip_spec, "-q")
    assert_one_line_error(code, err, "not an index store")
    assert (precious / "thesis.tex").read_text() == "years of work"


# -- query / predict: bad input -------------------------------------------------------
def _broken_store(cli_store, tmp_path, how):
    s = tmp_path / "s"
    shutil.copytree(cli_store, s)
    if how == "no_manifest":
        (s / MANIFEST).unlink()
    elif how == "corrupt_manifest":
        (s / MANIFEST).write_text("{ not json")
    elif how == "truncated":
        data = (s / MINILM).read_bytes()
        (s / MINILM).write_bytes(data[: len(data) - 100])
    elif how == "corrupt":
        data = bytearray((s / CLIP_INDEX).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (s / CLIP_INDEX).write_bytes(bytes(data))
    elif how == "newer":
        m = json.loads((s / MANIFEST).read_text())
        m["format_version"] = 99
        (s / MANIFEST).write_text(json.dumps(m))
    elif how == "missing_file":
        (s / CLIP_INDEX).unlink()
    return s


@pytest.mark.parametrize("how,match", [
    ("no_manifest", "no manifest.json"), ("corrupt_manifest", "manifest.json is corrupt"),
    ("truncated", "minilm.npy is truncated"), ("corrupt", "clip.faiss is corrupt (checksum"),
    ("newer", "format version 99 is not supported"), ("missing_file", "clip.faiss is missing"),
])
def test_broken_stores(how, match, cli_store, capsys, tmp_path):
    s = _broken_store(cli_store, tmp_path, how)
    code, _, err = run(capsys, "query", "--index", s, "--text", "a cat", "-q")
    assert_one_line_error(code, err, match)


def test_missing_store(capsys, tmp_path):
    code, _, err = run(capsys, "info", "--index", tmp_path / "nothing")
    assert_one_line_error(code, err, "no index store at")


def test_k_larger_than_index(cli_store, capsys):
    code, _, err = run(capsys, "query", "--index", cli_store, "--text", "a cat", "--k", 100000, "-q")
    assert_one_line_error(code, err, "larger than the index")


def test_query_needs_something(cli_store, capsys):
    code, _, err = run(capsys, "query", "--index", cli_store, "-q")
    assert_one_line_error(code, err, "nothing to query")


def test_predict_folder_skips_bad_files_and_reports(cli_store, capsys, tmp_path):
    need_data()
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(KAGGLE / "images" / "20057f34d.png", folder)
    (folder / "notes.txt").write_text("hello")
    data = (KAGGLE / "images" / "227ef0887.png").read_bytes()
    (folder / "trunc.png").write_bytes(data[:5000])
    Image.new("I;16", (16, 16), 300).save(folder / "deep.png")
    out = tmp_path / "p.csv"
    code, stdout, err = run(capsys, "predict", "--index", cli_store, folder, "--out", out, "--k", 5, "-q")
    assert code == 0, err
    ids, _ = read_submission(out)
    assert ids == ["20057f34d", "deep"]
    assert "skipped 2 file(s)" in err and "notes.txt" in err and "trunc.png" in err


def test_predict_bad_input(cli_store, capsys, tmp_path):
    need_data()
    img = KAGGLE / "images" / "20057f34d.png"
    code, _, err = run(capsys, "predict", "--index", cli_store, img, "--out", tmp_path / "p.txt", "-q")
    assert_one_line_error(code, err, "use a .csv")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("x")
    code, _, err = run(capsys, "predict", "--index", cli_store, bad, "--out", tmp_path / "p.csv", "-q")
    assert_one_line_error(code, err, "no usable images")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(img, other)
    code, _, err = run(capsys, "predict", "--index", cli_store, img, other, "--out", tmp_path / "p.csv", "-q")
    assert_one_line_error(code, err, "share the id")
    trunc = tmp_path / "t.png"
    trunc.write_bytes(img.read_bytes()[:4000])
    code, _, err = run(capsys, "predict", "--index", cli_store, trunc, "--out", tmp_path / "p.csv", "--k", 5, "-q")
    assert_one_line_error(code, err, "not a readable image")
    assert not (tmp_path / "p.csv").exists()


def test_query_with_other_clip_is_refused(cli_store, capsys, tmp_path):
    from devkit.tiny_clip import make_tiny_clip

    other = make_tiny_clip(tmp_path / "other", seed=7)
    code, _, err = run(capsys, "query", "--index", cli_store, "--text", "x", "--clip", f"local-dir:{other}", "-q")
    assert_one_line_error(code, err, "does not match the model this index was built with")


def test_store_built_with_unavailable_clip(cli_store, capsys, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(cli_store, s)
    m = json.loads((s / MANIFEST).read_text())
    m["spaces"]["clip"]["model"]["model"] = f"local-dir:{tmp_path / 'gone'}"
    (s / MANIFEST).write_text(json.dumps(m))
    code, _, err = run(capsys, "query", "--index", s, "--text", "x", "-q")
    assert_one_line_error(code, err, "cannot be loaded here")
