"""Shared fixtures: a tiny random-weights CLIP saved as local-dir:, the real MiniLM,
slices of the shared corpus, and one small store built from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from devkit.paths import shared_data_dir  # noqa: E402

IN_CI = bool(os.environ.get("CI"))  # in CI a missing dependency of a test fails it instead of skipping it
DATA = shared_data_dir()
CORPUS = DATA / "prompts" / "sd_prompts.parquet"
KAGGLE = DATA / "eval" / "kaggle_sample"
DIFFUSIONDB = DATA / "eval" / "diffusiondb_sample"
STORE_PROMPTS = 400


def need_data() -> None:
    if not CORPUS.is_file():
        (pytest.fail if IN_CI else pytest.skip)(f"shared data not found at {DATA} (set NEAREST_PROMPT_DATA)")


def corpus_slice(n: int, *, offset: int = 0) -> list[str]:
    need_data()
    pf = pq.ParquetFile(CORPUS)
    return pf.read_row_group(0, columns=["prompt"]).column(0).slice(offset, n).to_pylist()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from devkit.tiny_clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="session")
def clip_spec(tiny_clip_dir) -> str:
    return f"local-dir:{tiny_clip_dir}"


@pytest.fixture(scope="session")
def clip_encoder(clip_spec):
    from nearest_prompt.encoders.clip import load_clip, parse_clip_spec

    return load_clip(parse_clip_spec(clip_spec), device="cpu")


@pytest.fixture(scope="session")
def minilm():
    from nearest_prompt.encoders.minilm import load_minilm

    return load_minilm(device="cpu")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """The first STORE_PROMPTS prompts of the shared corpus plus one exact and one near duplicate."""
    prompts = corpus_slice(STORE_PROMPTS)
    extra = [prompts[0].upper() + "  ", prompts[1] + ", 4k"]
    path = tmp_path_factory.mktemp("corpus") / "slice.parquet"
    pq.write_table(pa.table({"prompt": prompts + extra, "source": ["test"] * (len(prompts) + 2)}), path)
    return path


@pytest.fixture(scope="session")
def build_config(clip_spec):
    from nearest_prompt.indexer import BuildConfig

    return BuildConfig(clip_model=clip_spec, shard_size=128, batch_size=64)


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, corpus_file, build_config, clip_encoder, minilm) -> Path:
    from nearest_prompt import indexer
    out = tmp_path_factory.mktemp("stores") / "store"
    indexer.build([corpus_file], out, config=build_config, clip=clip_encoder, minilm=minilm, progress=False)
    return out


@pytest.fixture(scope="session")
def retriever(store_dir, clip_encoder):
    from nearest_prompt.retriever import Retriever

    return Retriever.open(store_dir, clip=clip_encoder)


def run(capsys, *argv):
    """``nearest-prompt ARGV`` in this process: (exit status, stdout, stderr)."""
    from nearest_prompt.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    """The error contract: status 2, stderr exactly one line ``nearest-prompt: error: ...`` holding
    ``match``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nearest-prompt: error: "), err
    assert match in lines[0], lines[0]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="session")
def cli_store_path(tmp_path_factory, clip_spec):
    """A store built through the CLI (``nearest-prompt build``) from a small text corpus."""
    from nearest_prompt.cli.main import main

    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "prompts.txt"
    corpus.write_text("\n".join(corpus_slice(60, offset=3000)) + "\n")
    out = tmp / "store"
    assert main(["build", "--prompts", str(corpus), "--out", str(out), "--clip", clip_spec, "-q"]) == 0
    return out


def seen_recall_queries(monkeypatch) -> dict:
    """The build's recall queries (``RecallQueries``), kept under "rq" in the dict returned as the build makes them."""
    from nearest_prompt.indexer import faiss_index as fi

    seen, real = {}, fi.recall_queries

    def capture(vectors, rng_):
        seen["rq"] = real(vectors, rng_)
        return seen["rq"]

    monkeypatch.setattr(fi, "recall_queries", capture)
    return seen
