"""Every relative link and image in the README and docs/ names a file that is in the repository
(the docs show the benchmark's plots by path; a renamed result folder must not break them)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "benchmarks").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_targets(page: Path) -> list[str]:
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]  # not http:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_name_existing_files(page):
    missing = [t for t in relative_targets(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_open_questions_page_shows_plots():
    targets = relative_targets(ROOT / "docs" / "open-questions.md")
    assert any(t.endswith(".png") for t in targets)
