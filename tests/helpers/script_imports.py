"""Do a script's imports resolve the way they will when it runs? For scripts no test runs end to end
(benchmarks/): each import inside their functions only fails when someone runs them.

    python tests/helpers/script_imports.py benchmarks/*.py     # prints one JSON list of problems

For each script, in this one process: its top level runs (as a module, not as __main__: sys.path set-up,
top-level imports, no main()), with this repository's own packages dropped from sys.modules first, so
that they resolve through the sys.path the script built (a test folder that shadows a package shows
up). Then, for this repository's packages (third-party ones are pinned by pyproject.toml, and importing
transformers alone takes seconds), every `from X import a, b` anywhere in the file must give X with a
and b, and for every `import X`, each `X.name` the file reads must exist.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OURS = ("model", "probe", "analyses", "dashboards", "train", "generate", "data", "helpers", "conftest")


def _forget_ours() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in OURS:
            del sys.modules[name]


def _forget_siblings(folder: Path) -> None:
    """Modules imported from the script's own folder (benchmarks/_cli, which puts the repository first
    on sys.path): a fresh `python script.py` runs their top level again, so this check does too."""
    folder = folder.resolve()
    for name, mod in list(sys.modules.items()):
        where = getattr(mod, "__file__", None)
        if where and _folder_of(where) == folder:
            del sys.modules[name]


@functools.cache
def _folder_of(path: str) -> Path:
    """The resolved folder of a module's file, kept for the process: resolving each of the ~4,000
    modules' paths (torch's, pandas') took ~0.3 s a script, most of this check."""
    return Path(path).resolve().parent


def _resolve(module: str, names: list[str]) -> list[str]:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import is the finding
        return [f"import {module}: {type(e).__name__}: {e}"]
    missing = []
    for name in names:
        if hasattr(mod, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            where = getattr(mod, "__file__", None) or list(getattr(mod, "__path__", []))
            missing.append(f"{module}.{name} does not exist ({module} resolved to {where})")
    return missing


def check(script: Path) -> list[str]:
    """Problems with `script`'s imports, each naming the script and line."""
    tree = ast.parse(script.read_text(), filename=str(script))
    saved = list(sys.path)
    _forget_ours()
    _forget_siblings(script.parent)
    sys.path.insert(0, str(script.parent))  # as `python script.py` would
    problems = []
    try:
        try:
            runpy.run_path(str(script), run_name="script_imports_check")
        except Exception as e:  # noqa: BLE001
            return [f"{script}: its top level fails: {type(e).__name__}: {e}"]
        plain: dict[str, int] = {}  # `import X` -> line
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in OURS:
                names = [a.name for a in node.names if a.name != "*"]
                problems += [f"{script}:{node.lineno}: {p}" for p in _resolve(node.module, names)]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname is None and "." not in a.name:
                        plain.setdefault(a.name, node.lineno)
        used: dict[str, set[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in plain:
                used.setdefault(node.value.id, set()).add(node.attr)
        for module, line in plain.items():
            if module.split(".")[0] in OURS:
                problems += [f"{script}:{line}: {p}" for p in _resolve(module, sorted(used.get(module, ())))]
    finally:
        sys.path[:] = saved
        _forget_ours()
    return problems


def main(paths: list[str]) -> None:
    problems = [p for path in paths for p in check(Path(path).resolve())]
    print(json.dumps(problems))


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # NOTE: without the interpreter's teardown of what the scripts imported (torch, streamlit: ~0.5 s)
