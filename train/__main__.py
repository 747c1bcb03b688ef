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
    exit_ranks(0)


if __name__ == "__main__":
    main()
