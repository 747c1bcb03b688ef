"""Generation moved to its own package, `generate/`: this alias keeps `python -m model.generate` and
`from model.generate import generate` working. See generate/__init__.py."""

from generate import *  # noqa: F401,F403
from generate import __all__  # noqa: F401

if __name__ == "__main__":
    import sys

    from generate.__main__ import cli

    sys.exit(cli())
