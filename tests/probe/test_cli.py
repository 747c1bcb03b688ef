"""Command-line behaviour shared by the commands (probe/job_exit.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts fresh processes: `pytest -m "not slow"` skips them

ROOT = Path(__file__).resolve().parents[2]

# a command whose output (1.6 MB) is far larger than a pipe's buffer, so its reader's early exit matters
SCRIPT = """
import sys
from probe.job import closed_pipe_quiet, job_error

def main():
    for i in range(200_000):
        print(f"row {i:>7}")
    return 0

def reporting():  # as the commands catch their expected errors, OSError among them
    try:
        return main()
    except OSError as e:
        return job_error(e)

mains = {"quiet": closed_pipe_quiet(main), "reporting": closed_pipe_quiet(reporting), "plain": main}
sys.exit(mains[sys.argv[1]]())
"""


def _first_line_then_close(mode: str) -> tuple[str, int, str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader stops, as `| head -1` does
    err = proc.stderr.read()
    return first, proc.wait(timeout=60), err


def test_a_closed_pipe_ends_the_command_quietly():
    first, code, err = _first_line_then_close("quiet")
    assert first.strip() == "row       0"
    assert code == 141 and err == "", err
    # a command that reports its OSErrors as one line (job_error) still leaves a closed pipe to it
    first, code, err = _first_line_then_close("reporting")
    assert first.strip() == "row       0" and code == 141 and err == "", err
    # control: the same main undecorated dies with the traceback users saw from `analyses.steer | head`
    _, code, err = _first_line_then_close("plain")
    assert code != 0 and "BrokenPipeError" in err


HELP_SCRIPT = """
import json, sys
from pathlib import Path
from probe import __main__ as cli

helps = {}
for argv in ([], ["record"], ["spec"], ["import"], ["dashboard"]):
    try:
        cli.parser().parse_args([*argv, "--help"])
    except SystemExit:
        pass
cli._exec_streamlit = lambda cmd, env: 0  # the server is not started
runs = Path(sys.argv[1])  # the test's tmp_path
(runs / "r").mkdir()
(runs / "r" / "run.json").write_text("{}")
code = cli.main(["dashboard", str(runs)])
print(json.dumps({"code": code, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
"""


def test_help_and_the_dashboard_command_never_import_torch(tmp_path):
    """`dsv3-probe --help`, each command's --help and `dsv3-probe dashboard` (whose pages never use
    torch) run without importing torch: the jobs import it where they run (~2.5 s of start-up)."""
    import json

    out = subprocess.run([sys.executable, "-c", HELP_SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"code": 0, "torch": []}, last
    assert "usage: dsv3-probe spec" in out.stdout and "sglang" in out.stdout  # the help texts were printed


ALLOCATOR_SCRIPT = """
import json, os, sys
import probe
out = {"import_probe_imports_pyarrow": "pyarrow" in sys.modules}
__import__(sys.argv[1])  # a job's entry point
import pyarrow as pa
from probe.allocator import reader_env
out |= {"allocator": pa.default_memory_pool().backend_name,
        "reader_env": reader_env(dict(os.environ)).get("ARROW_DEFAULT_MEMORY_POOL")}
print(json.dumps(out))
"""


def _allocator(entry: str, **env) -> dict:
    import json
    import os

    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    p = subprocess.run([sys.executable, "-c", ALLOCATOR_SCRIPT, entry], cwd=ROOT, capture_output=True, text=True,
                       env=base | {"PYTHONPATH": str(ROOT)} | env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_the_jobs_put_arrow_on_the_system_allocator_and_readers_keep_the_default():
    """probe/allocator.py: the jobs' entry points choose Arrow's system allocator before pyarrow is
    imported (mimalloc fragmented the record job's heap); `import probe` alone imports no pyarrow,
    a user's own choice is kept, and the dashboard a job starts gets the default back."""
    for entry in ("probe.__main__", "analyses.ablate.__main__", "analyses.importance.__main__",
                  "analyses.steer.__main__"):
        got = _allocator(entry)
        assert got == {"import_probe_imports_pyarrow": False, "allocator": "system", "reader_env": None}, entry
    assert _allocator("probe.__main__", ARROW_DEFAULT_MEMORY_POOL="mimalloc") == {
        "import_probe_imports_pyarrow": False, "allocator": "mimalloc", "reader_env": "mimalloc"}
    # control: a module that is not a job's entry point leaves Arrow's default alone
    assert _allocator("probe.run")["allocator"] == "mimalloc"


def test_ctrl_c_before_the_job_begins_says_so(monkeypatch, capsys):
    """A KeyboardInterrupt before the recorder has begun (loading torch or the model) carries no
    message; the command says nothing was recorded rather than printing an empty line. Once the job
    has begun, its own message (what was kept, --resume) is printed as it is."""
    import probe.record
    from probe import __main__ as cli

    for exc, want in ((KeyboardInterrupt(), "interrupted before anything was recorded"),
                      (KeyboardInterrupt("interrupted: 2 batches kept; --resume continues"),
                       "interrupted: 2 batches kept; --resume continues")):
        def stop(opts, exc=exc):
            raise exc

        monkeypatch.setattr(probe.record, "record", stop)
        assert cli.main(["record", "--out", "nowhere", "--max-tokens", "10"]) == 130
        assert capsys.readouterr().err == f"\n{want}\n"


# Ctrl-C inside the `import torch` that ablate, importance and steer make once their flags parse
# (a finder stands in for the signal: it interrupts torch's import once, as one Ctrl-C does)
INTERRUPTED_IMPORT = """
import sys
class Interrupt:
    fired = False
    def find_spec(self, name, path=None, target=None):
        if name == "torch._decomp" and not Interrupt.fired:
            Interrupt.fired = True
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from analyses.ablate.__main__ import main
sys.exit(main(["--run", "nowhere", "--top", "1"]))
"""


def test_ctrl_c_while_a_job_imports_torch_is_one_line():
    """The interrupted import leaves torch out of sys.modules but some of its submodules in: the
    exit used to import torch.distributed again, and torch's second registration of its operators
    printed a RuntimeError traceback under "interrupted" (found interrupting a sweep as it started)."""
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130 and proc.stderr == "\ninterrupted\n", proc.stderr[-2000:]
