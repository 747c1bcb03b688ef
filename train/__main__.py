"""`python -m train`: the command line (usage and recipe: the package docstring, train/__init__.py)."""

from __future__ import annotations

import sys

from model import ConfigError

from . import TrainError, parse_args, run


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    try:
        run(ns)
    except (TrainError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
