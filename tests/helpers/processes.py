"""Waiting on a record job started as a subprocess (the kill-then-resume tests)."""

from __future__ import annotations

import json
import time
from pathlib import Path


def wait_for_commits(proc, out: Path, done: int = 3, timeout: float = 120) -> None:
    """Return once rank 0 of the run in `out` has committed batch `done` (its `_progress/r000.json`),
    or the process has ended, or `timeout` seconds have passed."""
    prog = Path(out) / "_progress" / "r000.json"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if prog.exists() and json.loads(prog.read_text()).get("done", -1) >= done:
            return
        time.sleep(0.01)
