"""Build -> open -> query round trips, the row-id contract, atomic and resumable builds."""

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest

from nearest_prompt import index_store, indexer
from nearest_prompt.common.errors import InputError
from nearest_prompt.index_store.format import CLIP_INDEX, FRAGMENT_FILES, MANIFEST, MINILM, MINILM_INDEX, PROMPTS
from nearest_prompt.retriever import Retriever

from .conftest import STORE_PROMPTS, corpus_slice


def test_store_round_trip_and_row_contract(store_dir, minilm, clip_encoder):
    store = index_store.open_store(store_dir, verify="full")
    m = store.manifest
    stats = m.build["stats"]
    assert stats["values_read"] == STORE_PROMPTS + 2
    # exact counts against oracles: a set of casefolded cleaned prompts, and the near-dedup rule over all pairs
    from nearest_prompt.common.text import clean_prompt

    values = corpus_slice(STORE_PROMPTS)
    values += [values[0].upper() + "  ", values[1] + ", 4k"]
    cleaned = [clean_prompt(v) for v in values]
    seen, unique = set(), []
    for c in cleaned:  # first occurrence of each casefolded prompt, in order
        if c and c.casefold() not in seen:
            seen.add(c.casefold())
            unique.append(c)
    assert stats["exact_duplicates"] == sum(1 for c in cleaned if c) - len(unique)
    from .test_clean_dedup import _oracle_keep

    keep = _oracle_keep(minilm.encode(unique), 0.95)
    assert stats["near_duplicates"] == int((~keep).sum()) and not keep[unique.index(values[1] + ", 4k")]
    assert store.prompts(range(store.rows)) == [u for u, k in zip(unique, keep) if k]
    assert store.rows == stats["rows"] == store.indexes["clip"].ntotal == len(store.minilm) == store.table.num_rows
    assert m.clip.model.startswith("local-dir:")
    assert m.minilm.dim == 384 and store.minilm.dtype == np.float16
    assert isinstance(store.minilm, np.memmap)
    # row i of every file describes the same prompt
    ids = np.array([0, 1, store.rows // 2, store.rows - 1])
    texts = store.prompts(ids)
    np.testing.assert_allclose(store.minilm[ids].astype(np.float32), minilm.encode(texts), atol=2e-3)
    stored_clip = np.stack([store.indexes["clip"].reconstruct(int(i)) for i in ids])
    np.testing.assert_array_equal(stored_clip, store.vectors["clip"][ids].astype(np.float32))  # the index holds them
    np.testing.assert_allclose(stored_clip, clip_encoder.encode_text(texts), atol=2e-3)
    assert store.prompts([-1, 0])[0] is None
    with pytest.raises(IndexError):
        store.prompts([store.rows])


def test_corpus_order_is_kept(store_dir):
    store = index_store.open_store(store_dir)
    original = corpus_slice(STORE_PROMPTS)
    stored = store.table.column("prompt").to_pylist()
    positions = [original.index(p) for p in stored]  # every stored prompt comes from the corpus
    assert positions == sorted(positions)
    assert stored[0] == original[0]


def test_text_query_ranks_the_prompt_itself_first(retriever):
    store = retriever.store
    ids = np.arange(0, retriever.rows, 3)
    texts = retriever.prompts(ids)
    nb = retriever.search(retriever.embed_texts(texts), k=5)
    ties = 0
    for i, row_ids, row_scores in zip(ids, nb.ids, nb.scores):
        assert row_scores[0] == pytest.approx(1.0, abs=2e-3)  # the index holds the float16 vectors of the store
        if row_ids[0] != i:  # only acceptable if another prompt has the identical CLIP vector (truncation)
            ties += 1
            assert i in row_ids[row_scores >= row_scores[0] - 1e-6]
    assert ties <= len(ids) // 50
    assert store.rows > 100


def test_predict_shapes_and_unit_vectors(retriever, rng):
    q = retriever.embed_texts(["a castle on a hill at sunset", "portrait of a cat"])
    pred = retriever.predict(q, k=50)
    assert pred.vectors.shape == (2, 384) and pred.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pred.vectors, axis=1), 1.0, atol=1e-5)
    assert np.all((pred.confidence > 0) & (pred.confidence <= 1))
    assert pred.neighbors.ids.shape == (2, 50)


