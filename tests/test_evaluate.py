"""Evaluation helpers, fusion and ensembles: oracles and golden values."""

import csv

import numpy as np
import pytest

from nearest_prompt.common.errors import InputError
from nearest_prompt.evaluation.ensemble import blend_predictions
from nearest_prompt.evaluation.evaluate import (
    CONSTANT_PROMPT,
    baselines,
    confidence_report,
    corpus_mean_vector,
    cosine,
    dedup_keys,
    first_clause,
    text_oracle_methods,
)
from nearest_prompt.evaluation.submission import read_submission
from nearest_prompt.retriever import Neighbors, Weighting, blend
from nearest_prompt.retriever.weighting import drop_neighbors, fuse

from .conftest import KAGGLE, need_data, unit


def test_cosine_and_first_clause(rng):
    a = rng.normal(size=(5, 8))
    np.testing.assert_allclose(cosine(a, 3 * a), 1.0)
    np.testing.assert_allclose(cosine(a, -a), -1.0)
    assert cosine(np.zeros((1, 8)), a[:1])[0] == 0.0
    assert first_clause("a cat, 4k, trending") == "a cat"
    assert first_clause(", odd") == ", odd"


def test_constant_prompt_baseline_on_official_embeddings(minilm):
    """Cross-check with the data README: the constant prompt scores ~0.10 on the 7 samples."""
    need_data()
    _, official = read_submission(KAGGLE / "sample_submission.csv")
    const = minilm.encode([CONSTANT_PROMPT])[0]
    scores = baselines(official, constant=const, corpus_mean=unit(np.ones(384)))[0].scores
    assert 0.08 < scores.mean() < 0.12


def test_confidence_report_oracle(rng):
    c = rng.uniform(size=500)
    s = 2 * c + 0.01 * rng.normal(size=500)
    rep = confidence_report(c, s)
    assert rep["pearson"] > 0.99 and rep["spearman"] > 0.99
    means = [b["mean_score"] for b in rep["buckets"]]
    assert means == sorted(means) and sum(b["n"] for b in rep["buckets"]) == 500
    assert confidence_report(np.ones(10), s[:10])["pearson"] is None


def test_corpus_mean_vector_chunks_equal_direct(rng):
    m = rng.normal(size=(1000, 16)).astype(np.float16)
    direct = m.astype(np.float64).sum(0)
    np.testing.assert_allclose(corpus_mean_vector(m, chunk=77), direct / np.linalg.norm(direct), atol=1e-6)


def test_drop_neighbors_keeps_order_and_pads():
    nb = Neighbors(np.array([[5, 3, 9, -1]]), np.array([[0.9, 0.8, 0.7, -np.inf]], np.float32))
    out = drop_neighbors(nb, np.array([[False, True, False, False]]), k=3)
    assert out.ids.tolist() == [[5, 9, -1]]
    assert out.scores[0, :2].tolist() == pytest.approx([0.9, 0.7]) and np.isneginf(out.scores[0, 2])


def test_text_oracle_excludes_exact_copies(rng):
    import faiss

    texts = ["a red fox", "A  red fox", "a blue whale", "a green frog", "a red fox in snow"]
    base = unit(rng.normal(size=(5, 384)))
    base[1] = base[0]  # an exact copy (case/whitespace) of row 0
    index = faiss.IndexFlatIP(384)
    index.add(base)
    keys = dedup_keys(texts)
    row_keys = lambda ids: np.where(ids >= 0, keys[np.maximum(ids, 0)], b"")  # noqa: E731
    truth = base[:1]
    methods = text_oracle_methods(truth, dedup_keys(["A RED FOX"]), index=index, minilm=base, row_keys=row_keys,
                                  k=2, weightings={"p": Weighting()})
    top1 = methods[0]
    assert top1.name == "top1_prompt" and top1.scores[0] < 0.99  # neither copy of the query may be used


def test_fuse_rules(rng):
    minilm = unit(rng.normal(size=(20, 384)))
    nb = Neighbors(np.array([[1, 2, 3]]), np.array([[0.9, 0.5, 0.2]], np.float32))
    empty = Neighbors(np.full((1, 3), -1), np.full((1, 3), -np.inf, np.float32))
    w = Weighting()
    np.testing.assert_allclose(fuse([(nb, 1.0), (empty, 5.0)], minilm, w).vectors, blend(nb, minilm, w).vectors,
                               atol=1e-6)
    np.testing.assert_allclose(fuse([(nb, 1.0), (nb, 3.0)], minilm, w).vectors, blend(nb, minilm, w).vectors,
                               atol=1e-6)
    other = Neighbors(np.array([[7]]), np.array([[0.3]], np.float32))
    fused = fuse([(nb, 1.0), (other, 1.0)], minilm, w)
    w_img = 1 / ((1 - np.array([0.9, 0.5, 0.2])) ** 6 + 1e-6)
    expect = unit((w_img / w_img.sum()) @ minilm[[1, 2, 3]] + 1.0 * minilm[7])  # each part sums to its weight
    np.testing.assert_allclose(fused.vectors[0], expect, atol=1e-5)
    with pytest.raises(InputError):
        fuse([(nb, -1.0)], minilm, w)


def test_blend_predictions(rng):
    a, b = unit(rng.normal(size=(4, 384))), unit(rng.normal(size=(4, 384)))
    np.testing.assert_allclose(blend_predictions([a, b]), unit(a + b), atol=1e-6)
    np.testing.assert_allclose(blend_predictions([a, 5 * b], weights=[1, 0]), a, atol=1e-6)
    conf = np.array([1.0, 0.0, 0.5, 1.0])
    out = blend_predictions([a, b], weights=[1, 1], confidences=[conf, None])
    np.testing.assert_allclose(out[1], b[1], atol=1e-6)  # zero confidence: the other model alone
    np.testing.assert_allclose(out[2], unit(0.5 * a[2] + b[2]), atol=1e-6)
    with pytest.raises(InputError):
        blend_predictions([a, b[:2]])
    with pytest.raises(InputError):
        blend_predictions([a, b], weights=[1])


