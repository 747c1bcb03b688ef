"""`python -m generate` called in process, for the generation tests."""

from __future__ import annotations

from generate.__main__ import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m generate ARGV`."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
