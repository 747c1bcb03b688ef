"""The repository's Markdown names files, folders and sections of itself: in links (`[text](path#section)`)
and in code spans (`docs/run-tables.md`, `analyses/notebooks/`). Each must be there on a fresh clone:
a tracked file or folder, and a heading of the target page for an anchor (GitHub's slugs)."""

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
