"""The real all-MiniLM-L6-v2 reproduces the competition's official embeddings."""

import csv

import numpy as np
import pytest

from nearest_prompt.evaluation.submission import read_submission, write_submission

from .conftest import KAGGLE, need_data


def _kaggle_prompts():
    need_data()
    with open(KAGGLE / "prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["imgId"] for r in rows], [r["prompt"] for r in rows]


def test_minilm_reproduces_sample_submission(minilm):
    ids, prompts = _kaggle_prompts()
    sub_ids, official = read_submission(KAGGLE / "sample_submission.csv")
    assert sub_ids == ids and official.shape == (7, 384)
    ours = minilm.encode(prompts)
    assert ours.shape == (7, 384)
    np.testing.assert_allclose(ours, official, atol=1e-6)
    # the competition metric of the true prompts against themselves is 1
    np.testing.assert_allclose((ours * official).sum(1), 1.0, atol=1e-5)


def test_submission_round_trip_matches_official_layout(minilm, tmp_path):
    ids, prompts = _kaggle_prompts()
    vectors = minilm.encode(prompts)
    out = tmp_path / "sub.csv"
    write_submission(out, ids, vectors)
    lines = out.read_text().splitlines()
    official = (KAGGLE / "sample_submission.csv").read_text().splitlines()
    assert len(lines) == len(official) == 1 + 7 * 384
    assert [ln.split(",")[0] for ln in lines] == [ln.split(",")[0] for ln in official]
    back_ids, back = read_submission(out)
    assert back_ids == ids
    np.testing.assert_array_equal(back, vectors.astype(np.float32))  # %.9g round-trips float32 exactly


def test_read_submission_rejects_bad_files(tmp_path):
    from nearest_prompt.common.errors import InputError

    bad = tmp_path / "bad.csv"
    bad.write_text("id,value\nx_0,1\n")
    with pytest.raises(InputError, match="header"):
        read_submission(bad)
    gap = tmp_path / "gap.csv"
    gap.write_text("imgId_eId,val\nx_0,1\nx_2,1\n")
    with pytest.raises(InputError, match="rows 0..1"):
        read_submission(gap)


def test_write_submission_rejects_duplicate_ids(tmp_path):
    from nearest_prompt.common.errors import InputError

    with pytest.raises(InputError, match="duplicate"):
        write_submission(tmp_path / "s.csv", ["a", "a"], np.zeros((2, 384), np.float32))
    assert not (tmp_path / "s.csv").exists()