def _small_corpus(tmp_path, n, offset=0, name="c.txt"):
    path = tmp_path / name
    path.write_text("\n".join(corpus_slice(n, offset=offset)) + "\n")
    return path


class Boom(RuntimeError):
    pass


class FailingEncoder:
    """Wraps an encoder; raises on the n-th encode_text call (a crash mid-build)."""

    def __init__(self, inner, fail_on_call):
        self.inner, self.fail_on_call, self.calls = inner, fail_on_call, 0
        self.info, self.dim = inner.info, inner.dim

    def encode_text(self, texts, *, batch_size=64):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise Boom("killed")
        return self.inner.encode_text(texts, batch_size=batch_size)


def test_interrupted_build_leaves_existing_store_intact(tmp_path, build_config, clip_encoder, minilm):
    out = tmp_path / "store"
    old = indexer.build([_small_corpus(tmp_path, 60)], out, config=build_config, clip=clip_encoder,
                        minilm=minilm, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(Boom):
        indexer.build([_small_corpus(tmp_path, 80, offset=500, name="new.txt")], out, config=build_config,
                      clip=FailingEncoder(clip_encoder, 2), minilm=minilm, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert index_store.open_store(out, verify="full").rows == old.rows
    assert not list(tmp_path.glob(".store.tmp-*"))  # no staging left behind


def test_failure_while_writing_store_keeps_old_store(tmp_path, build_config, clip_encoder, minilm, monkeypatch):
    out = tmp_path / "store"
    indexer.build([_small_corpus(tmp_path, 40)], out, config=build_config, clip=clip_encoder, minilm=minilm,
                  progress=False)
    before = (out / MANIFEST).read_bytes()

    def broken_build_index(*args, **kw):
        raise OSError(28, "No space left on device")

    # the module (nearest_prompt.indexer.build is also the name of the function)
    monkeypatch.setattr(sys.modules["nearest_prompt.indexer.build"], "build_index", broken_build_index)
    kept = r"resumable: the deduplicated prompts and 4 of 4 embedding shards"  # MiniLM, CLIP, 2 of fragments
    with pytest.raises(InputError, match=r"the disk filled up .* " + kept):
        indexer.build([_small_corpus(tmp_path, 50, offset=300, name="b.txt")], out, config=build_config,
                      clip=clip_encoder, minilm=minilm, progress=False)
    assert (out / MANIFEST).read_bytes() == before
    index_store.open_store(out, verify="full")
    assert not list(tmp_path.glob(".store.tmp-*"))


def test_resumed_build_equals_uninterrupted_build(tmp_path, build_config, clip_encoder, minilm):
    corpus = _small_corpus(tmp_path, 300, offset=1000)
    fresh = tmp_path / "fresh"
    indexer.build([corpus], fresh, config=build_config, clip=clip_encoder, minilm=minilm, progress=False)

    resumed = tmp_path / "resumed"
    failing = FailingEncoder(clip_encoder, 4)  # dies inside the second CLIP shard (shards of 128, batches of 64)
    with pytest.raises(Boom):
        indexer.build([corpus], resumed, config=build_config, clip=failing, minilm=minilm, progress=False)
    work = tmp_path / ".resumed.build"
    assert (work / "clip" / "00000.npy").is_file() and not (work / "clip" / "00001.npy").exists()
    counting = FailingEncoder(clip_encoder, -1)
    indexer.build([corpus], resumed, config=build_config, clip=counting, minilm=minilm, progress=False)
    assert not work.exists()
    rows = index_store.open_store(fresh).rows
    assert counting.calls == -(-(rows - 128) // 64)  # only the unfinished shards were embedded again
    for name in (PROMPTS, MINILM):
        assert (fresh / name).read_bytes() == (resumed / name).read_bytes()
    a, b = index_store.open_store(fresh), index_store.open_store(resumed)
    np.testing.assert_array_equal(a.indexes["clip"].reconstruct_n(0, rows), b.indexes["clip"].reconstruct_n(0, rows))
    assert a.manifest.build["stats"] == b.manifest.build["stats"]


def test_changed_inputs_restart_the_work_dir(tmp_path, build_config, clip_encoder, minilm):
    corpus = _small_corpus(tmp_path, 200, offset=2000)
    out = tmp_path / "s"
    with pytest.raises(Boom):
        indexer.build([corpus], out, config=build_config, clip=FailingEncoder(clip_encoder, 3), minilm=minilm,
                      progress=False)
    corpus.write_text("\n".join(corpus_slice(30, offset=4000)) + "\n")  # the user fixed the corpus
    result = indexer.build([corpus], out, config=build_config, clip=clip_encoder, minilm=minilm, progress=False)
    assert result.stats["values_read"] == 30


def test_rebuild_replaces_store(tmp_path, build_config, clip_encoder, minilm):
    out = tmp_path / "store"
    indexer.build([_small_corpus(tmp_path, 20)], out, config=build_config, clip=clip_encoder, minilm=minilm,
                  progress=False)
    indexer.build([_small_corpus(tmp_path, 35, offset=700, name="d.txt")], out, config=build_config,
                  clip=clip_encoder, minilm=minilm, progress=False)
    assert index_store.open_store(out).manifest.build["stats"]["values_read"] == 35
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] == []


def test_limit_and_no_near_dedup(tmp_path, build_config, clip_encoder, minilm):
    from dataclasses import replace

    corpus = tmp_path / "dups.txt"
    corpus.write_text("a red apple on a table, 4k\na red apple on a table, 8k\na red apple on a table, 4k\n"
                      "a blue car\na green tree\n")
    out = tmp_path / "s"
    cfg = replace(build_config, near_dup_threshold=None, limit=3)
    r = indexer.build([corpus], out, config=cfg, clip=clip_encoder, minilm=minilm, progress=False)
    assert r.rows == 3 and r.stats["near_duplicates"] == 0
    assert r.stats["values_read"] == 4 and r.stats["exact_duplicates"] == 1
    assert index_store.open_store(out).prompts([0, 1, 2]) == [
        "a red apple on a table, 4k", "a red apple on a table, 8k", "a blue car"]


def test_query_with_a_different_clip_is_refused(store_dir, tmp_path):
    from devkit.tiny_clip import make_tiny_clip
    from nearest_prompt.common.errors import ModelError

    other = make_tiny_clip(tmp_path / "other", seed=1)
    r = Retriever.open(store_dir, clip=f"local-dir:{other}")
    with pytest.raises(ModelError, match="does not match"):
        r.embed_texts(["a cat"])


def test_moved_clip_folder_is_accepted_by_fingerprint(store_dir, tiny_clip_dir, tmp_path):
    moved = tmp_path / "moved_clip"
    shutil.copytree(tiny_clip_dir, moved)
    r = Retriever.open(store_dir, clip=f"local-dir:{moved}")
    assert r.embed_texts(["a cat"]).shape == (1, r.clip.dim)


def test_manifest_is_self_describing(store_dir):
    m = json.loads((store_dir / MANIFEST).read_text())
    assert m["format"] == "nearest-prompt-index" and m["format_version"] == 4
    assert set(m["files"]) == {PROMPTS, MINILM, CLIP_INDEX, MINILM_INDEX, *FRAGMENT_FILES, "clip.npy"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"].values())
    frag = m["fragments"]
    assert frag["rows"] == frag["stats"]["kept"] > 0 and frag["rule"]["min_count"] == 3
    assert {s: i["ntotal"] for s, i in frag["indexes"].items()} == {"clip": frag["rows"], "minilm": frag["rows"]}
    assert m["build"]["config"]["near_dup_threshold"] == 0.95
    assert {"torch", "faiss-cpu", "open_clip_torch", "sentence-transformers"} <= set(m["versions"])
    assert list(m["spaces"]) == ["clip"] and m["spaces"]["clip"]["kind"] == "text"
    assert m["spaces"]["clip"]["model"]["embed_dim"] == 64 and m["spaces"]["clip"]["model"]["random_weights"]
    assert m["spaces"]["clip"]["index"]["type"] == "flat" and m["spaces"]["clip"]["index"]["recall_at_10"] == 1.0
    assert m["minilm_index"]["type"] == "flat" and m["minilm_index"]["dim"] == 384


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq8", "ivfpq", "hnsw"])
def test_opened_indexes_are_memory_mapped_and_answer_like_in_memory(tmp_path, build_config, clip_encoder,
                                                                     minilm, kind):
    from dataclasses import replace

    from nearest_prompt.index_store.reader import is_memory_mapped

    out = tmp_path / kind
    indexer.build([_small_corpus(tmp_path, 120)], out, config=replace(build_config, index_type=kind),
                  clip=clip_encoder, minilm=minilm, progress=False)
    from nearest_prompt.index_store.refine import RefinedIndex

    store = index_store.open_store(out)
    assert store.manifest.index("clip").type == kind
    ivf = kind.startswith("ivf")
    assert ("clip.ivfdata" in store.manifest.files) == ivf  # IVF lists in faiss's on-disk layout
    for index, name in ((store.indexes["clip"], CLIP_INDEX), (store.indexes["minilm"], MINILM_INDEX)):
        assert is_memory_mapped(index), name
        if isinstance(index, RefinedIndex):  # the first pass; the refine stage is tested on its own
            index = index.base
        in_memory = _into_memory(out / name, ivf)
        assert not is_memory_mapped(in_memory)
        q = np.ascontiguousarray(store.minilm[:7], dtype=np.float32) if index.d == 384 else \
            clip_encoder.encode_text(store.prompts(range(7)))
        d_map, i_map = index.search(q, 5)
        d_mem, i_mem = in_memory.search(q, 5)
        np.testing.assert_array_equal(i_map, i_mem)
        np.testing.assert_array_equal(d_map, d_mem)


def _into_memory(path, ivf):
    """An index file read whole into memory; for IVF, its on-disk lists copied into in-memory lists."""
    import faiss

    from nearest_prompt.common.quiet import c_stdout_silenced

    if not ivf:
        return faiss.read_index(str(path))
    with c_stdout_silenced():
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    src = faiss.extract_index_ivf(index).invlists
    dst = faiss.ArrayInvertedLists(src.nlist, src.code_size)
    for list_no in range(src.nlist):
        if src.list_size(list_no):
            dst.add_entries(list_no, src.list_size(list_no), src.get_ids(list_no), src.get_codes(list_no))
    faiss.extract_index_ivf(index).replace_invlists(dst, True)
    dst.this.disown()
    return index


def test_minilm_written_in_blocks_round_trips(tmp_path, rng):
    from nearest_prompt.common.errors import StoreError
    from nearest_prompt.index_store.writer import StoreWriter

    x = rng.normal(size=(10, 384)).astype(np.float16)
    with StoreWriter(tmp_path / "s") as w:
        w.write_minilm([x[:3], x[3:]], rows=10, dim=384)
        np.testing.assert_array_equal(np.load(w.minilm_path), x)
        with pytest.raises(StoreError, match="9 rows written to minilm.npy"):
            w.write_minilm([x[:9]], rows=10, dim=384)


def test_prompt_file_slices_and_filters_across_batches(tmp_path, rng):
    from nearest_prompt.indexer.prompt_file import PromptFile, write_prompt_file

    texts = [f"prompt {i} " + "x" * int(i % 7) for i in range(40)]
    cuts = [0, 3, 3, 11, 12, 29, 40]  # uneven batches, one of them empty
    assert write_prompt_file(tmp_path / "p.arrow", [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:])]) == 40
    pf = PromptFile(tmp_path / "p.arrow")
    assert len(pf) == 40
    for a, b in [(0, 40), (2, 13), (11, 12), (12, 12), (28, 31), (39, 50)] + [
            tuple(sorted(rng.integers(0, 41, 2).tolist())) for _ in range(20)]:
        assert pf[a:b].to_pylist() == texts[a:b], (a, b)
    keep = rng.random(40) < 0.5
    kept = [t for batch in pf.take_rows(keep) for t in batch.column("prompt").to_pylist()]
    assert kept == [t for t, k in zip(texts, keep) if k]
    with pytest.raises(ValueError, match="keep mask"):
        next(pf.take_rows(keep[:5]))
    assert not list(tmp_path.glob(".*.tmp"))


def test_prompts_written_from_blocks_get_consecutive_ids(tmp_path):
    import pyarrow as pa

    from nearest_prompt.index_store.writer import StoreWriter

    blocks = [pa.array(["a", "b"]), pa.array([], type=pa.string()), pa.array(["c"])]
    with StoreWriter(tmp_path / "s") as w:
        assert w.write_prompts(iter(blocks)) == 3
        table = pa.ipc.open_file(pa.memory_map(str(w.staging / PROMPTS))).read_all()
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.column("prompt").to_pylist() == ["a", "b", "c"]


def test_a_version_2_store_with_ivf_lists_in_its_index_files_opens_and_answers_as_before(
        tmp_path, build_config, clip_encoder, minilm):
    """Stores written before version 3 hold their IVF lists inside the index file (and no CLIP vectors):
    they open memory-mapped, as then, and answer what the same lists answer in the new layout."""
    from dataclasses import replace

    import faiss

    from nearest_prompt.common.checksums import file_digests
    from nearest_prompt.index_store.format import BLOCK_BYTES
    from nearest_prompt.index_store.reader import is_memory_mapped

    new = tmp_path / "new"
    indexer.build([_small_corpus(tmp_path, 200)], new, config=replace(build_config, index_type="ivfsq8"),
                  clip=clip_encoder, minilm=minilm, progress=False)
    old = tmp_path / "old"
    shutil.copytree(new, old)
    m = json.loads((old / MANIFEST).read_text())
    for name in (CLIP_INDEX, MINILM_INDEX):
        faiss.write_index(_into_memory(new / name, True), str(old / name))  # the lists inside the file
        whole, blocks = file_digests(old / name, block_bytes=BLOCK_BYTES)
        m["files"][name] = {"bytes": (old / name).stat().st_size, "sha256": whole, "block_bytes": BLOCK_BYTES,
                            "blocks": blocks}
        lists = name.replace(".faiss", ".ivfdata")
        (old / lists).unlink()
        del m["files"][lists]
    (old / "clip.npy").unlink()
    del m["files"]["clip.npy"]
    m = dataclasses.replace(index_store.Manifest.from_dict(m), format_version=2).to_dict()  # version 2's layout
    assert "spaces" not in m and m["models"]["clip"]["embed_dim"] == 64
    (old / MANIFEST).write_text(json.dumps(m))
    a, b = index_store.open_store(old), index_store.open_store(new)
    assert a.manifest.format_version == 2 and "clip" not in a.vectors and is_memory_mapped(a.indexes["clip"])
    q = clip_encoder.encode_text(a.prompts(range(20)))
    for space, queries in (("clip", q), ("minilm", np.ascontiguousarray(a.minilm[:20], dtype=np.float32))):
        np.testing.assert_array_equal(a.indexes[space].search(queries, 5)[1], b.indexes[space].search(queries, 5)[1])
