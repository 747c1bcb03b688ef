"""The job commands of analyses (ablate, importance, steer) as a process starts them: --help answers
without importing torch, and the packages' lazy exports (probe/lazy.py) resolve every name."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("analyses.ablate", "analyses.importance", "analyses.steer")

# `python -m X --help` for each command in one fresh process (runpy: the package first, then __main__)
HELP = """
import contextlib, io, json, runpy, sys
usage = {}
for m in %r:
    sys.argv, buf = [m, "--help"], io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(m, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
    usage[m] = buf.getvalue().splitlines()[0]
print(json.dumps({"usage": usage, "torch": sorted(k for k in sys.modules if k.split(".")[0] == "torch")}))
""" % (COMMANDS,)


def test_help_never_imports_torch():
    """Each command's --help took 1.3-2.7 s, nearly all of it importing torch; now the packages export
    lazily and the commands import their jobs after parsing."""
    out = subprocess.run([sys.executable, "-c", HELP], cwd=ROOT, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == []
    assert all(got["usage"][m].startswith(f"usage: python -m {m} [-h] [--run RUN]") for m in COMMANDS), got["usage"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_exported_name_resolves(name):
    package = importlib.import_module(name)
    assert package.__all__ and all(getattr(package, n) is not None for n in package.__all__)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        package.nope  # noqa: B018 - the attribute access is the test


def test_a_packages_submodule_is_reached_as_an_attribute():
    """`probe.schema`, which `probe`'s docstring names, was an AttributeError until imported explicitly (a
    researcher's tour); a submodule is now imported on first access, and only where it exists."""
    code = ("import probe, sys; pre = 'probe.schema' in sys.modules; s = probe.schema.TABLES; "
            "print(pre, sorted(s)[:1], hasattr(probe, 'no_such_module'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "['ablations']", "False"], out.stdout
