"""The HTTP service as a user meets it: a real ``nearest-prompt serve`` process on loopback, talked to
over HTTP (httpx, and clip-retrieval's own ClipClient), with bad requests, auth, reload, shutdown,
metrics, bounded load tests and a schema-driven fuzz. Concurrency is checked against what the server
shows (its metrics, its log), never against how long something took."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from devkit.serve import CpuHog, HealthProbe, Server, wait_for
from nearest_prompt import index_store

from .conftest import IN_CI, KAGGLE, assert_one_line_error, corpus_slice, need_data, run

pytestmark = pytest.mark.service
IMAGES = sorted(KAGGLE.glob("images/*.png"))
GRACEFUL = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down gracefully
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def server(cli_store_path, tmp_path_factory):
    need_data()
    s = Server(cli_store_path, "--max-batch", "8", "--max-wait-ms", "5",
               log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() in GRACEFUL, s.log.read_text()[-2000:]


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_health_info_the_page_and_the_docs_offline(server, cli_store_path):
    with server.client() as c:
        rows = index_store.open_store(cli_store_path).rows
        assert c.get("/health").json() == {"status": "ok", "rows": rows, "token_required": False}
        info = c.get("/info").json()
        assert info["rows"] == rows and info["memory_mapped"] == {"clip": True, "minilm": True}
        assert "random weights" in info["note"] and info["format"] == "nearest-prompt-index"
        page = c.get("/")
        assert page.status_code == 200 and "nearest-prompt" in page.text and "/static/app.js" in page.text
        assert c.head("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200 and c.get("/static/style.css").status_code == 200
        docs = c.get("/docs").text  # Swagger UI from the installed package, not a CDN
        assets = [a for a in ("/static-offline-docs/swagger-ui-bundle.js", "/static-offline-docs/swagger-ui.css")
                  if a in docs]
        assert len(assets) == 2 and "cdn" not in docs.lower(), docs
        for asset in assets:
            r = c.get(asset)
            assert r.status_code == 200 and len(r.content) > 100_000
        doc = c.get("/openapi.json").json()
        assert {"/health", "/info", "/query", "/predict", "/interrogate", "/knn-service", "/metadata", "/indices-list",
                "/metrics", "/admin/reload"} <= set(doc["paths"])
        for path in ("/query", "/predict", "/interrogate"):  # both bodies of one operation, from the handlers
            content = doc["paths"][path]["post"]["requestBody"]["content"]
            assert set(content) == {"application/json", "multipart/form-data"}, (path, content)


def test_query_by_image_text_and_embedding(server, cli_store_path, clip_encoder):
    store = index_store.open_store(cli_store_path)
    with server.client() as c:
        multipart = c.post("/query", files={"image": IMAGES[0].read_bytes()}, data={"k": "5"}).json()
        as_json = c.post("/query", json={"image": b64(IMAGES[0]), "k": 5}).json()
        assert multipart == as_json and len(as_json["neighbors"]) == 5
        wrapped = base64.encodebytes(IMAGES[0].read_bytes()).decode()  # line breaks, as the base64 tool writes
        assert "\n" in wrapped and c.post("/query", json={"image": wrapped, "k": 5}).json() == as_json
        from nearest_prompt.retriever import Retriever

        r = Retriever(store, clip=clip_encoder)
        nb = r.search(r.embed_images([IMAGES[0]]).vectors, k=5)
        assert [n["id"] for n in as_json["neighbors"]] == nb.ids[0].tolist()
        np.testing.assert_allclose([n["score"] for n in as_json["neighbors"]], nb.scores[0], atol=1e-5)
        assert [n["prompt"] for n in as_json["neighbors"]] == store.prompts(nb.ids[0])
        prompt = store.prompts([7])[0]
        got = c.post("/query", json={"text": prompt, "k": 3}).json()["neighbors"]
        assert got[0]["prompt"] == prompt and got[0]["score"] == pytest.approx(1.0, abs=1e-4)
        vec = store.indexes["clip"].reconstruct(7) * 3.0  # any length: normalised by the server
        got = c.post("/query", json={"embedding": vec.tolist(), "k": 2}).json()["neighbors"]
        assert got[0]["id"] == 7 and got[0]["score"] == pytest.approx(1.0, abs=1e-4)
        curl_style = c.post("/query", content=json.dumps({"text": prompt, "k": 3}),  # what curl -d sends
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert curl_style.json()["neighbors"][0]["prompt"] == prompt


def test_predict_equals_the_cli(server, cli_store_path, capsys, tmp_path):
    npy = tmp_path / "cli.npy"
    args = ["--k", "20", "--weighting", "softmax", "--temperature", "0.05"]
    code, _, err = run(capsys, "predict", "--index", cli_store_path, *IMAGES, "--out", npy, *args, "-q")
    assert code == 0, err
    cli = np.load(npy)
    conf = [ln.split(",") for ln in (tmp_path / "cli.npy.confidence.csv").read_text().splitlines()[1:]]
    with server.client() as c:
        multipart = c.post("/predict", files=[("image", p.read_bytes()) for p in IMAGES],
                           data={"k": "20", "weighting": "softmax", "temperature": "0.05"}).json()
        as_json = c.post("/predict", json={"images": [b64(p) for p in IMAGES], "k": 20, "weighting": "softmax",
                                           "temperature": 0.05}).json()
    for res in (multipart, as_json):
        got = np.array([r["vector"] for r in res["results"]], dtype=np.float32)
        # the CLIP image encoder sees batches of other sizes: equal up to float rounding
        np.testing.assert_allclose(got, cli, atol=2e-6)
        np.testing.assert_allclose([r["confidence"] for r in res["results"]], [float(c[1]) for c in conf], atol=2e-6)
        np.testing.assert_allclose([r["top_score"] for r in res["results"]], [float(c[2]) for c in conf], atol=2e-6)


def test_predict_with_captions(server, cli_store_path, capsys, tmp_path):
    caps = tmp_path / "caps.csv"
    caps.write_text(f"imgId,caption\n{IMAGES[0].stem},a crater on a planet\n")
    npy = tmp_path / "fused.npy"
    code, _, err = run(capsys, "predict", "--index", cli_store_path, IMAGES[0], IMAGES[1], "--out", npy, "--k", "10",
                       "--captions", caps, "--caption-space", "minilm", "-q")
    assert code == 0, err
    with server.client() as c:
        res = c.post("/predict", json={"images": [b64(IMAGES[0]), b64(IMAGES[1])], "k": 10,
                                       "captions": ["a crater on a planet", None], "caption_space": "minilm"}).json()
        form = c.post("/predict", files=[("image", IMAGES[0].read_bytes()), ("image", IMAGES[1].read_bytes())],
                      data={"k": "10", "captions": json.dumps(["a crater on a planet", None]),
                            "caption_space": "minilm"}).json()
    for answer in (res, form):
        np.testing.assert_allclose(np.array([r["vector"] for r in answer["results"]]), np.load(npy), atol=2e-6)


def test_interrogate_equals_the_cli(server, cli_store_path, capsys):
    for mode in ("best", "fast"):
        code, out, err = run(capsys, "interrogate", "--index", cli_store_path, IMAGES[0], "--k", "20", "--mode", mode,
                             "--json", "-q")
        assert code == 0, err
        cli = json.loads(out)["results"][0]
        with server.client() as c:
            multipart = c.post("/interrogate", files={"image": IMAGES[0].read_bytes()},
                               data={"k": "20", "mode": mode}).json()
            as_json = c.post("/interrogate", json={"image": b64(IMAGES[0]), "k": 20, "mode": mode}).json()
        for res in (multipart, as_json):  # the server's passes hold at most --max-batch texts: equal up to rounding
            assert res["prompt"] == cli["prompt"]
            assert [{**x, "similarity": None, "score": None} for x in res["components"]] == \
                [{**x, "similarity": None, "score": None} for x in cli["components"]]
            for key in ("similarity", "score"):
                np.testing.assert_allclose([x[key] for x in res["components"]], [x[key] for x in cli["components"]],
                                           atol=1e-5)
            np.testing.assert_allclose(res["minilm"], cli["minilm"], atol=2e-6)
            assert res["clip_similarity"] == pytest.approx(cli["clip_similarity"], abs=1e-5)
            assert "random weights" in res["note"]
        if mode == "fast":  # fast mode's scores are estimates but for the last one, and say so
            flags = [part["estimated"] for part in cli["components"]]
            assert flags[0] is False and flags[-1] is False and all(flags[1:-1]), cli["components"]
    with server.client() as c:
        res = c.post("/interrogate", json={"image": b64(IMAGES[1]), "k": 20, "caption": "a crater on the moon"}).json()
    assert res["caption"] == "a crater on the moon" and res["prompt"].startswith("a crater on the moon")
    assert res["components"][0] == {**res["components"][0], "source": "caption", "text": "a crater on the moon"}


CLIP_CLIENT = Path(sys.prefix) / "clip-retrieval" / "clip_retrieval" / "clip_client.py"  # scripts/test.sh puts it


def _clip_client():
    """clip-retrieval's own client module, loaded from its file (the package's ``__init__`` imports its whole
    server stack, which this project does not install)."""
    if not CLIP_CLIENT.is_file():
        if IN_CI:
            pytest.fail(f"clip-retrieval's client is not at {CLIP_CLIENT} (scripts/test.sh puts it there)")
        pytest.skip(f"clip-retrieval's client is not at {CLIP_CLIENT}: pip install --no-deps --target "
                    f"{CLIP_CLIENT.parents[1]} clip-retrieval")
    mod_spec = importlib.util.spec_from_file_location("clip_client", CLIP_CLIENT)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def test_clip_retrievals_own_client_gets_prompts(server, cli_store_path):
    cc = _clip_client()
    store = index_store.open_store(cli_store_path)
    name = cli_store_path.name
    with server.client() as c:
        assert c.get("/indices-list").json() == [name]
    client = cc.ClipClient(url=server.url + "/knn-service", indice_name=name, num_images=4)
    prompt = store.prompts([3])[0]
    res = client.query(text=prompt)
    assert len(res) == 4 and res[0]["caption"] == prompt and res[0]["id"] == 3
    assert res[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    by_image = client.query(image=str(IMAGES[0]))
    assert len(by_image) == 4 and all(isinstance(r["caption"], str) for r in by_image)
    by_vec = client.query(embedding_input=store.indexes["clip"].reconstruct(9).tolist())
    assert by_vec[0]["id"] == 9
    text_client = cc.ClipClient(url=server.url + "/knn-service", indice_name=name, num_images=2,
                                modality=cc.Modality.TEXT)
    assert text_client.query(text=prompt)[0]["id"] == 3
    with server.client() as c:
        meta = c.post("/metadata", json={"ids": [3, 9], "indice_name": name}).json()
        assert meta == [{"id": 3, "metadata": {"caption": prompt}},
                        {"id": 9, "metadata": {"caption": store.prompts([9])[0]}}]
        refused = c.post("/knn-service", json={"image_url": "http://169.254.169.254/latest", "modality": "image",
                                               "num_images": 2, "indice_name": name})
        assert refused.status_code == 400 and "--allow-image-urls" in refused.json()["error"]


BAD_REQUESTS = [  # (method, path, kwargs, status, words in the error)
    ("post", "/query", {"content": b"not json"}, 400, "not valid JSON"),
    ("post", "/query", {"content": b""}, 400, "empty body"),
    ("post", "/query", {"json": {"image": "!!!"}}, 400, "not valid base64"),
    ("post", "/query", {"json": {"image": base64.b64encode(b"hello").decode()}}, 400, "not a readable image"),
    ("post", "/query", {"json": {"text": 42}}, 422, "text"),
    ("post", "/query", {"json": {"text": "x", "colour": "red"}}, 422, "colour"),
    ("post", "/query", {"json": {"text": "x", "k": 0}}, 422, "k"),
    ("post", "/query", {"json": {"text": "x", "k": 9999}}, 400, "larger than the index"),
    ("post", "/query", {"json": {"text": "x", "image": "AAAA"}}, 400, "exactly one"),
    ("post", "/query", {"json": {}}, 400, "exactly one"),
    ("post", "/query", {"json": {"embedding": [1.0, 2.0]}}, 400, "numbers"),
    ("post", "/query", {"json": [1, 2]}, 422, "body"),
    ("post", "/query", {"files": {"photo": b"x"}}, 422, "unknown file field"),
    ("post", "/query", {"files": [("image", b"a"), ("image", b"b")]}, 400, "one image"),
    ("post", "/predict", {"json": {"images": []}}, 422, "images"),
    ("post", "/predict", {"json": {"images": ["AAAA"], "k": 5, "captions": ["a", "b"]}}, 400, "captions"),
    ("post", "/predict", {"json": {"images": ["AAAA"], "weighting": "median"}}, 422, "weighting"),
    ("post", "/predict", {"files": {"image": b""}, "data": {"k": "5"}}, 400, "empty"),
    ("post", "/interrogate", {"json": {}}, 422, "image"),
    ("post", "/interrogate", {"json": {"image": "AAAA", "mode": "longest"}}, 422, "mode"),
    ("post", "/interrogate", {"json": {"image": base64.b64encode(b"hello").decode(), "k": 20}}, 400,
     "not a readable image"),
    ("post", "/interrogate", {"json": {"image": "AAAA", "k": 9999}}, 400, "larger than the index"),
    ("post", "/interrogate", {"files": {"image": b"x"}, "data": {"objective": "beauty"}}, 422, "objective"),
    ("post", "/knn-service", {"json": {"text": "x", "indice_name": "laion5B"}}, 400, "no index 'laion5B'"),
    ("post", "/knn-service", {"json": {"num_images": 2}}, 400, "exactly one"),
    ("post", "/metadata", {"json": {"ids": [10 ** 9]}}, 400, "not a row"),
    ("post", "/admin/reload", {}, 403, "--token"),
    ("get", "/nowhere", {}, 404, "Not Found"),
    # no request reaches a 500 by its shape
    ("post", "/query", {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400, "nests"),
    ("post", "/query", {"content": b'{"embedding": ' + b"[" * 1000 + b"]" * 1000 + b"}",
                        "headers": {"content-type": "application/json"}}, 400, "nests"),
    ("post", "/predict", {"files": {"image": b"x"}, "data": {"captions": "[bad json"}}, 400, "captions: not valid JSON"),
    ("post", "/predict", {"files": {"image": b"x"}, "data": {"captions": '["a", 3]'}}, 400, "captions: must be"),
    ("post", "/query", {"content": b'{"text": "x", "k": ' + b"9" * 5000 + b"}"}, 422, "k: Input should be less than"),
    ("post", "/query", {"json": {"text": ""}}, 400, "text: empty"),
    ("post", "/query", {"json": {"text": "   "}}, 400, "text: empty"),
    ("post", "/query", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("post", "/predict", {"json": {"images": ["AAAA"], "caption_images": True}}, 400, "no captioner"),
]


@pytest.mark.parametrize("method,path,kwargs,status,words", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, method, path, kwargs, status, words):
    with server.client() as c:
        r = getattr(c, method)(path, **kwargs)
        assert r.status_code == status, r.text
        body = r.json()
        assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"], body
        assert c.get("/health").status_code == 200


def test_truncated_and_oversized_images(server, tmp_path):
    from PIL import Image

    with server.client() as c:
        data = IMAGES[0].read_bytes()
        r = c.post("/query", files={"image": data[: len(data) // 2]})
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        big = tmp_path / "big.png"
        Image.new("1", (10_000, 9_000)).save(big)  # 90M pixels in a few KB: over the default limit
        r = c.post("/query", files={"image": big.read_bytes()})
        message = r.json()["error"]
        assert r.status_code == 413 and "--max-pixels" in message
        assert message.count("pixels") <= 2 and "89,478,485" in message and "178" not in message, message
        r = c.post("/query", content=b"{" + b" " * (21 << 20) + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert c.get("/health").status_code == 200


def test_chunked_bodies_are_read_within_the_limit(server):
    def chunks(data: bytes, size: int = 4096):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    body = json.dumps({"image": b64(IMAGES[0]), "k": 3}).encode()
    with server.client() as c:
        r = c.post("/query", content=chunks(body), headers={"content-type": "application/json"})
        assert r.status_code == 200 and len(r.json()["neighbors"]) == 3
        assert r.json() == c.post("/query", json={"image": b64(IMAGES[0]), "k": 3}).json()
        big = b'{"text": "' + b"x" * (21 << 20) + b'"}'
        r = c.post("/query", content=chunks(big, 1 << 20), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]


def test_metrics_show_requests_passes_and_queues(server):
    with server.client() as c:
        c.post("/query", json={"text": "a cat", "k": 2})
        c.post("/query", json={"text": "", "k": 2})
    m = server.metrics()
    assert m[("nearest_prompt_requests_total", (("endpoint", "/query"), ("status", "200")))] >= 1
    assert m[("nearest_prompt_errors_total", (("endpoint", "/query"),))] >= 1
    assert m[("nearest_prompt_forward_pass_size_count", (("model", "clip"),))] >= 1
    assert ("nearest_prompt_queue_depth", (("model", "minilm"),)) in m
    assert ("nearest_prompt_admitted_items", ()) in m
    assert m[("nearest_prompt_requests_in_flight", (("endpoint", "/metrics"),))] == 1  # this very request


@pytest.mark.slow
def test_load_16_clients_50_requests_each(server, cli_store_path, clip_encoder):
    """Bounded: 800 requests on loopback; zero errors, answers equal the offline ones, memory steady."""
    from nearest_prompt.retriever import Retriever

    r = Retriever(index_store.open_store(cli_store_path), clip=clip_encoder)
    expect = {p: r.search(r.embed_images([p]).vectors, k=5).ids[0].tolist() for p in IMAGES}
    blobs = {p: p.read_bytes() for p in IMAGES}
    with server.client() as c:  # warm-up, then the baseline memory
        for p in IMAGES:
            c.post("/query", files={"image": blobs[p]}, data={"k": "5"})
    before = server.rss()
    errors, wrong = [], []

    def client(n: int) -> None:
        with server.client() as c:
            for i in range(50):
                p = IMAGES[(n + i) % len(IMAGES)]
                resp = c.post("/query", files={"image": blobs[p]}, data={"k": "5"})
                if resp.status_code != 200:
                    errors.append(resp.text)
                elif [x["id"] for x in resp.json()["neighbors"]] != expect[p]:
                    wrong.append(p)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    assert errors == [] and wrong == []
    after = server.rss()
    assert after < before * 1.25 + (50 << 20), (before, after)
    assert server.metric("nearest_prompt_forward_pass_max", model="clip") <= 8  # --max-batch 8


@pytest.mark.slow
def test_requests_share_forward_passes(cli_store_path, tmp_path):
    """Four text queries against --max-batch 4 and a long --max-wait-ms: the pass runs as soon as the fourth
    arrives, as one forward pass of four (the metrics say so)."""
    need_data()
    s = Server(cli_store_path, "--max-batch", "4", "--max-wait-ms", "120000", log=tmp_path / "server.log")
    try:
        texts = corpus_slice(4, offset=3000)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: s.client().post("/query", json={"text": t, "k": 1}).json(), texts))
        assert [a["neighbors"][0]["prompt"] for a in answers] == texts
        assert s.metric("nearest_prompt_forward_pass_size_count", model="clip") == 1
        assert s.metric("nearest_prompt_forward_pass_size_sum", model="clip") == 4
    finally:
        assert s.stop() in GRACEFUL


@pytest.mark.slow
def test_schema_fuzz_finds_no_5xx(server):
    """schemathesis, from the server's own OpenAPI document: bounded examples per operation."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures, calls = [], {}

    def fuzz(op):
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(base_url=server.url, timeout=60)
            calls[op.label] = calls.get(op.label, 0) + 1
            if response.status_code >= 500:
                failures.append((op.label, response.status_code, response.text[:200]))
            case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])

        check()

    for result in schema.get_all_operations():
        if result.ok().path != "/admin/reload":
            fuzz(result.ok())
    assert failures == []
    assert len(calls) >= 8 and sum(calls.values()) >= 100, calls  # every operation was exercised
    with server.client() as c:
        assert c.get("/health").status_code == 200


