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
def test_distributed_ivf_writer_writes_the_same_bytes(ray_runtime, tmp_path, rng, monkeypatch):
    """The blocks as Ray tasks (the trained index shipped once, each task writing its block's index file into
    the shared folder, the driver merging them) give the files the local writer gives, byte for byte."""
    from nearest_prompt.indexer import ivf_blocks
    from nearest_prompt.indexer.faiss_index import new_index, plan_index, train_ivf
    from nearest_prompt.indexer.ray_engine import RayEngine

    monkeypatch.setattr(ivf_blocks, "ADD_CHUNK", 4096)  # several blocks, so several tasks
    x = rng.normal(size=(3 * 4096 + 17, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("ivf", "ivfsq8", "ivfpq"):
        index = new_index(plan_index(len(x), 32, index_type=kind), 32)
        train_ivf(index, x, rng=np.random.default_rng(0))
        for where, blocks in (("here", None), ("ray", RayEngine().map_blocks)):
            (tmp_path / where).mkdir(exist_ok=True)
            ivf_blocks.write_ondisk(tmp_path / where / f"{kind}.faiss", index, x, map_blocks=blocks,
                                    final_path=tmp_path / "final" / f"{kind}.faiss")
        for suffix in (".faiss", ".ivfdata"):
            here, ray_ = (tmp_path / w / f"{kind}{suffix}" for w in ("here", "ray"))
            assert here.read_bytes() == ray_.read_bytes(), (kind, suffix)


@pytest.mark.slow
def test_near_dedup_blocks_as_ray_tasks_keep_what_the_local_run_keeps(ray_runtime, rng, monkeypatch):
    from nearest_prompt.indexer import dedup
    from nearest_prompt.indexer.ray_engine import RayEngine

    monkeypatch.setattr(dedup, "EXACT_MAX_ROWS", 100)  # the IVF path of large corpora
    monkeypatch.setattr(dedup, "CHUNK", 500)  # several blocks, so several tasks
    centres = rng.normal(size=(400, 32)).astype(np.float32)
    v = centres[rng.integers(0, 400, 3000)] + 0.03 * rng.normal(size=(3000, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    here = dedup.near_duplicate_pairs(v, threshold=0.95)
    there = dedup.near_duplicate_pairs(v, threshold=0.95, map_blocks=RayEngine().map_blocks)
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)
    assert len(here[0]) > 1000
    np.testing.assert_array_equal(dedup.keep_from_pairs(len(v), *here, threshold=0.95),
                                  dedup.near_duplicate_keep(v, threshold=0.95, map_blocks=RayEngine().map_blocks))


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
