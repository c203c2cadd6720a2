"""Every relative link of README.md and docs/*.md points to a file or folder inside the repository (issue 24):
a clone from anywhere has them. Absolute URLs (http, mailto) are not checked; anchors are stripped."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
_HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")


def links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code blocks hold no links
    return _LINK.findall(text) + _REF.findall(text) + _HTML.findall(text)


def bad_links(doc: Path, root: Path = REPO) -> list[str]:
    bad = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, https:, mailto:, in-page anchors
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        if root != resolved and root not in resolved.parents:
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (missing)")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_relative_links_resolve_inside_the_repository(doc):
    assert not bad_links(doc), f"{doc.relative_to(REPO)}: {bad_links(doc)}"


def test_docs_exist_and_are_linked_from_the_readme():
    readme = links((REPO / "README.md").read_text(encoding="utf-8"))
    assert "docs/architecture.md" in readme and "docs/methods.md" in readme
    assert not any("../shared" in t for t in readme)


def test_the_link_check_can_fail(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "ok.md").write_text("x")
    doc = root / "docs" / "a.md"
    doc.write_text("[a](../../shared/DESIGN.md) [b](ok.md#top) [c](gone.md) [d](https://x.org) "
                   "<img src=\"../pic.png\">\n```\n[e](inside/code.md)\n```\n[r]: ../README.md\n")
    assert bad_links(doc, root) == ["../../shared/DESIGN.md (outside the repository)", "gone.md (missing)",
                                    "../README.md (missing)", "../pic.png (missing)"]
