"""Command-line behaviour shared by the commands (probe/job.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a command whose output (1.6 MB) is far larger than a pipe's buffer, so its reader's early exit matters
SCRIPT = """
import sys
from probe.job import closed_pipe_quiet

def main():
    for i in range(200_000):
        print(f"row {i:>7}")
    return 0

sys.exit(closed_pipe_quiet(main)() if sys.argv[1] == "quiet" else main())
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
    # control: the same main undecorated dies with the traceback users saw from `analyses.steer | head`
    _, code, err = _first_line_then_close("plain")
    assert code != 0 and "BrokenPipeError" in err
