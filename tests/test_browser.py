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
