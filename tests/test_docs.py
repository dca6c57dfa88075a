"""The README a newcomer reads in five minutes, and the reference in docs/ it leads to: short,
every relative link and #anchor lands on a file and a heading that exist, every docs/ page is
reachable from the README, the two commands at its top are the ones `.ci/run` runs, and the
report's screenshot is small enough to sit in a repository."""
from __future__ import annotations

import re
import struct
from pathlib import Path

from conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300
MAX_SCREENSHOT_BYTES = 200 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a link or heading inside one is text)."""
    out, in_fence = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        out.append("" if in_fence else line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation gone, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [t for line in prose(path) for t in LINK.findall(INLINE_CODE.sub("", line))]


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` whose file is missing, outside the repository, or whose
    #anchor names no heading of the file it points to."""
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(REPO) or not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{path.name}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_the_readme_is_short_enough_to_read_in_five_minutes():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; move reference into docs/"


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = DOCS / "__probe_test_docs.md"  # inside the repository, so only the targets are at fault
    page.write_text("# Probe\n\n[gone](nowhere.md) [bad](#no-such) [ok](#probe) "
                    "`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n")
    try:
        bad = broken_links(page)
    finally:
        page.unlink()
    assert bad == ["__probe_test_docs.md: nowhere.md (no such file)",
                   "__probe_test_docs.md: #no-such (no heading #no-such in __probe_test_docs.md)"]


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading_that_exist():
    assert doc_pages(), "docs/ has no pages"
    bad = [b for page in [README, *doc_pages()] for b in broken_links(page)]
    assert bad == [], "\n".join(bad)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(README) if t.startswith("docs/")}
    missing = [p.name for p in doc_pages() if p.resolve() not in linked]
    assert missing == [], f"docs pages no one reaches from README.md: {missing}"


def test_the_two_commands_at_the_top_of_the_readme_are_what_ci_runs():
    text = README.read_text()
    first_section = text.split("\n## ", 2)[1]  # the first ## section, code block included
    assert first_section.startswith("Two commands"), first_section[:60]
    block = first_section.split("```")[1]
    assert "./scripts/setup.sh && .venv/bin/amapiano-train demo" in block
    assert ".venv/bin/python -m pytest " in block
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("./scripts/setup.sh", '.venv/bin/python -m pytest > "$fast_log"', ".venv/bin/python -m pytest -m slow"):
        assert command in ci, command  # the fast tier runs in the background beside the slow one
    assert "`.venv/bin/python -m pytest -m slow`" in text


def test_no_file_sends_a_reader_to_a_readme_section_or_docs_page_that_is_gone():
    """`see README, "Dataset"` or `see docs/gpu.md, "GPU figures (measured)"` in a shipped config
    comment or a docstring must still find that page and heading."""
    headings = {HEADING.match(line).group(2) for line in prose(README) if HEADING.match(line)}
    stale = []
    for folder in ("daemon", "trainer", "etc", "scripts", "systemd", ".ci", "tests"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".toml", ".yaml", ".sh", ".service", ""} \
                    and path != Path(__file__):
                text = path.read_text(errors="replace")
                for name in re.findall(r'README, "([^"]+)"', text):
                    if name not in headings:
                        stale.append(f"{path.relative_to(REPO)}: README, \"{name}\"")
                for page, name in re.findall(r'\b(docs/[\w.-]+\.md)(?:, "([^"]+)")?', text):
                    if not (REPO / page).is_file() or (name and slug(name) not in anchors(REPO / page)):
                        stale.append(f"{path.relative_to(REPO)}: {page} {name}")
    assert stale == [], stale


def test_the_report_screenshot_is_a_small_png():
    shot = DOCS / "img" / "report.png"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) <= MAX_SCREENSHOT_BYTES and 600 <= width <= 1200, (len(data), width, height)
    assert "docs/img/report.png" in links(README)
