"""How the commands start: Ctrl-C while they import (probe.job_signals.quiet_start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Found on sys.path before anything else is imported (site.py's sitecustomize): sends this process a real
# SIGINT when `STOP_AT` is first looked for, that is as its import begins, as a Ctrl-C then would.
HOOK = """import os, signal, sys
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["STOP_AT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Stop())
"""


@pytest.mark.slow  # 0.1-0.5 s each on the 2-core EPYC (2026-12-07): the quick loop leaves it out
@pytest.mark.parametrize("argv, module", [
    (["-m", "model", "params", "--config", "tiny"], "torch"),  # its commands' imports, once the flags parse
    (["-m", "model", "--help"], "probe.teardown"),  # its __main__, just before main()
    (["-m", "model.train", "--help"], "probe.job_exit"),  # the alias imports train's command
    (["-m", "model.train", "--steps", "1", "--out", "{tmp}/run"], "torch"),  # train's loop, once the flags parse
    (["-m", "train", "--steps", "1", "--out", "{tmp}/run"], "torch"),  # the same, as `python -m train` starts it
    (["-m", "generate", "--help"], "probe.job_exit"),  # its __main__'s imports
    (["-m", "generate", "--demo", "{tmp}/demo", "--prompt", "hi"], "torch"),  # the model, once the flags parse
    (["-m", "probe", "record", "--help"], "numpy"),
    (["dsv3-probe", "spec", "--help"], "pyarrow"),  # the console script: no `-m`, not __main__
    (["-m", "analyses.ablate", "--help"], "numpy"),
    (["-m", "analyses.importance", "--help"], "probe.job_exit"),
    (["-m", "analyses.steer", "--help"], "probe.teardown"),
    (["-m", "analyses.placement", "--help"], "numpy"),  # its package's imports
    (["-m", "analyses.report", "--help"], "pyarrow"),  # its package's imports
    (["-m", "analyses.report", "--help"], "probe.job_exit"),  # its __main__'s
], ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_ctrl_c_while_a_command_imports_is_one_line(tmp_path, argv, module):
    """A real SIGINT while a command of the README's table imports `module`: one line and exit status 130,
    as Ctrl-C once the command runs. Before, only train, generate and analyses.variants caught it: model,
    probe (`python -m probe` and `dsv3-probe`), ablate, importance, steer, placement and report printed a
    KeyboardInterrupt traceback from inside the import (a review). model, train and generate import torch
    once their flags parse, under the same guard: a SIGINT as that import begins is that one line too
    (with train's guard off, the one at `-m model.train --steps 1` was a traceback)."""
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    argv = [a.format(tmp=tmp_path) for a in argv]  # what a command may write goes to tmp_path
    command = [str(Path(sys.executable).with_name(argv[0])), *argv[1:]] if argv[0] == "dsv3-probe" else [
        sys.executable, *argv]
    assert Path(command[0]).exists(), f"{command[0]}: not installed (pip install -e .)"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "STOP_AT": module}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        130, ["interrupted while starting: nothing was done"]), done.stderr[-2000:]
    assert done.stdout == ""  # stopped before main() printed its usage or ran
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_the_model_train_and_generate_commands_answer_help_without_torch():
    """`python -m model`, `train` and `generate` (and the aliases `model.train`, `model.generate`) imported
    torch before they parsed their flags: --help took 1.6-2.4 s, nearly all of it that import, where the
    other commands answer in a few tenths of a second. Their packages now export lazily and the commands
    import torch once the flags parse."""
    from helpers.processes import help_of

    commands = ["model", "train", "generate", "model.train", "model.generate"]
    usage, torch_modules = help_of(*commands)
    assert torch_modules == [], torch_modules[:5]
    for m in commands:
        assert usage[m].startswith(f"usage: python -m {m.removeprefix('model.')} "), usage
