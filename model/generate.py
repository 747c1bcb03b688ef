"""Generation moved to its own package, `generate/`: this alias keeps `python -m model.generate` and
`from model.generate import generate` working. See generate/__init__.py."""

import sys

from probe.job_signals import quiet_start

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    from generate import *  # noqa: F401,F403
    from generate import __all__  # noqa: F401

if __name__ == "__main__":
    with quiet_start(True):
        from generate.__main__ import cli

    sys.exit(cli())
