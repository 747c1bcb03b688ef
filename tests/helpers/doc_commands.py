"""Do the commands the documentation shows still parse? Every `dsv3-probe ...`, `python -m ...`,
`python path/to/script.py ...` and `torchrun ...` line of the Markdown files (fenced blocks and
inline code, where a script's flags may follow its name alone: `bench_record.py --part memory`) and
of the project's module docstrings is handed to the parser of the command it names,
as that command would receive it, and stopped there: no job runs. A flag renamed or removed, a
subcommand or module moved, a choice dropped, a script or file deleted shows up as that command's
argparse error, with the file and line that show it.

    python tests/helpers/doc_commands.py [FILE...]   # prints one JSON object: {"checked": [...], "problems": [...]}

With no FILE: every tracked Markdown file and the Python files of the project's packages,
benchmarks/ and tests/gpu/. Run in a process of its own (each command's module runs as `__main__`
there): this script, or a child forked from the tests' process (tests/docs/test_doc_commands.py).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "probe", "analyses", "dashboards", "train", "generate", "data")  # `python -m` targets checked
PROGRAMS = ("dsv3-probe", "python", "python3", "torchrun", "pip")  # a line that starts with one of these is a command
SCRIPT_DIRS = ("benchmarks", "tests/gpu")  # `python path.py` scripts whose parser is checked
FILE_ARGS = {  # program -> how many leading words name it; the next word is a file of the repository
    ("bash",): 1, ("streamlit", "run"): 2, ("jupyter", "execute"): 2, ("jupyter", "lab"): 2}
SEPARATORS = {"&&", "||", "|", ";", "&"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # RUN, DIR, N: a value the reader fills in
_REQUIRED = re.compile(r"error: (the following arguments are|one of the arguments .* is) required")
_BAD_VALUE = re.compile(r"invalid \S+ value: '([A-Z][A-Z0-9_]*)'")


@dataclass
class Command:
    where: str  # file:line
    text: str  # the command as written (continuations joined)
    mention: bool = False  # inline code in prose: it names a command and may leave out required arguments


@dataclass
class Invocation:
    """What one command runs: a module (`python -m`, dsv3-probe) or a script, with its arguments;
    neither where the command was checked without running anything (a file that is there, an extra
    that pyproject.toml has)."""
    module: str | None
    script: str | None
    args: list[str]


class Parsed(Exception):
    """Raised from ArgumentParser.parse_args once parsing succeeded: the command stops there."""


# ----------------------------------------------------------------------------------------- finding
def _script_span(span: str) -> str:
    """An inline span that runs one of SCRIPT_DIRS' scripts without its interpreter, by path or by name
    (`bench_record.py --part memory`, `check_parallel.py --cpu`), as the `python` line it stands for;
    any other span (a script named without arguments among them) as it is."""
    words = span.split()
    if len(words) < 2 or not words[0].endswith(".py"):
        return span
    if "/" in words[0]:
        found = [words[0]] if any(words[0].startswith(d + "/") for d in SCRIPT_DIRS) else []
    else:
        found = [f"{d}/{words[0]}" for d in SCRIPT_DIRS if (REPO / d / words[0]).is_file()]
    return f"python {found[0]} {' '.join(words[1:])}" if len(found) == 1 else span


def _inline(line: str) -> list[str]:
    return [_script_span(s.strip()) for s in _INLINE.findall(line)]


def _starts_a_command(text: str) -> bool:
    first = text.split(maxsplit=1)[0] if text.split() else ""
    return first in PROGRAMS or any(text.startswith(" ".join(p) + " ") for p in FILE_ARGS)


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join lines ending in a backslash with the next, keeping the first line's number."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for no, line in lines:
        if pending is not None:
            no, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (no, line.rstrip()[:-1])
            continue
        pending = None
        out.append((no, line.strip()))
    if pending is not None:
        out.append(pending)
    return out


def from_markdown(text: str, name: str) -> list[Command]:
    """Commands in fenced blocks (any but python/json/yaml/text ones) and in inline code spans."""
    found: list[Command] = []
    fence: str | None = None
    block: list[tuple[int, str]] = []
    for no, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m and fence is None:
            fence, block = m.group(1), []
            continue
        if m and fence is not None and not m.group(1):
            if fence not in ("python", "py", "json", "yaml", "toml", "text"):
                found += [Command(f"{name}:{n}", t) for n, t in _logical_lines(block) if _starts_a_command(t)]
            fence = None
            continue
        if fence is not None:
            block.append((no, line))
        else:
            found += [Command(f"{name}:{no}", s, mention=True) for s in _inline(line) if _starts_a_command(s)]
    return found


def from_docstrings(source: str, name: str) -> list[Command]:
    """Commands on lines of a module's docstring and in its inline code spans."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    doc = ast.get_docstring(tree, clean=False)
    if not doc or not tree.body:
        return []
    first = tree.body[0].lineno  # the docstring's first line
    lines = [(first + i, line) for i, line in enumerate(doc.splitlines())]
    found = [Command(f"{name}:{n}", t) for n, t in _logical_lines(lines) if _starts_a_command(t)]
    for no, line in lines:
        found += [Command(f"{name}:{no}", s, mention=True) for s in _inline(line)
                  if _starts_a_command(s) and not _starts_a_command(line.strip())]
    return found


