"""What every benchmark script's command line shares: counts that must be at least 1, and errors as
one line (`error: ...`, exit status 2) rather than a traceback. Imported as `_cli` (the scripts run as
`python benchmarks/NAME.py`, which puts this folder first on sys.path). Importing it also puts this
checkout's root first, so that a script times this checkout's `model`, not whichever one the venv's
editable install names (a worktree or a second clone timed against a shared venv ran the other code)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run(main: Callable[[], object]) -> None:
    """main(), with the project's errors (all ValueErrors: a checkpoint, config, prompt file or corpus
    that is not right) and a missing file printed as one line."""
    try:
        code = main()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
