"""probe.teardown.quick_teardown: the commands' processes leave their objects out of Python's last
collection, and every command that imports torch asks for it where it runs as a process."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the command modules whose processes import torch (python -m PKG, and the aliases under model/)
COMMANDS = ["probe/__main__.py", "model/__main__.py", "generate/__main__.py", "train/__main__.py",
            "analyses/ablate/__main__.py", "analyses/importance/__main__.py", "analyses/steer/__main__.py",
            "analyses/report/__main__.py", "data/report.py", "model/generate.py", "model/train.py"]


def _frozen_at_exit(with_teardown: bool) -> int:
    """gc.get_freeze_count() in the last atexit handler of a process that imported torch."""
    code = ("import atexit, gc, torch\n"
            "atexit.register(lambda: print(gc.get_freeze_count(), flush=True))\n"  # runs after the ones below
            + ("from probe.teardown import quick_teardown\nquick_teardown()\n" if with_teardown else ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.split()[-1])


@pytest.mark.slow  # two fresh processes that import torch
def test_the_objects_alive_at_exit_are_frozen_before_the_last_collection():
    assert _frozen_at_exit(True) > 50_000  # torch's modules, functions and classes
    assert _frozen_at_exit(False) == 0  # control: Python's default walks them all at the end


def _main_block(path: Path) -> ast.If:
    tree = ast.parse(path.read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert len(blocks) == 1, f"{path}: no `if __name__ == \"__main__\":` block"
    return blocks[0]


@pytest.mark.parametrize("rel", COMMANDS)
def test_every_command_asks_for_it_where_it_runs_as_a_process(rel):
    block = ast.unparse(_main_block(ROOT / rel))
    assert "quick_teardown()" in block or "cli()" in block, f"{rel}: {block}"


def test_the_console_script_runs_through_cli():
    """`dsv3-probe` calls probe.__main__.cli, which asks for it before main(); tests call main() in
    their own process, which must never freeze (its objects would then never be collected)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"dsv3-probe": "probe.__main__:cli"}
    funcs = {n.name: ast.unparse(n) for n in ast.parse((ROOT / "probe" / "__main__.py").read_text()).body
             if isinstance(n, ast.FunctionDef)}
    assert "quick_teardown()" in funcs["cli"] and "quick_teardown" not in funcs["main"]


@pytest.mark.slow  # a fresh process that imports torch
def test_a_process_that_loaded_triton_ends_without_nanobind_leak_reports():
    """torch's optimizers import triton where it is installed; with its objects frozen at exit, its
    nanobind bindings printed dozens of "nanobind: leaked ..." lines after `python -m train`'s last one."""
    pytest.importorskip("triton")
    code = ("import torch\nfrom probe.teardown import quick_teardown\nquick_teardown()\n"
            "torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])\nimport sys\nassert 'triton' in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nanobind" not in p.stderr, p.stderr[:500]
