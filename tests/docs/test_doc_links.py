"""The repository's Markdown names files, folders and sections of itself: in links (`[text](path#section)`)
and in code spans (`docs/run-tables.md`, `analyses/notebooks/`). Each must be there on a fresh clone:
a tracked file or folder, and a heading of the target page for an anchor (GitHub's slugs). Prose and
docstrings name sections by their titles too (`docs/metrics.md, "Ablation"`, `see "Speed on the CPU"`):
each must be a heading, a bold term or a table row's first cell of that page."""

import functools
import json
import posixpath
import re
from pathlib import PurePosixPath

from helpers import REPO
from helpers.doc_commands import repo_files

TOP = ("model", "probe", "analyses", "dashboards", "data", "train", "generate", "docs", "tests", "benchmarks", ".ci")
_LINK = re.compile(r"\]\(([^)\s]*)\)")
_SPAN = re.compile(r"`((?:%s)/[\w./-]*)`" % "|".join(map(re.escape, TOP)))
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def tracked() -> tuple[set[str], set[str]]:
    files = set(repo_files())
    folders = {str(p) for f in files for p in PurePosixPath(f).parents}
    return files, folders


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces as hyphens."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    prose = _FENCE.sub("", markdown)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


def broken(page: str, text: str, files: set[str], folders: set[str], pages: dict[str, str]) -> list[str]:
    """The links and code-span paths of `page` (a repository path) that name nothing there."""
    base, out = posixpath.dirname(page), []
    for no, line in enumerate(text.splitlines(), 1):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = posixpath.normpath(posixpath.join(base, path)) if path else page
            if path and where not in files and where not in folders:
                out.append(f"{page}:{no}: link to {target}: no such file")
            elif anchor and where in pages and anchor not in anchors(pages[where]):
                out.append(f"{page}:{no}: link to {target}: no heading #{anchor} in {where}")
        for path in _SPAN.findall(line):
            if "*" not in path and path.rstrip("/") not in files | folders:
                out.append(f"{page}:{no}: `{path}`: no such file or folder")
    return out


# a page and a quoted title: `README, "Hook points"`, `docs/metrics.md's "Ablation"`, `metrics.md "MaxVio"` (docs/
# implied); within a page, `see "Title"` and `"Title" above` (or below)
_CITED = re.compile(r"(\.md|README)(?:'s)?,?\s+\"([^\"]{2,80}?)\"")  # found by its end: 0.03 s on 4 MB, not 0.2
_STEM = re.compile(r"(?<![\w/.-])(?:[\w-]+/)*[\w-]+$")  # the page's path before `.md`
_HERE = re.compile(r'\bsee "([^"]{2,80}?)"|"([^"]{2,80}?)" (?:above|below)\b')


@functools.lru_cache(maxsize=None)
def titles(markdown: str) -> frozenset[str]:
    """What a quoted title may name in a page, lower case: its headings (whole, or up to a colon or a
    parenthesis), bold terms and the first cells of its tables."""
    prose, out = _FENCE.sub("", markdown), set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M):
        head = m.group(1).replace("`", "")
        out |= {head, head.split(":")[0], head.split(" (")[0]}
    out |= {b.rstrip(".:") for b in re.findall(r"\*\*([^*\n]+)\*\*", prose)}
    out |= {c.replace("`", "").strip() for c in re.findall(r"^\|([^|\n]+)\|", prose, re.M)}
    return frozenset(" ".join(x.split()).lower() for x in out)


def _text(path: str) -> str:
    text = (REPO / path).read_text(encoding="utf-8")
    if path.endswith(".ipynb"):  # the cells' sources, not the JSON (whose quotes are escaped)
        return "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
    return text


