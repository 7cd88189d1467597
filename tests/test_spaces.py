"""Several CLIP spaces in one store: two tiny random open_clip models of different widths (real architectures,
loaded as ``local-dir:`` folders), an image space from the DiffusionDB sample's images, searches over them
(one space, cascades, fusions, the minimum score) against numpy over the stored vectors, a space added to a
store, additions to a store with spaces, the CLI, the service and bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest

from nearest_prompt import index_store, indexer
from nearest_prompt.common.errors import InputError
from nearest_prompt.common.text import clean_prompt
from nearest_prompt.retriever import Retriever, SearchPlan

from .conftest import DIFFUSIONDB, assert_one_line_error, corpus_slice, need_data, run

TEXT_ROWS = 60  # prompts of the shared corpus beside the six with images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny random CLIP models of different widths, as local-dir: folders."""
    from devkit.tiny_clip import make_tiny_clip

    folder = tmp_path_factory.mktemp("spaces_models")
    return {"a": make_tiny_clip(folder / "a", seed=1, width=64), "b": make_tiny_clip(folder / "b", seed=2, width=96)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """prompts.csv: the six DiffusionDB sample prompts with their images (in images/), then TEXT_ROWS prompts
    without one."""
    need_data()
    folder = tmp_path_factory.mktemp("spaces_corpus")
    shutil.copytree(DIFFUSIONDB / "images", folder / "images")
    with open(DIFFUSIONDB / "prompts.csv", newline="") as f:
        pairs = [(row["prompt"], row["image"]) for row in csv.DictReader(f)]
    with open(folder / "prompts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "image"])
        w.writerows(pairs)
        w.writerows([(p, "") for p in corpus_slice(TEXT_ROWS, offset=5000)])
    return folder


def spaces_config(models, **options):
    return indexer.BuildConfig(spaces=(f"a=local-dir:{models['a']}", f"b=local-dir:{models['b']}"),
                               image_column="image", shard_size=32, **options)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, corpus, models, minilm):
    out = tmp_path_factory.mktemp("spaces_store") / "store"
    indexer.build([corpus / "prompts.csv"], out, config=spaces_config(models), minilm=minilm, progress=False)
    return out


@pytest.fixture(scope="module")
def r(store_path, minilm):
    return Retriever.open(store_path, minilm=minilm)


def stored(r, space, ids):
    return np.asarray(r.store.vectors[space][ids], dtype=np.float32)


def test_a_store_holds_named_text_and_image_spaces(r, store_path):
    store = r.store
    assert store.spaces == ["a", "b", "a-image", "b-image"] and store.primary == "a"
    m = json.loads((store_path / index_store.format.MANIFEST).read_text())
    assert m["format_version"] == 4 and list(m["spaces"]) == store.spaces
    assert [m["spaces"][s]["model"]["embed_dim"] for s in store.spaces] == [64, 96, 64, 96]
    assert m["spaces"]["a-image"]["kind"] == "image" and m["spaces"]["a-image"]["of"] == "a"
    assert m["spaces"]["a-image"]["rows"] == 6 and m["spaces"]["a-image"]["images"]["images"] == 6
    for space in store.spaces:
        entry = m["spaces"][space]
        assert entry["index"]["recall_at_10"] == 1.0 and entry["model"]["weights"]
        assert store.vectors[space].shape == (store.rows, entry["model"]["embed_dim"])
    assert m["spaces"]["a"]["model"]["weights"] != m["spaces"]["b"]["model"]["weights"]
    # the prompts without an image are not in the image spaces
    rows = np.load(store_path / "a-image.rows.npy")
    assert rows.sum() == 6 and rows[:6].all()
    assert set(store.prompts(np.flatnonzero(rows))) == {clean_prompt(row["prompt"]) for row in csv.DictReader(
        open(DIFFUSIONDB / "prompts.csv", newline=""))}


def test_each_image_finds_its_own_prompt_first_in_the_image_space(r):
    with open(DIFFUSIONDB / "prompts.csv", newline="") as f:
        pairs = [(DIFFUSIONDB / "images" / row["image"], row["prompt"]) for row in csv.DictReader(f)]
    for space in ("a-image", "b-image"):
        emb = r.embed_images([p for p, _ in pairs], spaces=[space])
        nb = r.search(emb.by_space, k=3, plan=SearchPlan(space=space))
        assert r.prompts(nb.ids[:, 0]) == [clean_prompt(prompt) for _, prompt in pairs]
        np.testing.assert_allclose(nb.scores[:, 0], 1.0, atol=2e-3)
        held = r.store.members[space]
        assert held[nb.ids[nb.ids >= 0]].all()  # only rows with an image come back


def test_images_are_embedded_once_per_model(r, monkeypatch):
    calls = []
    for name in ("a", "b"):
        encoder = r.clip_for(name)
        monkeypatch.setattr(encoder, "encode_images", lambda images, batch_size=16, _f=encoder.encode_images, _n=name:
                            calls.append(_n) or _f(images, batch_size=batch_size))
    emb = r.embed_images(sorted((DIFFUSIONDB / "images").iterdir())[:2], spaces=["a", "a-image", "b", "b-image"])
    assert sorted(calls) == ["a", "b"]
    assert emb.by_space["a"] is emb.by_space["a-image"] and emb.by_space["b"].shape == (2, 96)


def queries(r, spaces):
    return r.embed_queries(["a castle at dusk", "portrait of a cat, oil painting", "a city street at night"], spaces)


def test_fused_scores_are_the_weighted_sum_over_the_union_computed_exactly(r):
    q = queries(r, ["a", "b"])
    k = 5
    plan = SearchPlan.parse(fuse="a,b", fuse_weights="1,3")
    nb = r.search(q, k=k, plan=plan)
    lists = {s: r.search(q[s], k=k, space=s).ids for s in ("a", "b")}
    saw_one_sided = False
    for i in range(len(nb.ids)):
        union = sorted(set(lists["a"][i]) | set(lists["b"][i]))
        saw_one_sided |= len(union) > k
        fused = 0.25 * stored(r, "a", union) @ q["a"][i] + 0.75 * stored(r, "b", union) @ q["b"][i]
        order = np.argsort(-fused, kind="stable")[:k]
        np.testing.assert_array_equal(nb.ids[i], np.array(union)[order])
        np.testing.assert_allclose(nb.scores[i], fused[order], rtol=0, atol=1e-5)
    assert saw_one_sided  # some row was in one space's list only: its other score was computed, not taken as 0


def test_cascade_rescores_the_first_spaces_candidates_exactly_in_the_second(r):
    q = queries(r, ["a", "b"])
    nb = r.search(q, k=4, plan=SearchPlan.parse(cascade="a:12,b"))
    first = r.search(q["a"], k=12, space="a").ids
    for i in range(len(nb.ids)):
        exact = stored(r, "b", first[i]) @ q["b"][i]
        order = np.argsort(-exact, kind="stable")[:4]
        np.testing.assert_array_equal(nb.ids[i], first[i][order])
        np.testing.assert_allclose(nb.scores[i], exact[order], rtol=0, atol=1e-5)


def test_a_cascade_over_every_row_is_a_plain_search_of_the_second_space(r):
    q = queries(r, ["a", "b"])
    wide = r.search(q, k=10, plan=SearchPlan.parse(cascade=f"a:{r.rows + 50},b"))
    plain = r.search(q["b"], k=10, space="b")
    np.testing.assert_array_equal(wide.ids, plain.ids)
    np.testing.assert_allclose(wide.scores, plain.scores, rtol=0, atol=1e-5)


def test_min_score_drops_exactly_the_rows_below_it(r):
    q = queries(r, ["a", "b"])
    full = r.search(q, k=20, plan=SearchPlan.parse(cascade="a:40,b"))
    cut = float(np.median(full.scores))
    kept = r.search(q, k=20, plan=SearchPlan.parse(cascade="a:40,b", min_score=cut))
    for i in range(len(full.ids)):
        survivors = full.ids[i][full.scores[i] >= cut]
        assert 0 < len(survivors) < 20
        np.testing.assert_array_equal(kept.ids[i][:len(survivors)], survivors)
        assert (kept.ids[i][len(survivors):] == -1).all() and np.isneginf(kept.scores[i][len(survivors):]).all()


def test_predict_and_interrogate_use_the_plan(r):
    from nearest_prompt.composer import ComposeOptions, Composer
    from nearest_prompt.retriever import Weighting, blend

    images = sorted((DIFFUSIONDB / "images").iterdir())[:3]
    plan = SearchPlan.parse(cascade="b:20,a-image")
    emb = r.embed_images(images, spaces=plan.spaces(r.store.primary))
    pred = r.predict(emb.by_space, k=5, plan=plan)
    by_hand = blend(r.search(emb.by_space, k=5, plan=plan), r.store.minilm, Weighting())
    np.testing.assert_array_equal(pred.vectors, by_hand.vectors)
    done = Composer(r, options=ComposeOptions(mode="fast", target_k=5)).interrogate_images(images, plan=plan)
    assert [c.neighbors[0]["id"] for c in done.compositions] == r.search(emb.by_space, k=1, plan=plan).ids[:, 0].tolist()


def test_a_store_without_an_image_space_says_so(store_dir, capsys):
    code, _, err = run(capsys, "query", "--index", store_dir, "--text", "a cat", "--space", "clip-image", "-q")
    assert_one_line_error(code, err, "--space: this index has no image space 'clip-image'")
    with pytest.raises(InputError, match="no space 'big'"):
        Retriever.open(store_dir).search(np.zeros((1, 64), np.float32), plan=SearchPlan(space="big"))


def test_captions_search_the_space_asked_for(r):
    from nearest_prompt.retriever import Weighting
    from nearest_prompt.retriever.weighting import fuse

    q = r.embed_images(sorted((DIFFUSIONDB / "images").iterdir())[:1]).vectors
    caption = ["a cat in space"]
    pred = r.predict(q, k=5, captions=caption, caption_space="b")
    image_nb, caption_nb = r.search(q, k=5), r.search(r.embed_texts(caption, space="b"), k=5, space="b")
    by_hand = fuse([(image_nb, 1.0), (caption_nb, 1.0)], r.store.minilm, Weighting())
    np.testing.assert_array_equal(pred.vectors, by_hand.vectors)
    assert not np.array_equal(pred.vectors, r.predict(q, k=5, captions=caption).vectors)  # "clip": the first, a
    with pytest.raises(InputError, match="no space 'nope'"):
        r.predict(q, k=5, captions=caption, caption_space="nope")


def test_plans_refuse_bad_input():
    for kwargs, match in [({"cascade": "a,b"}, "A:N,B"), ({"cascade": "a:x,b"}, "not a number"),
                          ({"cascade": "a:0,b"}, "at least 1"), ({"fuse": "a"}, "two or more"),
                          ({"fuse": "a,a"}, "two or more"), ({"fuse": "a,b", "fuse_weights": "1"}, "1 weights for 2"),
                          ({"fuse": "a,b", "fuse_weights": "1,-1"}, "non-negative"),
                          ({"space": "a", "fuse": "a,b"}, "one of space, cascade and fuse"),
                          ({"fuse_weights": "1,1"}, "for fuse only"), ({"min_score": 2.0}, "in [-1, 1]")]:
        with pytest.raises(InputError, match=re.escape(match)):
            SearchPlan.parse(**kwargs)


def test_a_space_added_later_equals_one_built_with_the_store(tmp_path, corpus, models, minilm, store_path):
    one = indexer.build([corpus / "prompts.csv"], tmp_path / "one", config=indexer.BuildConfig(
        spaces=(f"a=local-dir:{models['a']}",), shard_size=32), minilm=minilm, progress=False).path
    before = {p.name: p.stat().st_ino for p in one.iterdir()}
    done = indexer.add_space(one, f"b=local-dir:{models['b']}", progress=False)
    assert done.space == "b" and done.rows == index_store.open_store(store_path).rows
    grown, built = index_store.open_store(one), index_store.open_store(store_path)
    assert grown.spaces == ["a", "b"]
    np.testing.assert_array_equal(grown.vectors["b"], built.vectors["b"])  # the same prompts, the same model
    np.testing.assert_array_equal(grown.vectors["a"], built.vectors["a"])
    after = {p.name: p.stat().st_ino for p in one.iterdir()}
    assert all(after[name] == ino for name, ino in before.items() if name != "manifest.json")  # linked, untouched
    assert grown.manifest.build["space_additions"][0]["space"] == "b"
    with pytest.raises(InputError, match="has a space 'b' already"):
        indexer.add_space(one, f"b=local-dir:{models['b']}", progress=False)


def test_add_embeds_new_prompts_in_every_space(tmp_path, store_path, corpus, minilm):
    grown = tmp_path / "grown"
    shutil.copytree(store_path, grown)
    new = tmp_path / "new"
    (new / "images").mkdir(parents=True)
    src = sorted((DIFFUSIONDB / "images").iterdir())[0]
    shutil.copy(src, new / "images" / "again.png")
    (new / "new.csv").write_text("prompt,image\nan entirely new prompt about a lighthouse,again.png\n"
                                 "a second new prompt without its image,gone.png\n")
    result = indexer.add([new / "new.csv"], grown, minilm=minilm, progress=False)
    assert result.added == 2
    r = Retriever.open(grown, minilm=minilm)
    rows = r.rows
    assert r.store.members["a-image"][rows - 2] and not r.store.members["a-image"][rows - 1]
    assert r.store.manifest.spaces["a-image"].rows == 7
    emb = r.embed_images([src], spaces=["a-image", "b"])
    np.testing.assert_allclose(stored(r, "a-image", [rows - 2])[0], emb.by_space["a-image"][0], atol=2e-3)
    text = r.embed_queries(["an entirely new prompt about a lighthouse"], ["b"])["b"]
    np.testing.assert_allclose(stored(r, "b", [rows - 2])[0], text[0], atol=2e-3)


@pytest.mark.slow
def test_cli_build_query_eval_with_spaces(tmp_path, corpus, models, capsys):
    out = tmp_path / "store"
    code, stdout, err = run(capsys, "build", "--prompts", corpus / "prompts.csv", "--out", out, "--space",
                            f"a=local-dir:{models['a']}", "--space", f"b=local-dir:{models['b']}", "--image-column",
                            "image", "--shard-size", 32, "-q")
    assert code == 0, err
    image = sorted((DIFFUSIONDB / "images").iterdir())[0]
    own = next(clean_prompt(row["prompt"]) for row in csv.DictReader(open(DIFFUSIONDB / "prompts.csv", newline=""))
               if row["image"] == image.name)
    code, stdout, err = run(capsys, "query", "--index", out, image, "--cascade", "a-image:20,b-image", "--k", 3,
                            "--json", "-q")
    doc = json.loads(stdout)
    assert code == 0 and doc["search"] == "cascade a-image:20,b-image"
    assert doc["results"][0]["neighbors"][0]["prompt"] == own and doc["results"][0]["neighbors"][0]["score"] > 0.99
    code, stdout, err = run(capsys, "info", "--index", out)
    assert code == 0 and "space b-image" in stdout and "b index" in stdout
    report = tmp_path / "r.json"
    code, stdout, err = run(capsys, "eval", "--index", out, "--pairs", DIFFUSIONDB / "prompts.csv", "--k", 5,
                            "--space", "a", "--space", "a-image", "--fuse", "a,b", "--cascade", "a:20,b-image",
                            "--compose", "off", "--report", report, "-q")
    assert code == 0, err
    doc = json.loads(report.read_text())
    labels = ["space a", "space a-image", "cascade a:20,b-image", "fuse a,b (weights 0.5, 0.5)"]
    assert doc["settings"]["searches"] == labels
    for label in labels:
        assert f"power_p6 [{label}]" in doc["summary"] and f"power_p6 [{label}]" in stdout
    assert doc["summary"]["top1_prompt [space a-image]"]["mean"] == pytest.approx(1.0, abs=1e-6)  # its own prompt


@pytest.mark.parametrize("argv, match", [
    (["query", "--text", "x", "--space", "c"], "--space: this index has no space 'c' (its CLIP spaces: a, b, a-image, "
                                                 "b-image)"),
    (["query", "--text", "x", "--cascade", "a:5"], "--cascade: cascade: 'a:5': give cascade as A:N,B"),
    (["query", "--text", "x", "--fuse", "a,minilm"], "cascades and fusions combine CLIP spaces"),
    (["query", "--text", "x", "--fuse", "a,b", "--fuse-weights", "1,2,3"], "3 weights for 2 fused spaces"),
    (["query", "--text", "x", "--fuse-weights", "1,2"], "--fuse-weights is for --fuse only"),
    (["build", "--out", "{store}", "--add-space", "a=ViT-B-32@openai"], "--space: the index has a space 'a' already"),
    (["build", "--out", "{store}", "--add-space", "Big=ViT-B-32@openai"], "--space: 'Big' is not a space name"),
])
def test_bad_space_options_fail_in_one_line(store_path, capsys, argv, match, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store_path, copy)
    argv = [str(copy) if a == "{store}" else a for a in argv]
    if argv[0] == "query":
        argv[1:1] = ["--index", str(copy)]
    files = sorted(p.name for p in copy.iterdir())
    code, _, err = run(capsys, *argv, "-q")
    assert_one_line_error(code, err, match)
    assert sorted(p.name for p in copy.iterdir()) == files


def test_build_refuses_bad_image_columns(tmp_path, corpus, models, capsys):
    args = ["build", "--prompts", corpus / "prompts.csv", "--space", f"a=local-dir:{models['a']}", "-q"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "s1", "--image-column", "picture")
    assert_one_line_error(code, err, "--image-column: no column 'picture' in the corpus for the images")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,image\na red fox in the snow,nowhere.png\na castle at dusk,also-missing.png\n")
    code, _, err = run(capsys, "build", "--prompts", bad, "--space", f"a=local-dir:{models['a']}", "-q", "--out",
                       tmp_path / "s2", "--image-column", "image")
    assert_one_line_error(code, err, "--image-column: no usable images in column 'image' (2 named, none read")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    code, _, err = run(capsys, *args, "--out", tmp_path / "s3", "--space", "a=x", "--space", "a=y")
    assert_one_line_error(code, err, "--space: space 'a' is named twice")


@pytest.mark.service
@pytest.mark.slow
def test_the_service_searches_spaces_cascades_and_fusions(store_path, r, tmp_path):
    import base64

    from devkit.serve import Server

    images = sorted((DIFFUSIONDB / "images").iterdir())[:2]
    s = Server(store_path, "--max-batch", "4", log=tmp_path / "server.log")
    try:
        with s.client() as c:
            for fields, plan in [({"space": "b"}, SearchPlan(space="b")),
                                 ({"cascade": "a:20,b-image", "min_score": 0.2},
                                  SearchPlan.parse(cascade="a:20,b-image", min_score=0.2)),
                                 ({"fuse": "a,b-image", "fuse_weights": [1, 3]},
                                  SearchPlan.parse(fuse="a,b-image", fuse_weights=[1, 3]))]:
                body = {"image": base64.b64encode(images[0].read_bytes()).decode(), "k": 5, **fields}
                answer = c.post("/query", json=body)
                assert answer.status_code == 200, answer.text
                emb = r.embed_images(images[:1], spaces=plan.spaces("a"))
                nb = r.search(emb.by_space, k=5, plan=plan)
                assert [n["id"] for n in answer.json()["neighbors"]] == nb.ids[0][nb.ids[0] >= 0].tolist()
                assert answer.json()["search"] == plan.describe("a")
            form = c.post("/predict", files=[("image", p.read_bytes()) for p in images],
                          data={"k": "5", "cascade": "b:10,a"}).json()
            plan = SearchPlan.parse(cascade="b:10,a")
            pred = r.predict(r.embed_images(images, spaces=plan.spaces("a")).by_space, k=5, plan=plan)
            np.testing.assert_allclose([x["vector"] for x in form["results"]], pred.vectors, atol=1e-5)
            # clip back: modality image searches the first space's image space (the prompts' images)
            knn = c.post("/knn-service", json={"image": base64.b64encode(images[1].read_bytes()).decode(),
                                               "modality": "image", "num_images": 3}).json()
            own = r.search(r.embed_images(images[1:], spaces=["a-image"]).by_space, k=1,
                           plan=SearchPlan(space="a-image")).ids[0, 0]
            assert knn[0]["id"] == own and knn[0]["similarity"] > 0.99
            bad = c.post("/query", json={"text": "x", "space": "nope"})
            assert bad.status_code == 400 and "no space 'nope'" in bad.json()["error"]
            bad = c.post("/query", json={"text": "x", "cascade": "a:5"})
            assert bad.status_code == 400 and "A:N,B" in bad.json()["error"]
        metrics = s.metrics()
        passes = {dict(labels).get("model") for (name, labels), v in metrics.items()
                  if name == "nearest_prompt_forward_pass_size_count" and v > 0}
        assert {"clip", "clip-b"} <= passes  # one worker per CLIP model
    finally:
        assert s.stop() in (0, -15), s.log.read_text()[-2000:]


def test_a_version_3_store_answers_as_before_and_a_change_writes_version_4(store_dir, tmp_path, clip_encoder, minilm):
    from dataclasses import replace

    old = tmp_path / "v3"
    shutil.copytree(store_dir, old)
    path = old / index_store.format.MANIFEST
    m = replace(index_store.Manifest.from_dict(json.loads(path.read_text())), format_version=3).to_dict()
    assert "spaces" not in m and m["index"]["type"] == "flat"  # version 3's layout: one space, models.clip
    path.write_text(json.dumps(m))
    a = Retriever.open(old, clip=clip_encoder, minilm=minilm)
    b = Retriever.open(store_dir, clip=clip_encoder, minilm=minilm)
    assert a.store.manifest.format_version == 3 and a.store.spaces == ["clip"]
    q = a.embed_texts(["a castle at dusk", "portrait of a cat"])
    for space, queries in (("clip", q), ("minilm", a.embed_texts(["a red fox"], space="minilm"))):
        np.testing.assert_array_equal(a.search(queries, k=10, space=space).ids, b.search(queries, k=10, space=space).ids)
    indexer.remove(old, matching="(?i)castle", progress=False)
    changed = Retriever.open(old, clip=clip_encoder, minilm=minilm)
    assert changed.store.manifest.format_version == 4 and changed.store.spaces == ["clip"]
    nb = changed.search(q, k=10)
    assert not any("castle" in p.lower() for p in changed.prompts(nb.ids.ravel()) if p)