UNTRACKED = {".git", ".venv", ".ci-venv", "runs", "__pycache__", "build", "dist", "cache", "token_cache"}


def repo_files() -> list[str]:
    """The repository's files, relative: git's tracked ones, or, in a copy without git (a release
    archive), every file but hidden ones and those in the folders .gitignore keeps out (UNTRACKED)."""
    try:
        return subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
        for d, dirs, names in os.walk(REPO):
            dirs[:] = sorted(x for x in dirs if x not in UNTRACKED and (x == ".ci" or not x.startswith("."))
                             and not x.endswith(".egg-info"))
            out += [os.path.relpath(os.path.join(d, n), REPO) for n in names if not n.startswith(".") or n == ".gitignore"]
        return sorted(out)


def default_files() -> list[Path]:
    tracked = repo_files()
    keep = [p for p in tracked if p.endswith(".md") or (p.endswith(".py") and (
        p.split("/")[0] in PACKAGES or any(p.startswith(d + "/") for d in SCRIPT_DIRS)))]
    return [REPO / p for p in sorted(keep)]


def commands(files: list[Path]) -> list[Command]:
    out: list[Command] = []
    for f in files:
        name = str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f)
        text = f.read_text(encoding="utf-8")
        out += from_markdown(text, name) if f.suffix == ".md" else from_docstrings(text, name)
    return out


# ----------------------------------------------------------------------------------------- reading
def synopsis_to_line(text: str) -> str:
    """A usage synopsis as one command line: `[--out F]` -> `--out F` (optional parts taken),
    `force|bias` -> `force` (the first alternative; a shell pipe has spaces around it), `\\|` (a pipe
    escaped in a Markdown table) read as `|`, `...` (more of the same) dropped."""
    text = text.replace("\\|", "|")
    text = re.sub(r"(?<=[^\s|])\|[^\s|\]]+", "", text)
    text = re.sub(r"(?<!\S)\.\.\.(?!\S)", "", text)
    return re.sub(r"(?<!\S)\[([^\[\]]*)\]", r"\1", text)  # a bracket opening a word: not '.[test]'


def segments(text: str) -> list[list[str]]:
    """A shell line's simple commands as word lists: split at && || | ; &, comments dropped, leading
    VAR=value assignments dropped, $VAR and ${VAR} left for the caller."""
    lex = shlex.shlex(synopsis_to_line(text), posix=True, punctuation_chars="&|;")
    lex.whitespace_split = True
    words, out = [], []
    for w in lex:
        if w in SEPARATORS:
            out.append(words)
            words = []
        else:
            words.append(w)
    out.append(words)
    trimmed = []
    for ws in out:
        while ws and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", ws[0]):
            ws = ws[1:]
        if ws:
            trimmed.append(ws)
    return trimmed


def _shell_values(words: list[str]) -> list[str]:
    """$VAR stand-ins: a shell would substitute something; "0" parses as a string and as a number."""
    return [re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "0", w) for w in words]


def invocation(words: list[str]) -> Invocation | str | None:
    """What `words` runs, a problem (str) found without running anything, or None when it is not ours
    to check (pip, pytest, jupyter kernels, another program)."""
    words = _shell_values(words)
    prog = words[0]
    for lead, n in FILE_ARGS.items():
        if tuple(words[: len(lead)]) == lead:
            if len(words) <= n:
                return None
            return Invocation(None, None, []) if (REPO / words[n]).exists() else f"{words[n]}: no such file"
    if words[:2] == ["pip", "install"]:
        return _extras(words[2:])
    if prog == "dsv3-probe":
        return Invocation("probe", None, words[1:])
    if prog == "torchrun":
        return _torchrun(words[1:])
    if prog not in ("python", "python3") or len(words) < 2:
        return None
    if words[1] == "-m" and len(words) > 2:
        mod = words[2]
        if mod == "torch.distributed.run":
            return _torchrun(words[3:])
        ours = mod.split(".")[0] in PACKAGES and not PLACEHOLDER.fullmatch(mod.rsplit(".", 1)[-1])
        return Invocation(mod, None, words[3:]) if ours else None
    if words[1].endswith(".py"):
        return _script(words[1], words[2:])
    return None


