"""The suite's own set-up (tests/conftest.py): what the processes the tests start inherit."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from helpers import threads


def test_a_child_process_gets_the_workers_thread_count():
    """Under xdist a test's child process (a command, a report, the dashboard's server) ran torch on a
    thread per core, spinning against the other worker's tests; it now gets the worker's count (one on
    two cores with two workers). An OMP_NUM_THREADS set before the suite started, or a run without
    workers, leaves the children's environment as it was."""
    got = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS'))"],
                         capture_output=True, text=True, timeout=60).stdout.strip()
    if "PYTEST_XDIST_WORKER" in os.environ and threads.USER_OMP is None:
        assert got == str(torch.get_num_threads()), got
    else:
        assert got == str(threads.USER_OMP), got
