"""What every job's command line promises for bad input (ablate, importance, steer): exit 2, one line
`error: ...` naming the problem, and no output directory left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# a folder os.access calls writable (for root, as procfs, a read-only bind mount or a root-squashed NFS
# share are) where nothing can be created: procfs takes no new entries, even from root
UNWRITABLE = Path("/proc/dsv3-probe-out")


def assert_one_line_error(code: int, capsys, msg: str, out: Path | None = None) -> str:
    """The command returned 2 and printed one `error:` line containing `msg`; `out` was not made."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and msg in err and "\n" not in err, err
    if out is not None:
        assert not out.exists()
    return err


def one_line(excinfo) -> str:
    """The message of a `pytest.raises` exception, checked to be one non-empty line (a library call's
    errors are read by people in notebooks, as the commands' are)."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def assert_out_under_a_file_is_refused(main, cli, tmp_path: Path, capsys, *extra: str) -> None:
    """`--out` below a regular file is refused by name before the model loads. `cli(out, *extra)` makes
    the command's argv."""
    (tmp_path / "afile").write_text("x")
    code = main(cli(tmp_path / "afile" / "o", *extra))
    want = f"error: --out {tmp_path / 'afile' / 'o'}: {tmp_path / 'afile'} is a file, not a directory"
    assert code == 2 and capsys.readouterr().err.strip() == want


def unwritable_out(monkeypatch, name: str = UNWRITABLE.name) -> Path:
    """`/proc/NAME`, with os.access saying yes to /proc for any user (it does for root) and a model load
    failing the test: an output there must be refused in one line before a model loads (it was found
    only when the tables were written, after the work; a review)."""
    import model

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p).startswith("/proc") or real(p, mode, **kw))
    monkeypatch.setattr(model, "load", lambda *a, **kw: pytest.fail("the model loaded before the output was checked"))
    return Path("/proc") / name


def unwritable_msg(flag: str, out: Path) -> str:
    """What check_out_parent says about `out` in /proc, with the reason (procfs takes no new entries)."""
    return (f"{flag} {out}: directory /proc does not accept new files (its file system takes no new "
            "entries, as virtual ones such as /proc do)")