def _extras(words: list[str]) -> Invocation | str | None:
    """`pip install -e '.[a,b]'`: every extra named must be one of pyproject.toml's."""
    import tomllib

    named = [e.strip() for w in words for m in [re.fullmatch(r"\.\[(.*)\]", w)] if m for e in m.group(1).split(",")]
    if not named:
        return None
    have = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    missing = [e for e in named if e not in have]
    return f"no extra {', '.join(missing)} in pyproject.toml (extras: {', '.join(have)})" if missing \
        else Invocation(None, None, [])


def _torchrun(words: list[str]) -> Invocation | str | None:
    from torch.distributed.run import parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            a = parse_args(words)
    except SystemExit:
        return "torchrun: " + (err.getvalue().strip().splitlines() or ["bad arguments"])[-1]
    if a.module:
        return Invocation(a.training_script, None, a.training_script_args) if \
            a.training_script.split(".")[0] in PACKAGES else None
    return _script(a.training_script, a.training_script_args)


def _script(path: str, args: list[str]) -> Invocation | str | None:
    """A script of this repository (a path under one of its folders); a user's own (`my_script.py`)
    or a placeholder (`benchmarks/NAME.py`) is not checked."""
    parts = Path(path).parts
    if len(parts) < 2 or not (REPO / parts[0]).is_dir() or PLACEHOLDER.fullmatch(Path(path).stem):
        return None
    if not (REPO / path).is_file():
        return f"{path}: no such file"
    if not any(path.startswith(d + "/") for d in SCRIPT_DIRS):
        return None
    return Invocation(None, path, args)


# ----------------------------------------------------------------------------------------- parsing
def dry_parse(inv: Invocation) -> str | None:
    """`_dry_parse`, with a placeholder that argparse refused as a number (`--gpus G`) read as 1."""
    for _ in range(len(inv.args) + 1):
        problem = _dry_parse(inv)
        m = _BAD_VALUE.search(problem or "")
        if not m or m.group(1) not in inv.args:
            return problem
        inv = Invocation(inv.module, inv.script, ["1" if a == m.group(1) else a for a in inv.args])
    return problem


def _dry_parse(inv: Invocation) -> str | None:
    """Run the command's module or script as `__main__` with its arguments until its ArgumentParser
    has parsed them; None when they parsed, else argparse's message."""
    real = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        real(self, args, namespace)
        raise Parsed

    prog = inv.module or inv.script
    argv0 = str(REPO / inv.script) if inv.script else prog
    err, out = io.StringIO(), io.StringIO()
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    argparse.ArgumentParser.parse_args = stop_after_parsing
    try:
        sys.argv = [argv0, *inv.args]
        if inv.script:  # as `python path/to/script.py` does
            sys.path.insert(0, str(Path(argv0).parent))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            if inv.module:
                runpy.run_module(inv.module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv0, run_name="__main__")
    except Parsed:
        return None
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return None
        return (err.getvalue().strip().splitlines() or [f"exit status {e.code}"])[-1]
    except Exception as e:  # noqa: BLE001 - any failure before parsing is the finding
        return f"{type(e).__name__}: {e}"
    finally:
        argparse.ArgumentParser.parse_args = real
        sys.argv[:], sys.path[:] = saved_argv, saved_path
    return "ran to the end without parsing its arguments"


def check(cmds: list[Command]) -> dict:
    checked, problems = [], []
    for c in cmds:
        try:
            segs = segments(c.text)
        except ValueError as e:  # an unclosed quote
            problems.append(f"{c.where}: {c.text}: cannot be read as a shell line ({e})")
            continue
        for words in segs:
            inv = invocation(words)
            if inv is None:
                continue
            problem = inv if isinstance(inv, str) else dry_parse(inv) if inv.module or inv.script else None
            checked.append(f"{c.where}: {shlex.join(words)}")
            if problem and c.mention and _REQUIRED.search(problem):
                continue  # a command named in prose, not a line to paste
            if problem:
                problems.append(f"{c.where}: {c.text}: {problem}")
    return {"checked": checked, "problems": problems}


def main(argv: list[str]) -> int:
    files = [Path(a).resolve() for a in argv] or default_files()
    sys.path.insert(0, str(REPO))
    print(json.dumps(check(commands(files))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
