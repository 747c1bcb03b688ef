"""What every job's command line promises for bad input (ablate, importance, steer): exit 2, one line
`error: ...` naming the problem, and no output directory left behind."""

from __future__ import annotations

from pathlib import Path


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
