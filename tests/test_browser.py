"""The web page in a real browser (Debian's headless Chromium, driven by Playwright): upload a
competition image, see k result rows with prompts and scores, copy a prompt; a bad file gets a clear
message. A screenshot is kept as a test artifact. In CI a missing browser is a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from devkit.serve import Server
from nearest_prompt.index_store import open_store

from .conftest import IN_CI, KAGGLE, need_data

pytestmark = [pytest.mark.browser, pytest.mark.service, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("NP_TEST_ARTIFACTS", "runs/test-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail("Chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def test_page_uploads_an_image_shows_prompts_and_copies_one(browser, cli_store_path, tmp_path):
    need_data()
    server = Server(cli_store_path, log=tmp_path / "server.log")
    try:
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page = context.new_page()
        console_errors = []
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        page.goto(server.url + "/")
        assert page.title() == "nearest-prompt"
        page.wait_for_function("document.querySelector('#k').max !== '50' || true")
        page.eval_on_selector("#k", "el => { el.value = 7; el.dispatchEvent(new Event('input')); }")
        assert page.text_content("#k-out") == "7"
        page.set_input_files("#file", str(KAGGLE / "images" / "20057f34d.png"))
        page.wait_for_selector("#results li >> nth=6", timeout=60_000)
        rows = page.query_selector_all("#results li")
        assert len(rows) == 7
        prompts = [r.query_selector(".prompt").text_content() for r in rows]
        scores = [float(r.query_selector(".score").text_content()) for r in rows]
        assert all(prompts) and scores == sorted(scores, reverse=True)
        page.wait_for_selector("#confidence:not([hidden])", timeout=60_000)
        assert "Prediction confidence" in page.text_content("#confidence")
        assert "random weights" in page.text_content("#note")  # the tiny test model says so on the page
        page.wait_for_selector("#composed:not([hidden])", timeout=60_000)  # the composed prompt, to paste
        with server.client() as c:
            composed = c.post("/interrogate", files={"image": (KAGGLE / "images" / "20057f34d.png").read_bytes()},
                              data={"k": str(min(10, open_store(cli_store_path).rows))}).json()["prompt"]
        assert page.text_content("#composed-prompt") == composed and composed
        page.click("#composed-copy")
        page.wait_for_function("document.querySelector('#composed-copy').textContent === 'copied'")
        assert page.evaluate("navigator.clipboard.readText()") == composed
        rows[1].query_selector(".copy").click()
        page.wait_for_function("document.querySelectorAll('#results .copy')[1].textContent === 'copied'")
        assert page.evaluate("navigator.clipboard.readText()") == prompts[1]
        # the page is readable on a phone: nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # a text query, then a file that is not an image: a clear message, no rows
        page.fill("#text", prompts[0])
        page.click("#text-form button")
        page.wait_for_function(f"document.querySelector('#results .prompt')?.textContent === {prompts[0]!r}")
        bad = tmp_path / "notes.png"
        bad.write_text("this is not a picture")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error", timeout=60_000)
        assert "not a readable image" in page.text_content("#status")
        assert page.query_selector_all("#results li") == []
        assert console_errors == []
        context.close()
    finally:
        server.stop()


def test_an_earlier_images_answer_never_replaces_a_later_one(browser, cli_store_path, tmp_path):
    """Pick image A, then image B while A's composed prompt is still being made: A's request is given up,
    and B's preview, rows and composed prompt are what the page shows, also after A's answer would have come."""
    need_data()
    a, b = sorted((KAGGLE / "images").glob("*.png"))[:2]
    server = Server(cli_store_path, log=tmp_path / "server.log")
    try:
        page = browser.new_context().new_page()
        held, failed = [], []
        page.on("requestfailed", lambda request: failed.append(request.url))

        def hold_first_interrogate(route) -> None:
            if not held:
                held.append(route)  # A's: answered only after B's is on the page
            else:
                route.continue_()

        page.route("**/interrogate", hold_first_interrogate)
        page.goto(server.url + "/")
        with page.expect_request("**/interrogate"):
            page.set_input_files("#file", str(a))
        page.set_input_files("#file", str(b))
        page.wait_for_selector("#composed:not([hidden])", timeout=60_000)
        with server.client() as c:
            rows = open_store(cli_store_path).rows
            expect = c.post("/interrogate", files={"image": b.read_bytes()}, data={"k": str(min(10, rows))}).json()
            expect_rows = c.post("/query", files={"image": b.read_bytes()}, data={"k": "10"}).json()["neighbors"]
        try:
            held[0].continue_()  # too late: the page gave the request up when B was picked
        except Exception:  # noqa: BLE001 - Playwright refuses to continue a request the page aborted
            pass
        page.wait_for_function("document.querySelector('#status').textContent.includes('and a composed one')")
        assert any(url.endswith("/interrogate") for url in failed)  # A's was aborted by the page
        assert page.text_content("#composed-prompt") == expect["prompt"]
        assert [r.text_content() for r in page.query_selector_all("#results .prompt")] == \
            [n["prompt"] for n in expect_rows]
    finally:
        server.stop()


def test_a_server_with_a_token_asks_for_it_on_the_page(browser, cli_store_path, tmp_path):
    need_data()
    token = "browser-test-token"
    server = Server(cli_store_path, log=tmp_path / "server.log", env={"NEAREST_PROMPT_TOKEN": token})
    try:
        page = browser.new_context().new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#token-box').open")  # open from the start
        assert "needs a token" in page.text_content("#status")
        page.fill("#text", "a castle")
        page.click("#text-form button")
        page.wait_for_selector("#status.error", timeout=60_000)
        assert "enter it in the token box" in page.text_content("#status")
        page.fill("#token", token)
        page.click("#text-form button")
        page.wait_for_selector("#results li", timeout=60_000)
        assert len(page.query_selector_all("#results li")) == 10
    finally:
        server.stop()
