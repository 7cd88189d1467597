"""The documentation holds together: every relative link of the README and docs/ names a file that exists and,
with a #fragment, a heading of it; the README stays a front door that links every page; no page tells how the
project was made."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as dashes."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"^#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_name_files_and_headings_that_exist(page):
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path) if path else page
        assert target.exists(), f"{page.name}: {link} names no file"
        if fragment and target.suffix == ".md":
            assert fragment in anchors(target), f"{page.name}: {link}: no such heading in {target.name}"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in text, f"the README does not link docs/{page.name}"


def test_the_docs_speak_of_the_project_not_of_its_making():
    for page in PAGES:
        text = page.read_text()
        for words in (r"\bthis session\b", r"\bthe issue\b", r"\brerun\b", r"\bcommit [0-9a-f]{7}\b"):
            assert not re.search(words, text, re.IGNORECASE), f"{page.name}: {words}"
