"""The job commands of analyses (ablate, importance, steer) as a process starts them: --help answers
without importing torch, and the packages' lazy exports (probe/lazy.py) resolve every name."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("analyses.ablate", "analyses.importance", "analyses.steer")


def test_help_never_imports_torch():
    """Each command's --help took 1.3-2.7 s, nearly all of it importing torch; now the packages export
    lazily and the commands import their jobs after parsing."""
    from helpers.processes import help_of

    usage, torch_modules = help_of(*COMMANDS)
    assert torch_modules == []
    assert all(usage[m].startswith(f"usage: python -m {m} [-h] [--run RUN]") for m in COMMANDS), usage


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


@pytest.mark.parametrize("modules", [
    "analyses.metrics",
    pytest.param("analyses.ablate.run, analyses.importance.run, analyses.steer.run, probe.record, probe.speculative",
                 marks=pytest.mark.slow, id="jobs"),  # 2-3 s: a fresh interpreter that imports torch
])
def test_the_jobs_import_no_pandas_before_they_make_a_table(modules):
    """A job's every rank imports its modules, and two put pandas (about 0.2 s) on the ranks of every
    ablation, importance, steering, record and spec job: analyses.metrics' speculative module, for its
    type hints alone (DuckDB's .df() imports pandas when a table is made; the jobs import the package
    through their input checks, analyses.metrics._common), and the importance job's run.py, for a table
    name and an error class it took from the pandas-based analysis module."""
    code = f"import sys, {modules}; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("module,target,argv", [
    ("analyses.ablate", "analyses.ablate.run.ablate", ["--out", "{tmp}/o", "--top", "1"]),
    ("analyses.importance", "analyses.importance.run.importance", ["--out", "{tmp}/o"]),
    ("analyses.report", "analyses.report.__main__._check_numbers", ["{tmp}/run"]),
])
def test_ctrl_c_is_one_line_and_exit_130(module, target, argv, tmp_path, capsys, monkeypatch):
    """Ctrl-C in ablate, importance and report printed a KeyboardInterrupt traceback; record, spec and
    generate print one line. The commands' shared wrapper (probe.job_exit.closed_pipe_quiet) now does too."""
    main = importlib.import_module(f"{module}.__main__").main
    owner, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(owner), name, _interrupted)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a command end to end in a fresh process (the quick loop leaves these out)
def test_a_real_sigint_is_one_line(tmp_path):
    """The same, from a real SIGINT delivered while the job runs (a process, as a terminal's Ctrl-C)."""
    script = ("import os, signal, sys, time\n"
              "import analyses.ablate.run as r\n"
              "def job(*a, **k):\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(30)\n"
              "r.ablate = job\n"
              "from analyses.ablate.__main__ import main\n"
              f"sys.exit(main(['--out', {str(tmp_path / 'o')!r}, '--top', '1']))\n")
    # SIGINT's default disposition in the child, as under a terminal: a suite started in the background
    # (`bash .ci/run &`) has SIGINT ignored, which children inherit and Python then leaves alone
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (p.returncode, p.stderr.strip()) == (130, "interrupted"), p.stderr
    assert not (tmp_path / "o").exists()
