"""The documentation is tested like code.

* Every fenced ```` ```python ```` block in ``docs/**/*.md`` is one test case. The blocks of a
  page run in order and share one namespace (a page reads like a notebook), in a temporary
  working directory. A block opts out only with a visible marker on the line directly above
  its fence, ``<!-- skip: reason -->`` (for blocks that need real data or long training).
  Blocks meant for reading only use another language tag (```` ```text ````, ```` ```bash ````).
* Every relative link in ``docs/**/*.md`` must point to an existing file, and a ``#anchor``
  to a heading of that page (same slugs as MkDocs' ``toc`` extension).
* When MkDocs and mkdocstrings are installed (``pip install -e ".[docs]"``), the site is
  built with ``mkdocs build --strict`` into a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass
class Block:
    page: str  # path relative to docs/
    index: int  # position among the page's python blocks
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # reason, when marked <!-- skip: ... -->

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []


def _split(text: str) -> tuple[list[tuple[int, str, list[str]]], list[tuple[int, str]]]:
    """Return (fenced blocks as (line, info, lines), prose lines as (line, text))."""
    blocks, prose = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, start, body = m.group("fence"), i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        blocks.append((start + 1, m.group("info").lower(), body))
    return blocks, prose


def collect_blocks() -> list[Block]:
    out = []
    for path in _pages():
        rel = path.relative_to(DOCS).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        fenced, _ = _split("\n".join(lines))
        k = 0
        for line, info, body in fenced:
            if info not in ("python", "py"):
                continue
            above = lines[line - 2] if line >= 2 else ""
            m = SKIP.match(above)
            out.append(Block(rel, k, line, "\n".join(body) + "\n",
                             m.group("reason") if m else None))
            k += 1
    return out


BLOCKS = collect_blocks()


# --------------------------------------------------------------------------- run snippets


class _Page:
    """Namespace and progress of one page's blocks (so that blocks run in order even if a
    test runner reorders or distributes the cases: missing predecessors run first)."""

    def __init__(self, workdir: Path) -> None:
        self.ns: dict = {"__name__": "__docs__"}
        self.done = -1  # index of the last block run
        self.failed: str | None = None
        self.workdir = workdir


_PAGES: dict[str, _Page] = {}


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def _exec(block: Block, page: _Page) -> None:
    try:  # snippets may plot; never open a window
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        pass
    # Pad with blank lines so that tracebacks show the real line of the .md file.
    code = compile("\n" * block.line + block.code, str(DOCS / block.page), "exec")
    old = os.getcwd()
    os.chdir(page.workdir)
    try:
        exec(code, page.ns)
    except BaseException:
        page.failed = block.id
        raise
    finally:
        os.chdir(old)
        _close_figures()
        page.done = block.index


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_snippet(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    page = _PAGES.get(block.page)
    if page is None:
        name = re.sub(r"\W", "_", block.page)
        page = _PAGES[block.page] = _Page(tmp_path_factory.mktemp(name))
    if page.failed is not None:
        pytest.fail(f"an earlier block of {block.page} failed ({page.failed})")
    if block.skip is not None:
        page.done = block.index
        pytest.skip(f"marked in the docs: {block.skip}")
    for prev in BLOCKS:  # predecessors not run yet (reordered or distributed runs)
        if prev.page == block.page and page.done < prev.index < block.index and not prev.skip:
            _exec(prev, page)
    _exec(block, page)


def test_skip_markers_are_explained() -> None:
    """A skip marker must give a reason and may only sit above a python block."""
    for path in _pages():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "<!-- skip" in line:
                m = SKIP.match(line)
                assert m and len(m.group("reason")) > 3, f"{path}:{i + 1}: bad skip marker"
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                f = FENCE.match(nxt)
                assert f and f.group("info") in ("python", "py"), (
                    f"{path}:{i + 1}: a skip marker must be directly above a ```python fence")


def test_docs_have_snippets() -> None:
    assert BLOCKS, "no ```python blocks found under docs/"


# --------------------------------------------------------------------------- links


def slugify(text: str) -> str:
    """MkDocs' default heading id (Python-Markdown ``toc.slugify``) of rendered text."""
    text = re.sub(r"`([^`]*)`", r"\1", text)  # inline code keeps its text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ID = re.compile(r"\{\s*#([\w-]+)\s*\}\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    _, prose = _split(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        title = m.group(2)
        explicit = EXPLICIT_ID.search(title)
        if explicit:
            out.add(explicit.group(1))
            continue
        slug = slugify(title)
        if slug in seen:  # toc's unique(): second "Foo" becomes "foo_1"
            seen[slug] += 1
            slug = f"{slug}_{seen[slug]}"
        else:
            seen[slug] = 0
        out.add(slug)
    for m in re.finditer(r'id="([\w-]+)"', path.read_text(encoding="utf-8")):
        out.add(m.group(1))
    return out


def _links() -> list[tuple[str, int, str]]:
    out = []
    for path in _pages():
        _, prose = _split(path.read_text(encoding="utf-8"))
        for line_no, line in prose:
            line = re.sub(r"`[^`]*`", "", line)  # links inside inline code are not links
            for m in LINK.finditer(line):
                target = m.group(1) or m.group(2)
                out.append((path.relative_to(DOCS).as_posix(), line_no, target))
    return out


LINKS = _links()


def test_docs_have_links() -> None:
    assert LINKS, "no links found under docs/ (the link check would be vacuous)"


@pytest.mark.parametrize("page,line,target", LINKS, ids=[f"{p}:{n}" for p, n, _ in LINKS])
def test_internal_link(page: str, line: int, target: str) -> None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    path_part, _, anchor = target.partition("#")
    src = DOCS / page
    dest = src if not path_part else (src.parent / path_part).resolve()
    assert dest.exists(), f"docs/{page}:{line}: link target {target!r} does not exist"
    if not dest.is_relative_to(DOCS):
        pytest.fail(f"docs/{page}:{line}: {target!r} leaves docs/ (MkDocs would not copy it)")
    if anchor:
        assert dest.suffix == ".md", f"docs/{page}:{line}: anchor into a non-page {target!r}"
        have = anchors(dest)
        assert anchor in have, (f"docs/{page}:{line}: no heading #{anchor} in "
                                f"{dest.relative_to(DOCS)}; have {sorted(have)}")


# --------------------------------------------------------------------------- site build


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings not installed "
                                               "(pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="mkdocstrings' python handler not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").exists()
