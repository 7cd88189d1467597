"""The composer: fragment mining against a brute-force count, composition against hand-built cases whose
best chain is known, the version-1 store compatibility, the CoCa captioner's code path, the eval rows
and the interrogate command."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pyarrow as pa
import pytest

from nearest_prompt import index_store
from nearest_prompt.common.text import split_fragments
from nearest_prompt.composer import ComposeOptions, Composer, family
from nearest_prompt.index_store.format import FRAGMENT_FILES, MANIFEST
from nearest_prompt.indexer import fragments as fragments_module
from nearest_prompt.indexer.fragments import mine_fragments
from nearest_prompt.retriever import Neighbors, Retriever

from .conftest import KAGGLE, assert_one_line_error, corpus_slice, need_data, run

IMAGES = sorted(KAGGLE.glob("images/*.png"))


# -- the fragment vocabulary -------------------------------------------------------------------------------
def test_fragments_are_normalised_clauses():
    frags, parents = split_fragments(["A castle, by Greg Rutkowski | trending on ArtStation,  (masterpiece:1.2), 8K!!",
                                      None, "x", "“hyper realistic”, [[detailed]],  ,"])
    assert frags.to_pylist() == ["a castle", "by greg rutkowski", "trending on artstation", "masterpiece", "8k",
                                 "hyper realistic", "detailed"]
    assert parents.tolist() == [0, 0, 0, 0, 0, 3, 3]  # "x" is too short, None has none


@pytest.mark.parametrize("min_count,cap", [(2, 100_000), (3, 10), (1, 25)])
def test_miner_equals_a_brute_force_count(min_count, cap, monkeypatch):
    prompts = corpus_slice(500)
    prompts[7] = prompts[7] + ", highly detailed, HIGHLY DETAILED"  # twice in one prompt counts once
    counts = Counter()
    for p in prompts:
        counts.update(set(split_fragments([p])[0].to_pylist()))
    expect = sorted(((-n, f) for f, n in counts.items() if n >= min_count))[:cap]
    monkeypatch.setattr(fragments_module, "COMPACT_ROWS", 50)  # merge partial counts many times
    blocks = [pa.array(prompts[i:i + 37]) for i in range(0, len(prompts), 37)]
    vocab = mine_fragments(blocks, min_count=min_count, max_fragments=cap)
    assert vocab.fragments.to_pylist() == [f for _, f in expect]
    assert vocab.counts.tolist() == [-n for n, _ in expect]
    assert vocab.stats["distinct"] == len(counts) and vocab.stats["prompts"] == 500
    assert vocab.stats["frequent"] == sum(n >= min_count for n in counts.values())


def test_store_holds_the_vocabulary_of_its_prompts(retriever, minilm):
    store = retriever.store
    frag = store.fragments
    assert store.manifest.format_version == 4 and frag is not None and len(frag) > 0
    prompts = store.table.column("prompt")
    vocab = mine_fragments([prompts.combine_chunks()], min_count=3, max_fragments=100_000)
    assert frag.texts(range(len(frag))) == vocab.fragments.to_pylist()
    assert frag.counts.tolist() == vocab.counts.tolist()
    got = np.asarray(frag.vectors["minilm"][:20], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode(frag.texts(range(20))), atol=2e-3)  # float16 on disk
    q = retriever.embed_texts(["a portrait, highly detailed"], space="clip")
    nb = retriever.search_fragments(q, k=5, space="clip")
    exact = np.asarray(frag.vectors["clip"], dtype=np.float32) @ q[0]
    assert nb.ids[0].tolist() == np.argsort(-exact, kind="stable")[:5].tolist()


# -- composition against hand-built cases -------------------------------------------------------------------
class BagOfWords:
    """An encoder whose vector of a text is its normalised word count: the best chain can be worked out."""

    def __init__(self, words):
        self.dims = {w: i for i, w in enumerate(words)}

    def __call__(self, texts):
        out = np.zeros((len(texts), len(self.dims)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.replace(",", " ").split():
                out[i, self.dims[w]] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class FakeRetriever:
    """What the composer uses of a Retriever, over hand-made prompts, vocabulary and encoder."""

    def __init__(self, prompts, vocabulary, encode):
        self.encode, self._prompts, self.rows = encode, prompts, len(prompts)
        vectors = encode(vocabulary)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        table = pa.table({"id": np.arange(len(vocabulary)), "fragment": vocabulary, "count": [3] * len(vocabulary)})
        d = vectors.shape[1]
        self.store = SimpleNamespace(
            fragments=index_store.Fragments(table, {"minilm": vectors, "clip": vectors}, {"minilm": index, "clip": index}),
            clip_info=SimpleNamespace(context_length=77, embed_dim=d), minilm_info=SimpleNamespace(dim=d))

    def prompts(self, ids):
        return [self._prompts[i] if i >= 0 else None for i in np.asarray(ids).ravel()]

    def embed_texts(self, texts, *, space="clip", batch_size=64):
        return self.encode(list(texts))

    def search_fragments(self, queries, *, k, space="clip"):
        return Retriever.search_fragments(self, queries, k=k, space=space)

    def count_tokens(self, texts):
        return np.array([len(t.replace(",", " ").split()) + 2 for t in texts])


WORDS = ["castle", "dusk", "oil", "fog", "neon", "cat"]


def case(words=WORDS, weights=(3, 2, 1.5, 0, 0, 0)):
    enc = BagOfWords(words)
    r = FakeRetriever(["castle, fog", "neon, dusk"], ["oil", "cat"], enc)
    target = np.asarray(weights, dtype=np.float32)
    target /= np.linalg.norm(target)
    return r, enc, target[None], Neighbors(np.array([[0, 1]]), np.array([[0.9, 0.8]], dtype=np.float32))


def brute_force_best(enc, target, subject, candidates):
    best = (float(enc([subject])[0] @ target), subject)
    for n in range(1, len(candidates) + 1):
        for combo in itertools.permutations(candidates, n):
            text = ", ".join([subject, *combo])
            best = max(best, (float(enc([text])[0] @ target), text))
    return best


@pytest.mark.parametrize("mode", ["best", "fast"])
def test_the_chain_finds_the_best_prompt_of_a_known_case(mode):
    r, enc, target, nb = case()
    [c] = Composer(r, options=ComposeOptions(mode=mode, objective="minilm", start="clause", fragments=50)).compose(target,
                                                                                                   neighbors=nb)
    score, text = brute_force_best(enc, target[0], "castle", ["fog", "neon", "dusk", "oil", "cat"])
    assert c.prompt == "castle, dusk, oil" and c.prompt.split(", ")[0] == text.split(", ")[0]
    assert set(c.prompt.split(", ")) == set(text.split(", "))  # the optimum over every subset and order
    assert c.score == pytest.approx(score, abs=1e-6)
    assert [(x.text, x.source) for x in c.components] == [("castle", "neighbour"), ("dusk", "neighbour"),
                                                          ("oil", "fragment")]
    if mode == "best":  # the trajectory rises at every step
        assert [x.score for x in c.components] == sorted(x.score for x in c.components)
    np.testing.assert_allclose(c.minilm, enc([c.prompt])[0], atol=1e-6)


def test_the_chain_stops_at_the_context_and_starts_from_a_caption():
    r, enc, target, nb = case()
    composer = Composer(r, options=ComposeOptions(objective="minilm", start="clause", fragments=50))
    composer.max_tokens = 5  # room for one more word and its comma
    [c] = composer.compose(target, neighbors=nb)
    assert c.prompt == "castle, dusk"
    [c] = Composer(r, options=ComposeOptions(objective="minilm", fragments=50)).compose(target, neighbors=nb,
                                                                                     captions=["fog"])
    assert c.components[0].source == "caption" and c.prompt == "fog, castle, dusk, oil"


def test_the_default_start_is_the_top_neighbours_prompt_and_its_clauses_are_not_repeated():
    r, enc, target, nb = case(weights=(3, 2, 1.5, 1, 0, 0))
    [c] = Composer(r, options=ComposeOptions(objective="minilm", fragments=50)).compose(target, neighbors=nb)
    assert c.components[0].source == "prompt" and c.components[0].text == "castle, fog"
    assert c.prompt == "castle, fog, dusk, oil"  # "castle" and "fog" are not appended again
    assert c.score == pytest.approx(float(enc([c.prompt])[0] @ target[0]), abs=1e-6)


def test_nothing_is_appended_when_nothing_helps():
    r, enc, target, nb = case(weights=(1, 0, 0, 0, 0, 0))
    [c] = Composer(r, options=ComposeOptions(objective="minilm", start="clause")).compose(target, neighbors=nb)
    assert c.prompt == "castle" and c.score == pytest.approx(1.0)


def test_classic_fills_the_family_slots_with_the_most_similar_candidates():
    words = ["girl", "oil", "painting", "watercolor", "by", "monet", "dali", "trending", "on", "artstation",
             "cubism", "surrealism", "glow", "fog", "rain"]
    enc = BagOfWords(words)
    vocab = ["oil painting", "watercolor", "by monet", "by dali", "trending on artstation", "cubism", "surrealism",
             "glow", "fog", "rain"]
    r = FakeRetriever(["girl, rain"], vocab, enc)
    weights = dict(girl=4, oil=1, painting=1, watercolor=0.2, by=0.5, monet=1, dali=0.1, artstation=0.3,
                   surrealism=1, cubism=0.2, glow=0.6, fog=0.5, rain=0.4)
    target = np.array([weights.get(w, 0.0) for w in words], dtype=np.float32)
    target /= np.linalg.norm(target)
    nb = Neighbors(np.array([[0]]), np.array([[0.9]], dtype=np.float32))
    [c] = Composer(r, options=ComposeOptions(mode="classic", objective="minilm", flavors=2)).compose(
        target[None], neighbors=nb)
    assert c.prompt == "girl, oil painting by monet, trending on artstation, surrealism, glow, fog"
    assert [family(x.text) for x in c.components[1:]] == ["medium", "artist", "site", "movement", "flavor", "flavor"]


# -- version-1 stores, the CLI, the captioner ------------------------------------------------------------------
@pytest.fixture(scope="module")
def v1_store(cli_store_path, tmp_path_factory):
    """The CLI store rewritten as format version 1 (no fragment vocabulary)."""
    old = tmp_path_factory.mktemp("v1") / "store"
    shutil.copytree(cli_store_path, old)
    manifest = index_store.Manifest.from_dict(json.loads((old / MANIFEST).read_text()))
    m = dataclasses.replace(manifest, format_version=1, fragments=None).to_dict()  # version 1's layout
    for name in (*FRAGMENT_FILES, "clip.npy"):  # version 1 kept neither the vocabulary nor the CLIP vectors
        (old / name).unlink()
        del m["files"][name]
    (old / MANIFEST).write_text(json.dumps(m))
    return old


def test_a_version_1_store_answers_what_it_answered_and_composes_from_clauses(v1_store, cli_store_path, clip_encoder,
                                                                              capsys):
    old, new = Retriever.open(v1_store, clip=clip_encoder), Retriever.open(cli_store_path, clip=clip_encoder)
    assert old.store.fragments is None and old.store.manifest.format_version == 1
    q = old.embed_images(IMAGES).vectors
    for space, queries in (("clip", q), ("minilm", old.embed_texts(["a red fox"], space="minilm"))):
        a, b = old.search(queries, k=10, space=space), new.search(queries, k=10, space=space)
        assert (a.ids == b.ids).all()
    np.testing.assert_array_equal(old.predict(q, k=20).vectors, new.predict(q, k=20).vectors)
    assert old.search_fragments(q, k=5).ids.shape == (len(q), 0)
    comps = Composer(old).interrogate(q)
    clauses = set(split_fragments([p for p in old.prompts(old.search(q, k=10).ids.ravel())])[0].to_pylist())
    top = old.prompts(old.search(q, k=1).ids[:, 0])
    for c, first in zip(comps, top):
        assert c.components[0].source == "prompt" and c.components[0].text == first
        assert all(x.source == "neighbour" and x.text in clauses for x in c.components[1:])
    code, out, err = run(capsys, "interrogate", "--index", v1_store, IMAGES[0], "--k", "20", "-q")
    assert code == 0 and out.startswith("image ") and len(out.splitlines()) == 2
    code, out, err = run(capsys, "interrogate", "--index", v1_store, IMAGES[0], "--k", "20")
    assert "no fragment vocabulary (format version 1)" in err and "rebuild" in err
    code, out, _ = run(capsys, "info", "--index", v1_store)
    assert code == 0 and "v1" in out


def test_interrogate_json_holds_components_scores_and_the_minilm_vector(cli_store_path, capsys, minilm, clip_encoder):
    code, out, err = run(capsys, "interrogate", "--index", cli_store_path, KAGGLE / "images", "--k", "20", "--json", "-q")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["results"]) == len(IMAGES) and doc["mode"] == "best" and doc["objective"] == "minilm"
    r = Retriever.open(cli_store_path, clip=clip_encoder)
    for res in doc["results"]:
        assert res["prompt"] == ", ".join(c["text"] for c in res["components"])
        vec = np.array(res["minilm"], dtype=np.float32)
        np.testing.assert_allclose(vec, minilm.encode([res["prompt"]])[0], atol=1e-5)
        clip_sim = float(r.embed_texts([res["prompt"]])[0] @ r.embed_images([res["image"]]).vectors[0])
        assert res["clip_similarity"] == pytest.approx(clip_sim, abs=1e-4)
        assert res["tokens"] <= 77
    for mode in ("fast", "classic"):
        code, out, err = run(capsys, "interrogate", "--index", cli_store_path, IMAGES[0], "--mode", mode,
                             "--objective", "clip", "--k", "20", "--json", "-q")
        res = json.loads(out)["results"][0]
        assert code == 0 and res["objective"] == "clip" and res["score"] == pytest.approx(res["clip_similarity"])


def test_captions_csv_names_missing_and_empty_captions(cli_store_path, capsys, tmp_path):
    stems = [p.stem for p in IMAGES]
    csv = tmp_path / "captions.csv"
    csv.write_text("imgId,caption\n" + f"{stems[0]},a cat on a wall\n{stems[1]},\nnot_an_image,a dog\n")
    code, out, err = run(capsys, "interrogate", "--index", cli_store_path, *IMAGES[:3], "--captions", csv, "--k", "20",
                         "--json")
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res[0]["caption"] == "a cat on a wall" and res[0]["prompt"].startswith("a cat on a wall")
    assert res[1]["caption"] is None and res[2]["caption"] is None
    assert f"empty caption and go without one (e.g. {stems[1]})" in err and "e.g. not_an_image" in err


@pytest.fixture(scope="session")
def tiny_coca_dir(tmp_path_factory):
    from devkit.tiny_clip import make_tiny_coca

    return make_tiny_coca(tmp_path_factory.mktemp("tiny_coca"), seed=0)


def test_tiny_coca_captions_through_local_dir(tiny_coca_dir, cli_store_path, capsys, tmp_path):
    from nearest_prompt.encoders.captioner import caption_files, load_captioner, parse_captioner_spec

    captioner = load_captioner(parse_captioner_spec(f"local-dir:{tiny_coca_dir}"), device="cpu")
    captions = caption_files(captioner, IMAGES[:2])
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert captions == caption_files(captioner, IMAGES[:2])  # greedy: deterministic
    code, out, err = run(capsys, "interrogate", "--index", cli_store_path, *IMAGES[:2], "--captioner",
                         f"local-dir:{tiny_coca_dir}", "--k", "20", "--json", "-q")
    assert code == 0, err
    for res, cap in zip(json.loads(out)["results"], captions):
        assert res["caption"] == cap and res["components"][0]["source"] == "caption"
    code, out, err = run(capsys, "predict", "--index", cli_store_path, *IMAGES[:2], "--captioner",
                         f"local-dir:{tiny_coca_dir}", "--out", tmp_path / "p.npy", "--k", "20", "-q")
    assert code == 0, err
    got = np.load(tmp_path / "p.npy")
    r = Retriever.open(cli_store_path)
    expect = r.predict(r.embed_images(IMAGES[:2]).vectors, k=20, captions=captions).vectors
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_captioner_errors_are_one_line(cli_store_path, clip_spec, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "interrogate", "--index", cli_store_path, IMAGES[0], "--captioner", clip_spec, "--k", "20",
                       "-q")
    assert_one_line_error(code, err, "--captioner: ")
    assert "is not a captioning model" in err
    code, _, err = run(capsys, "interrogate", "--index", cli_store_path, IMAGES[0], "--captioner", "coca_ViT-B-32",
                       "--captioner-pretrained", "laion2b_s13b_b90k", "-q")
    assert_one_line_error(code, err, "could not download captioner weights")
    assert "--captioner-pretrained FILE" in err and "local-dir:" in err
    code, _, err = run(capsys, "predict", "--index", cli_store_path, IMAGES[0], "--out", "x.csv", "--captioner",
                       "coca_nope", "-q")
    assert_one_line_error(code, err, "--captioner: unknown CLIP model 'coca_nope'")


# -- eval rows -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_has_the_composed_row_in_every_route(cli_store_path, capsys, tmp_path, minilm):
    held = tmp_path / "held.txt"
    held.write_text("\n".join(corpus_slice(12, offset=5000)) + "\n")
    rows = {}
    for route in (["--pairs", KAGGLE / "prompts.csv"], ["--text-oracle", "--prompts", held],
                  ["--text-degraded", "--prompts", held]):
        report = tmp_path / f"{route[0][2:]}.json"
        code, out, err = run(capsys, "eval", "--index", cli_store_path, *route, "--k", "20", "--report", report, "-q")
        assert code == 0, err
        assert "composed_prompt" in out
        rows[route[0]] = json.loads(report.read_text())
    # the pairs row is what `interrogate` gives the same images: MiniLM(composed prompt) against the truth
    code, out, _ = run(capsys, "interrogate", "--index", cli_store_path, *IMAGES, "--json", "-q")
    by_image = {res["image"]: np.array(res["minilm"]) for res in json.loads(out)["results"]}
    with open(KAGGLE / "prompts.csv", newline="") as f:
        truth = {row["imgId"]: row["prompt"] for row in csv.DictReader(f)}
    for item in rows["--pairs"]["items"]:
        vec = by_image[item["item"]]
        truth_vec = minilm.encode([truth[Path(item["item"]).stem]])[0]
        assert item["composed_prompt"] == pytest.approx(float(vec @ truth_vec / np.linalg.norm(vec)), abs=1e-4)
    for name in ("--text-oracle", "--text-degraded"):
        s = rows[name]["summary"]["composed_prompt"]
        assert s["n"] == 12 and -1 <= s["mean"] <= 1


def test_the_families_of_a_real_100k_vocabulary():
    """The classic mode's rules on the vocabulary of the first 100,000 prompts of the shared corpus: who made
    it is an artist however it is said, and a long description is never a medium, a movement or a site."""
    import re

    need_data()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from fragment_families import vocabulary

    from nearest_prompt.composer.families import FAMILIES, MAX_WORDS, family

    fragments = vocabulary(100_000)
    kinds = {f: family(f) for f in fragments}
    counts = {name: sum(1 for k in kinds.values() if k == name) for name in FAMILIES}
    assert len(fragments) > 10_000 and all(counts[name] >= 100 for name in FAMILIES), counts
    made_by = re.compile(r"^(?:\S+ ){0,3}(painted|drawn|photographed|illustrated|art|artwork|painting|photo) by \S")
    said_otherwise = [f for f in fragments if made_by.match(f) and kinds[f] != "artist"
                      and not re.search(r" by (a|an|the|piece)\b", f)]
    assert said_otherwise == [], said_otherwise[:10]
    for name, limit in MAX_WORDS.items():
        too_long = [f for f, k in kinds.items() if k == name and len(f.split()) > limit]
        assert too_long == [], (name, too_long[:5])
    for text, expect in [("painted by greg rutkowski", "artist"), ("drawn by moebius", "artist"),
                         ("surrounded by fireflies", "flavor"), ("oil painting", "medium"),
                         ("a beautiful oil painting of a castle on a hill at dusk", "flavor"),
                         ("trending on artstation", "site"), ("art nouveau", "movement")]:
        assert family(text) == expect, text
