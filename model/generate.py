"""Generation moved to its own package, `generate/`: this alias keeps `python -m model.generate` and
`from model.generate import generate` working. See generate/__init__.py."""

import sys

from probe.job_signals import quiet_start

if __name__ == "__main__":  # the command: its flags parse before torch is imported (generate/__main__.py)
    with quiet_start(True):  # Ctrl-C while the command imports: one line, not a traceback
        from generate.__main__ import cli
    sys.exit(cli())
else:
    from generate import *  # noqa: F401,F403
    from generate import __all__  # noqa: F401
