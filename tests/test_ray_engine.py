"""``--engine ray`` on a local 2-CPU Ray runtime: the store equals the local build of the same slice,
the distributed IVF writer writes the same bytes, and a worker killed mid-job changes nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nearest_prompt import index_store, indexer

from .conftest import IN_CI, corpus_slice

ray = pytest.importorskip("ray", reason="pip install 'nearest-prompt[ray]'") if not IN_CI else __import__("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "slice.txt"
    path.write_text("\n".join(corpus_slice(300, offset=8000)) + "\n")
    return path


def _same_store(a, b, clip_encoder):
    sa, sb = index_store.open_store(a), index_store.open_store(b)
    assert sa.rows == sb.rows and sa.prompts(range(sa.rows)) == sb.prompts(range(sb.rows))
    assert sa.table.column("id").to_pylist() == sb.table.column("id").to_pylist()
    assert sa.minilm.dtype == sb.minilm.dtype == np.float16
    np.testing.assert_array_equal(sa.minilm, sb.minilm)  # same batches, same model: bit for bit
    x, y = (s.indexes["clip"].reconstruct_n(0, s.rows) for s in (sa, sb))
    # the CLIP text tower on 1 thread per actor vs 2 threads here: float rounding only
    assert np.abs(x - y).max() < 1e-6
    queries = clip_encoder.encode_text(corpus_slice(200, offset=9000))  # 200 text queries, not in the slice
    assert (sa.indexes["clip"].search(queries, 10)[1] == sb.indexes["clip"].search(queries, 10)[1]).all()
    return sa, sb


@pytest.mark.slow
def test_ray_build_equals_local_build(ray_runtime, slice_file, tmp_path, build_config, clip_encoder, minilm):
    cfg = replace(build_config, shard_size=64)
    local = indexer.build([slice_file], tmp_path / "local", config=cfg, minilm=minilm, progress=False)
    remote = indexer.build([slice_file], tmp_path / "ray", config=replace(cfg, engine="ray"), progress=False)
    assert local.stats == remote.stats
    _same_store(tmp_path / "local", tmp_path / "ray", clip_encoder)
    assert not (tmp_path / ".ray.build").exists()


@pytest.mark.slow
def test_distributed_ivf_writer_writes_the_same_bytes(ray_runtime, tmp_path, rng):
    from nearest_prompt.indexer.faiss_index import new_index, plan_index, train_ivf
    from nearest_prompt.indexer.ivf_file import ENCODE_CHUNK, write_ivf_file
    from nearest_prompt.indexer.ray_engine import RayEngine

    x = rng.normal(size=(3 * 4096 + 17, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("ivf", "ivfsq8", "ivfpq"):
        index = new_index(plan_index(len(x), 32, index_type=kind), 32)
        train_ivf(index, x, rng=np.random.default_rng(0))
        from nearest_prompt.indexer import ivf_file as ivf_file
        saved, ivf_file.ENCODE_CHUNK = ivf_file.ENCODE_CHUNK, 4096  # several blocks, so several tasks
        try:
            write_ivf_file(tmp_path / "here", index, x)
            write_ivf_file(tmp_path / "ray", index, x, map_blocks=RayEngine().map_blocks)
        finally:
            ivf_file.ENCODE_CHUNK = saved
        assert (tmp_path / "here").read_bytes() == (tmp_path / "ray").read_bytes(), kind
    assert ENCODE_CHUNK == 65_536


@pytest.mark.slow
def test_a_worker_killed_mid_job_changes_nothing(ray_runtime, slice_file, tmp_path, build_config, clip_spec,
                                                 clip_encoder, minilm):
    from devkit.faults import DyingOnceClip

    cfg = replace(build_config, shard_size=64, engine="ray", near_dup_threshold=None)
    marker = tmp_path / "kill-once"
    marker.write_text("the first CLIP encode on a worker kills that worker's process")
    dying = DyingOnceClip(clip_spec, marker)
    indexer.build([slice_file], tmp_path / "killed", config=cfg, clip=dying, minilm=minilm, progress=False)
    assert not marker.exists()  # a worker did die
    indexer.build([slice_file], tmp_path / "whole", config=replace(cfg, engine="local"), minilm=minilm,
                  progress=False)
    _same_store(tmp_path / "whole", tmp_path / "killed", clip_encoder)


def test_engine_ray_without_ray_says_how_to_install(monkeypatch, capsys, tmp_path, clip_spec):
    import builtins

    from .conftest import assert_one_line_error, run

    real_import = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a red fox\n")
    code, _, err = run(capsys, "build", "--prompts", corpus, "--out", tmp_path / "s", "--clip", clip_spec,
                       "--engine", "ray", "-q")
    assert_one_line_error(code, err, "--engine: engine 'ray' needs the 'ray' extra")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # nothing left behind
