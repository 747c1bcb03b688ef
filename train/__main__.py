"""`python -m train`: the command line (usage and recipe: the package docstring, train/__init__.py)."""

from __future__ import annotations

import sys

from model import ConfigError
from probe.job import exit_ranks

from . import TrainError, parse_args, run


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    try:
        run(ns)
    except (TrainError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        exit_ranks(2)  # under torchrun: leave without interpreter teardown (probe.job.exit_ranks says why)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: one line, as the other commands (it was a traceback)
        print(f"\ninterrupted: the run in {ns.out}, if it had begun, is marked interrupted (continue it with "
              "--resume, from its last checkpoint)", file=sys.stderr)
        exit_ranks(130)
        raise SystemExit(130) from None
    exit_ranks(0)


if __name__ == "__main__":
    main()
