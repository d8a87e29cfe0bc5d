"""The README stays one screen with its two-command quickstart, and no link in the docs points at nothing
(a missing file, or a heading that a page does not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
# [text](target) in Markdown, links and images alike; the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def quickstart_commands(text: str) -> list[str]:
    """The commands of the README's first ```bash block, as .ci/readme_command.py reads them for CI."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```bash block"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def relative_links(page: Path) -> list[str]:
    """Link targets that are paths in this repository: not URLs, not mail, not anchors within the page."""
    targets = LINK.findall(page.read_text(encoding="utf-8"))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def anchors(page: Path) -> set[str]:
    """GitHub's anchor for each heading outside code blocks: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    headings = re.findall(r"^#+ +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_under_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines: move detail into docs/"


def test_readme_quickstart_is_two_commands_install_then_tests() -> None:
    commands = quickstart_commands(README.read_text(encoding="utf-8"))
    assert len(commands) == 2, commands
    assert "vitdeploy train" in commands[0] and "vitdeploy predict" in commands[0]
    assert "pytest" in commands[1]


def test_the_stage_pages_exist() -> None:
    names = {page.name for page in DOC_PAGES}
    expected = {"training.md", "pretrained.md", "export-and-verify.md", "runtimes-and-precision.md", "predict.md",
                "bench.md", "serve.md", "explain.md", "architecture.md"}
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("page", [README, ROOT / "benchmarks" / "README.md", *DOC_PAGES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page: Path) -> None:
    broken = [t for t in relative_links(page) if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"
    missing = [t for t in relative_links(page) if "#" in t and t.split("#", 1)[0].endswith(".md")
               and t.split("#", 1)[1] not in anchors(page.parent / t.split("#", 1)[0])]
    assert not missing, f"{page.relative_to(ROOT)} links to headings that do not exist: {missing}"


def test_readme_links_every_doc_page() -> None:
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    unlinked = [page.name for page in DOC_PAGES if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_link_finder_finds_relative_links_and_skips_urls(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[a](docs/a.md#x) ![img](explain/b.png) [web](https://example.com) [here](#top)\n")
    assert relative_links(page) == ["docs/a.md#x", "explain/b.png"]
    page.write_text("# The protocol, and `how` to read it\n```\n# not a heading\n```\n## Measured so far\n")
    assert anchors(page) == {"the-protocol-and-how-to-read-it", "measured-so-far"}


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md is the module map: a module added without a line there fails here."""
    package = ROOT / "vitdeploy"
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(str(p.relative_to(package).with_suffix("")) for p in package.rglob("*.py")
                     if p.name != "__init__.py")
    assert len(modules) > 50
    assert [m for m in modules if f"`{m}`" not in text] == []