def cited_titles(page: str, text: str, pages: dict[str, str]) -> list[str]:
    """The quoted section titles `page` (a repository path) cites that its target page does not have."""
    out = []
    for m in _CITED.finditer(text):
        if m.group(1) == ".md":
            stem = _STEM.search(text, max(m.start() - 200, 0), m.start())
            if not stem:
                continue
            name, start = stem.group(0) + ".md", stem.start()
        elif m.start() and re.match(r"[\w/.-]", text[m.start() - 1]):
            continue
        else:
            name, start = "README", m.start()
        title = " ".join(m.group(2).split())
        target = "README.md" if name == "README" else name
        if target not in pages and f"docs/{target}" in pages:
            target = f"docs/{target}"
        if target in pages and title.lower() not in titles(pages[target]):
            out.append(f"{page}:{text[:start].count(chr(10)) + 1}: {name} \"{title}\": no such section in {target}")
    if page.endswith(".md"):
        for m in _HERE.finditer(_FENCE.sub(lambda f: "\n" * f.group(0).count("\n"), text)):
            title = " ".join((m.group(1) or m.group(2)).split())
            if title.lower() not in titles(text):
                out.append(f"{page}:{text[:m.start()].count(chr(10)) + 1}: \"{title}\": no such section in {page}")
    return out


def test_every_section_title_cited_is_there():
    files, _ = tracked()
    pages = {f: (REPO / f).read_text(encoding="utf-8") for f in files if f.endswith(".md")}
    sources = [f for f in files if f.endswith((".md", ".py", ".sh", ".ipynb")) and f != "tests/docs/test_doc_links.py"]
    problems = [p for f in sources for p in cited_titles(f, _text(f), pages)]
    assert problems == []


def test_a_missing_section_title_is_named():
    """Negative control: a docstring citing sections of docs/metrics.md and the README, and a page citing its own."""
    files, _ = tracked()
    pages = {f: (REPO / f).read_text(encoding="utf-8") for f in files if f.endswith(".md")}
    code = ('"""Balance (metrics.md, "Balance"; docs/metrics.md, "Load balance"), MaxVio (metrics.md "maxvio"),\n'
            'the "generate" docstring (README, "Generation"; README, "generate"); metrics.md\n'
            '"Domain specialization".\n"""\n')
    assert cited_titles("analyses/x.py", code, pages) == [
        'analyses/x.py:1: docs/metrics.md "Load balance": no such section in docs/metrics.md',
        'analyses/x.py:2: README "generate": no such section in README.md',
        'analyses/x.py:2: metrics.md "Domain specialization": no such section in docs/metrics.md']
    page = '# A\n\n## Section b (`x.py`)\n\nAs "Section b" below and "A" above say; see "Section c".\n'
    assert cited_titles("docs/new.md", page, pages) == ['docs/new.md:5: "Section c": no such section in docs/new.md']


def test_every_path_and_section_the_docs_name_is_there():
    files, folders = tracked()
    pages = {f: (REPO / f).read_text(encoding="utf-8") for f in files if f.endswith(".md")}
    assert {"README.md", "docs/performance.md", "docs/run-tables.md"} <= set(pages)
    problems = [p for page, text in pages.items() for p in broken(page, text, files, folders, pages)]
    assert problems == []


def test_a_missing_file_folder_or_section_is_named():
    """Negative control, on a page of its own beside the real ones."""
    files, folders = tracked()
    pages = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
    page = ("See [the tables](docs/run-tables.md), [speed](README.md#speed-on-the-cpu) and `analyses/notebooks/`.\n"
            "Not [this](docs/gone.md), [nor this](README.md#no-such-section), nor `probe/gone.py`.\n")
    assert broken("docs/new.md", page.replace("docs/", "", 2).replace("README.md", "../README.md"),
                  files, folders, pages) == [
        "docs/new.md:2: link to gone.md: no such file",
        "docs/new.md:2: link to ../README.md#no-such-section: no heading #no-such-section in README.md",
        "docs/new.md:2: `probe/gone.py`: no such file or folder"]


def test_a_copy_without_git_lists_the_same_files(monkeypatch):
    """A release archive has no .git: the checks then walk the tree, skipping what git ignores."""
    from helpers import doc_commands

    tracked_by_git = doc_commands.repo_files()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(doc_commands.subprocess, "run", no_git)
    walked = doc_commands.repo_files()
    # every tracked file found (a built corpus or a new file may add some), nothing from git's or a venv's folders
    assert set(tracked_by_git) <= set(walked) and "README.md" in walked and ".ci/run" in walked
    assert not [f for f in walked if f.split("/")[0] in (".git", ".venv", ".ci-venv", "runs") or "__pycache__" in f]
