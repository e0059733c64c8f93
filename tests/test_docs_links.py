"""No link in README.md or docs/ leaves the repository: relative links resolve to files in it, and the only
absolute links are to the papers (arXiv) the method descriptions cite."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ALLOWED_ABSOLUTE = re.compile(r"^https://arxiv\.org/abs/\d{4}\.\d{4,5}$")


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    return LINK.findall(text)


def test_docs_exist_and_readme_points_there():
    assert (ROOT / "docs" / "design.md").is_file() and (ROOT / "docs" / "methods.md").is_file()
    links = _links((ROOT / "README.md").read_text())
    assert "docs/design.md" in links and "docs/methods.md" in links


def test_no_link_leaves_the_repository():
    bad = []
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text, doc
        for target in _links(text):
            if re.match(r"^[a-z]+:", target):
                if not ALLOWED_ABSOLUTE.match(target):
                    bad.append((doc.name, target, "absolute link"))
                continue
            path = target.split("#", 1)[0]
            if not path:
                continue  # an anchor on the same page
            resolved = (doc.parent / path).resolve()
            if ROOT not in resolved.parents and resolved != ROOT:
                bad.append((doc.name, target, "outside the repository"))
            elif not resolved.exists():
                bad.append((doc.name, target, "no such file"))
    assert bad == []


def test_the_link_checker_catches_bad_links(tmp_path):
    assert _links("see [x](../shared/DESIGN.md) and `[y](z)` and [paper](https://arxiv.org/abs/2406.10995)") == [
        "../shared/DESIGN.md", "z", "https://arxiv.org/abs/2406.10995"]
    assert not ALLOWED_ABSOLUTE.match("https://github.com/x/y")