@pytest.mark.slow
def test_eval_cli_pairs_and_text_routes(cli_store_path, capsys, tmp_path):
    import json

    from nearest_prompt.cli.main import main

    need_data()
    rep = tmp_path / "r" / "kaggle.json"
    assert main(["eval", "--index", str(cli_store_path), "--pairs", str(KAGGLE / "prompts.csv"), "--k", "20",
                 "--report", str(rep), "-q"]) == 0
    out = capsys.readouterr().out
    data = json.loads(rep.read_text())
    assert rep.with_suffix(".png").stat().st_size > 10_000
    assert set(data["summary"]) == {"constant_prompt", "corpus_mean", "top1_prompt", "power_p6", "softmax_t0.01",
                                    "composed_prompt"}
    assert len(data["items"]) == 7 and "power_p6" in out
    assert 0.08 < data["summary"]["constant_prompt"]["mean"] < 0.12

    held = tmp_path / "held.txt"
    from nearest_prompt.index_store import open_store

    stored = open_store(cli_store_path).prompts([0, 5, 9])
    held.write_text("\n".join(stored) + "\n")
    for mode in ("--text-oracle", "--text-degraded"):
        rep2 = tmp_path / f"{mode}.json"
        assert main(["eval", "--index", str(cli_store_path), mode, "--prompts", str(held), "--k", "10",
                     "--report", str(rep2), "-q"]) == 0
        summary = json.loads(rep2.read_text())["summary"]
        if mode == "--text-oracle":
            assert summary["top1_prompt"]["q90"] < 0.999  # the copy itself is excluded
        else:
            assert "clause_alone" in summary and "clause0.5+retrieval_power_p6" in summary
    capsys.readouterr()


def test_eval_cli_bad_input(cli_store_path, capsys, tmp_path):
    from nearest_prompt.cli.main import main

    from .conftest import assert_one_line_error

    code = main(["eval", "--index", str(cli_store_path), "--text-oracle", "-q"])
    assert_one_line_error(code, capsys.readouterr().err, "need --prompts")
    pairs = tmp_path / "p.csv"
    pairs.write_text("image,prompt\nmissing.png,a cat\n")
    code = main(["eval", "--index", str(cli_store_path), "--pairs", str(pairs), "-q"])
    assert_one_line_error(code, capsys.readouterr().err, "--pairs: image 'missing.png' of the pairs file not found")


def test_blend_cli(cli_store_path, capsys, tmp_path):
    from nearest_prompt.cli.main import main
    from nearest_prompt.evaluation.submission import write_submission

    ids = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    x, y = unit(rng.normal(size=(3, 384))), unit(rng.normal(size=(3, 384)))
    write_submission(tmp_path / "x.csv", ids, x)
    write_submission(tmp_path / "y.csv", ids[::-1], y[::-1])  # other order: aligned by id
    (tmp_path / "x.confidence.csv").write_text("imgId,confidence,top_score\na,1,0\nb,0,0\nc,1,0\n")
    out = tmp_path / "z.csv"
    assert main(["blend", str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), "--weights", "1", "1",
                 "--confidence", str(tmp_path / "x.confidence.csv"), "none", "--out", str(out), "-q"]) == 0
    got_ids, got = read_submission(out)
    assert got_ids == ids
    np.testing.assert_allclose(got[0], unit(x[0] + y[0]), atol=1e-6)
    np.testing.assert_allclose(got[1], y[1], atol=1e-6)
    write_submission(tmp_path / "w.csv", ["a", "b", "zzz"], x)
    from .conftest import assert_one_line_error

    code = main(["blend", str(tmp_path / "x.csv"), str(tmp_path / "w.csv"), "--out", str(out), "-q"])
    assert_one_line_error(code, capsys.readouterr().err, "same image ids")


def test_query_minilm_space_and_captions(cli_store_path, capsys, tmp_path):
    from nearest_prompt.cli.main import main
    from nearest_prompt.index_store import open_store

    need_data()
    prompt = open_store(cli_store_path).prompts([3])[0]
    assert main(["query", "--index", str(cli_store_path), "--text", prompt, "--space", "minilm", "--k", "2",
                 "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split(None, 2)[2] == prompt
    img = KAGGLE / "images" / "20057f34d.png"
    caps = tmp_path / "caps.csv"
    with open(caps, "w", newline="") as f:
        csv.writer(f).writerows([["imgId", "caption"], ["20057f34d", "a crater on a planet"]])
    plain, zero, fused = tmp_path / "plain.npy", tmp_path / "zero.npy", tmp_path / "fused.npy"
    base = ["predict", "--index", str(cli_store_path), str(img), "--k", "10", "-q"]
    assert main(base + ["--out", str(plain)]) == 0
    assert main(base + ["--out", str(zero), "--captions", str(caps), "--caption-weight", "0"]) == 0
    assert main(base + ["--out", str(fused), "--captions", str(caps), "--caption-space", "minilm"]) == 0
    np.testing.assert_allclose(np.load(zero), np.load(plain), atol=1e-6)
    assert not np.allclose(np.load(fused), np.load(plain), atol=1e-3)
    (tmp_path / "bad.csv").write_text("name,text\nx,y\n")
    from .conftest import assert_one_line_error

    capsys.readouterr()
    code = main(base + ["--out", str(zero), "--captions", str(tmp_path / "bad.csv")])
    assert_one_line_error(code, capsys.readouterr().err, "--captions: ")