@pytest.mark.slow
def test_token_reload_and_graceful_shutdown(tmp_path, clip_spec, capsys):
    need_data()
    corpus = tmp_path / "a.txt"
    corpus.write_text("\n".join(corpus_slice(40, offset=5000)) + "\n")
    out = tmp_path / "store"
    assert run(capsys, "build", "--prompts", corpus, "--out", out, "--clip", clip_spec, "--no-near-dedup", "-q")[0] == 0
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    s = Server(out, "--token-file", str(token_file), "--max-wait-ms", "3000", log=tmp_path / "server.log")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with s.client() as c:
            assert c.get("/health").json()["token_required"] is True  # public, and says a token is needed
            assert c.get("/").status_code == 200  # the page is public; it asks for the token
            for path in ("/info", "/metrics"):
                r = c.get(path)
                assert r.status_code == 401 and "token" in r.json()["error"]
                assert r.headers["www-authenticate"] == "Bearer"
                assert c.get(path, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
                assert c.get(path, headers=auth).status_code == 200
            assert c.post("/query", json={"text": "x"}).status_code == 401
            assert c.post("/knn-service", json={"text": "x"}).status_code == 401  # clip back too, unless opened
            # rebuild into the same --out, then reload through the admin endpoint
            corpus.write_text("\n".join(corpus_slice(25, offset=6000)) + "\n")
            assert run(capsys, "build", "--prompts", corpus, "--out", out, "--clip", clip_spec, "--no-near-dedup",
                       "-q")[0] == 0
            assert c.get("/health").json()["rows"] == 40  # still the old one
            assert c.post("/admin/reload").status_code == 401
            assert c.post("/admin/reload", headers=auth).json() == {"status": "reloaded", "rows": 25}
            assert c.post("/query", json={"text": corpus_slice(25, offset=6000)[3], "k": 1},
                          headers=auth).json()["neighbors"][0]["id"] == 3
            # a store that fails validation is refused, and the old one keeps serving
            backup = tmp_path / "backup"
            shutil.copytree(out, backup)
            (out / "manifest.json").write_text("{ broken")
            r = c.post("/admin/reload", headers=auth)
            assert r.status_code == 409 and "old store keeps serving" in r.json()["error"]
            s.signal(signal.SIGHUP)  # refused too, and logged
            wait_for(lambda: s.logged("reload on SIGHUP refused"), what="the refused reload in the log")
            assert c.get("/health").json()["rows"] == 25
            # SIGHUP after a good rebuild swaps it in; a request in flight finishes on the old store
            shutil.rmtree(out)
            corpus.write_text("\n".join(corpus_slice(30, offset=7000)) + "\n")
            assert run(capsys, "build", "--prompts", corpus, "--out", out, "--clip", clip_spec, "--no-near-dedup",
                       "-q")[0] == 0
            old_prompt = corpus_slice(25, offset=6000)[5]  # only in the store being served
            in_flight = []

            def ask_old() -> None:
                with s.client() as c2:  # waits up to 3 s for its forward pass, holding the store it started on
                    in_flight.append(c2.post("/query", headers=auth, json={"text": old_prompt, "k": 1}).json())

            t = threading.Thread(target=ask_old)
            t.start()
            wait_for(lambda: s.metric("nearest_prompt_queue_depth", auth, model="clip") >= 1,
                     what="the query to wait for its forward pass")
            s.signal(signal.SIGHUP)
            t.join(120)
            assert in_flight[0]["neighbors"][0]["prompt"] == old_prompt  # finished on the old store
            assert in_flight[0]["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)
            wait_for(lambda: c.get("/health").json()["rows"] == 30, what="the reloaded store")
            # SIGTERM while requests are in flight: they finish, then the server exits cleanly
            results = []

            def slow() -> None:
                with s.client() as c2:
                    results.append(c2.post("/predict", headers=auth, json={"images": [b64(p) for p in IMAGES],
                                                                           "k": 5}).status_code)

            threads = [threading.Thread(target=slow) for _ in range(3)]
            for t in threads:
                t.start()
            wait_for(lambda: s.metric("nearest_prompt_requests_in_flight", auth, endpoint="/predict") == 3,
                     what="three predicts in flight")
            s.signal(signal.SIGTERM)
            for t in threads:
                t.join(120)
            assert results == [200, 200, 200]
            assert s.proc.wait(timeout=60) in GRACEFUL
    finally:
        s.stop()
    log = (tmp_path / "server.log").read_text()
    assert "reload on SIGHUP refused" in log and "Traceback" not in log


@pytest.mark.slow
def test_a_full_server_answers_503_with_retry_after(cli_store_path, tmp_path):
    """--queue-size 2: a predict of two images holds it all while it waits for its forward pass, so a third
    item is refused at once; a request larger than the whole queue is 413."""
    need_data()
    s = Server(cli_store_path, "--queue-size", "2", "--max-batch", "4", "--max-wait-ms", "20000",
               log=tmp_path / "server.log")
    try:
        first = []
        t = threading.Thread(target=lambda: first.append(s.client().post(
            "/predict", json={"images": [b64(IMAGES[0]), b64(IMAGES[1])], "k": 3})))
        t.start()
        wait_for(lambda: s.metric("nearest_prompt_admitted_items") == 2, what="the first predict to be admitted")
        with s.client() as c:
            busy = c.post("/query", json={"text": "a castle", "k": 3})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
            assert c.get("/health").status_code == 200
            r = c.post("/predict", json={"images": [b64(IMAGES[0])] * 3, "k": 3})  # more than the whole queue
            assert r.status_code == 413 and "send fewer per request" in r.json()["error"]
        t.join(120)
        assert first[0].status_code == 200 and len(first[0].json()["results"]) == 2
    finally:
        assert s.stop() in GRACEFUL


@pytest.mark.slow
def test_a_flood_of_interrogate_and_captioned_predicts_stays_bounded(cli_store_path, tmp_path):
    """64 /interrogate and 64 /predict-with-captions at once against --queue-size 16, on a machine kept busy
    by two spinning processes: only 200s and 503s (with Retry-After), /health answers within 1 s all
    along, resident memory stays within 400 MB of its start, and no forward pass exceeds --max-batch."""
    need_data()
    s = Server(cli_store_path, "--queue-size", "16", "--max-batch", "8", log=tmp_path / "server.log")
    try:
        image = b64(IMAGES[0])
        with s.client() as c:  # warm every path once
            assert c.post("/interrogate", json={"image": image, "k": 5}).status_code == 200
            assert c.post("/predict", json={"images": [image], "k": 5, "captions": ["a crater"]}).status_code == 200
        before = s.rss()
        peak, stop = [before], threading.Event()

        def watch_memory() -> None:
            while not stop.wait(0.1):
                peak.append(s.rss())

        def one(i: int):
            with s.client() as c:
                if i % 2:
                    return c.post("/interrogate", json={"image": image, "k": 5, "mode": "fast" if i % 4 == 1 else "best"})
                return c.post("/predict", json={"images": [image, image], "k": 5, "captions": [f"a crater {i}", None],
                                                "caption_space": "minilm" if i % 4 == 0 else "clip"})

        watcher = threading.Thread(target=watch_memory)
        with CpuHog(2), HealthProbe(s.url, tmp_path) as probe:
            watcher.start()
            with ThreadPoolExecutor(128) as pool:
                answers = list(pool.map(one, range(128)))
            stop.set()
            watcher.join(60)
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        assert all(a.headers.get("retry-after") == "1" for a in answers if a.status_code == 503)
        assert probe.latencies and set(probe.statuses) == {200}
        assert max(probe.latencies) < 1.0, sorted(probe.latencies)[-5:]
        assert max(peak) < before + (400 << 20), (before, max(peak))
        for model in ("clip", "minilm"):
            assert 1 <= s.metric("nearest_prompt_forward_pass_max", model=model) <= 8
        assert s.metric("nearest_prompt_admitted_items") == 0  # everything given back
    finally:
        assert s.stop() in GRACEFUL


@pytest.mark.slow
def test_a_100_image_predict_runs_in_passes_of_max_batch(cli_store_path, tmp_path, capsys):
    need_data()
    images = (IMAGES * 15)[:100]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, p in enumerate(images):
        shutil.copy(p, folder / f"{i:03d}.png")
    npy = tmp_path / "cli.npy"
    code, _, err = run(capsys, "predict", "--index", cli_store_path, folder, "--out", npy, "--k", "10", "-q")
    assert code == 0, err
    s = Server(cli_store_path, "--max-batch", "8", "--max-body-mb", "200", log=tmp_path / "server.log")
    try:
        with s.client() as c:
            res = c.post("/predict", json={"images": [b64(folder / f"{i:03d}.png") for i in range(100)], "k": 10})
        assert res.status_code == 200, res.text
        got = np.array([r["vector"] for r in res.json()["results"]], dtype=np.float32)
        np.testing.assert_allclose(got, np.load(npy), atol=2e-6)
        assert s.metric("nearest_prompt_forward_pass_max", model="clip") == 8
        assert s.metric("nearest_prompt_forward_pass_size_count", model="clip") >= 13  # 100 / 8, rounded up
        assert s.metric("nearest_prompt_forward_pass_size_sum", model="clip") == 100
    finally:
        assert s.stop() in GRACEFUL


def test_serve_refuses_bad_options_in_one_line(capsys, tmp_path, cli_store_path):
    code, _, err = run(capsys, "serve", "--index", tmp_path / "none")
    assert_one_line_error(code, err, "--index: ")
    code, _, err = run(capsys, "serve", "--index", cli_store_path, "--token", "short")
    assert_one_line_error(code, err, "--token: token must have at least 8 characters")
    (tmp_path / "empty").write_text("\n")
    code, _, err = run(capsys, "serve", "--index", cli_store_path, "--token-file", tmp_path / "empty")
    assert_one_line_error(code, err, "--token-file: the token file")
    code, _, err = run(capsys, "serve", "--index", cli_store_path, "--token-file", tmp_path / "missing")
    assert_one_line_error(code, err, "--token-file: cannot read the token file")
    code, _, err = run(capsys, "serve", "--index", tmp_path, "--port", "1")
    assert_one_line_error(code, err, "no manifest.json")  # the store is opened before any port is
    code, _, err = run(capsys, "serve", "--index", cli_store_path, "--clip", f"local-dir:{tmp_path / 'gone'}")
    assert_one_line_error(code, err, "--clip: ")
    code, _, err = run(capsys, "serve")
    assert_one_line_error(code, err, "--index: no index store given")


@pytest.mark.slow
def test_a_busy_port_is_one_line_before_anything_is_announced(cli_store_path, tmp_path):
    import socket
    import subprocess

    from devkit.serve import EXE

    need_data()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = subprocess.run([EXE, "serve", "--index", str(cli_store_path), "--port", str(port)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"nearest-prompt: error: --port: port {port} on 127.0.0.1 is in use by "
                                             "another program; stop it, or choose another port (0 picks a free one)"]


@pytest.mark.slow
def test_workers_share_the_answers_and_the_token_never_shows(cli_store_path, tmp_path):
    """--workers 2 with the token in NEAREST_PROMPT_TOKEN: both processes demand it, and it appears in no
    process's arguments or environment (the workers read it from a private file)."""
    need_data()
    s = Server(cli_store_path, "--workers", "2", log=tmp_path / "server.log", env={"NEAREST_PROMPT_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with s.client() as c:
            assert c.post("/query", json={"text": "a castle on a hill", "k": 3}).status_code == 401
            answers = {json.dumps(c.post("/query", json={"text": "a castle on a hill", "k": 3}, headers=auth).json())
                       for _ in range(6)}
        assert len(answers) == 1 and len(json.loads(answers.pop())["neighbors"]) == 3
        children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
        assert len(children) >= 2
        for pid in children:
            for part in ("cmdline", "environ"):
                assert TOKEN.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)
        assert TOKEN.encode() not in Path(f"/proc/{s.proc.pid}/cmdline").read_bytes()
    finally:
        assert s.stop() in GRACEFUL


@pytest.mark.slow
def test_open_clip_back_lets_clip_retrievals_client_in_and_nothing_else(cli_store_path, tmp_path):
    cc = _clip_client()
    s = Server(cli_store_path, "--open-clip-back", log=tmp_path / "server.log", env={"NEAREST_PROMPT_TOKEN": TOKEN})
    try:
        client = cc.ClipClient(url=s.url + "/knn-service", indice_name=cli_store_path.name, num_images=3)
        assert len(client.query(text="a castle")) == 3  # ClipClient sends no token
        with s.client() as c:
            assert c.post("/query", json={"text": "a castle"}).status_code == 401
            assert c.get("/info").status_code == 401
    finally:
        assert s.stop() in GRACEFUL


@pytest.mark.slow
def test_a_store_file_changed_in_place_is_caught_and_a_fatal_signal_is_logged(cli_store_path, tmp_path):
    """Store files must never be modified in place. When one is, the periodic size check refuses every request
    (503, until a reload); with the check off, the process's death by SIGBUS at least says where it hit."""
    need_data()
    store = tmp_path / "store"
    shutil.copytree(cli_store_path, store)
    s = Server(store, log=tmp_path / "server.log", env={"NEAREST_PROMPT_STORE_CHECK_S": "0.2"})
    try:
        with s.client() as c:
            assert c.post("/query", json={"text": "a castle", "k": 2}).status_code == 200
            os.truncate(store / "minilm.npy", 1000)
            wait_for(lambda: s.logged("changed in place"), what="the size check to notice")
            r = c.post("/query", json={"text": "a castle", "k": 2})
            assert r.status_code == 503 and "minilm.npy is 1,000 bytes" in r.json()["error"]
            assert c.get("/health").status_code == 503
    finally:
        assert s.stop() in GRACEFUL
    other = tmp_path / "other"
    shutil.copytree(cli_store_path, other)
    s = Server(other, "--store-check", "0", log=tmp_path / "server2.log")
    try:
        with s.client() as c:
            assert c.post("/query", json={"text": "a castle", "k": 2}).status_code == 200
            os.truncate(other / "clip.faiss", 100)  # the mapped vectors are gone under the server's feet
            with pytest.raises(Exception):  # noqa: B017 - the connection dies with the process
                c.post("/query", json={"text": "a castle", "k": 2})
        assert s.proc.wait(timeout=60) == -signal.SIGBUS
        assert "Fatal Python error: Bus error" in s.log.read_text()
    finally:
        s.stop()


@pytest.mark.slow
def test_a_grown_and_narrowed_store_is_served_without_a_restart(tmp_path, clip_spec, capsys):
    """Kept columns and filters over HTTP; ``add`` and ``remove`` swap in a new version of the store, which the
    server opens by itself (its periodic check) while it keeps answering."""
    need_data()
    prompts = corpus_slice(80, offset=9000)
    lines = ["prompt,source"] + [f'"{p.replace(chr(34), "")}",{"lexica" if i % 2 else "discord"}'
                                 for i, p in enumerate(prompts[:60])]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "more.csv").write_text("prompt,source\n" + "\n".join(f'"{p.replace(chr(34), "")}",krea'
                                                                    for p in prompts[60:]) + "\n")
    store = tmp_path / "store"
    code, _, err = run(capsys, "build", "--prompts", tmp_path / "c.csv", "--out", store, "--clip", clip_spec, "-q")
    assert code == 0, err
    s = Server(store, log=tmp_path / "server.log", env={"NEAREST_PROMPT_STORE_CHECK_S": "0.2"})
    try:
        with s.client() as c:
            rows = c.get("/health").json()["rows"]
            r = c.post("/query", json={"text": "a castle", "k": 5, "where": "source=lexica"}).json()
            assert len(r["neighbors"]) == 5 and {n["metadata"]["source"] for n in r["neighbors"]} == {"lexica"}
            assert abs(sum(n["weight"] for n in r["neighbors"]) - 1) < 1e-5
            meta = c.post("/metadata", json={"ids": [r["neighbors"][0]["id"]]}).json()
            assert meta[0]["metadata"]["source"] == "lexica" and meta[0]["metadata"]["caption"]
            assert c.post("/query", json={"text": "a castle", "where": "source=krea"}).json()["neighbors"] == []
            bad = c.post("/query", json={"text": "a castle", "where": "colour=red"})
            assert bad.status_code == 400 and bad.json()["error"].startswith("where: no column 'colour'")
            code, out, err = run(capsys, "add", "--index", store, "--prompts", tmp_path / "more.csv", "-q")
            assert code == 0 and "added" in out, err
            grown = wait_for(lambda: (n := c.get("/health").json()["rows"]) > rows and n, what="the new version")
            krea = c.post("/query", json={"text": "a castle", "k": 5, "where": "source=krea"}).json()["neighbors"]
            assert len(krea) == 5 and all(n["id"] >= rows for n in krea)
            code, out, err = run(capsys, "remove", "--index", store, "--where", "source=krea", "-q")
            assert code == 0 and "removed" in out, err
            wait_for(lambda: c.post("/query", json={"text": "a castle", "where": "source=krea"}).json()["neighbors"]
                     == [], what="the removal to be served")
            gone = c.post("/metadata", json={"ids": [krea[0]["id"]]})
            assert gone.status_code == 404 and "was removed" in gone.json()["error"]
            assert c.get("/health").json()["rows"] == grown  # ids stay: the rows are marked, not moved
        assert s.logged("reloaded")
    finally:
        assert s.stop() in GRACEFUL
