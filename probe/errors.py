"""The jobs' error for bad options or inputs, and how an exception becomes one line of a report
(`probe.job` re-exports both; `probe/out_paths.py` and `probe/writer.py` use them); an empty path
refused by name, for the commands' flags (`probe.job.path_text`) and the library calls (`given_path`)."""

import os
from pathlib import Path


class RecordError(ValueError):
    """Bad options or inputs for a job (one line, naming the culprit)."""


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """An exception's message as one line for an error report: its first line, cut at `limit`
    characters (a backend error can run to pages), or its type's name where it has no message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


EMPTY_PATH = "an empty path (for the current folder, give .)"


def given_path(path, what: str, error: type[Exception]) -> Path:
    """`path` (text or os.PathLike) as a Path for a library call, refusing empty text or another type by
    name as `error`: Path('') is '.', so `probe.open_run(os.environ.get("RUN", ""))` read the current
    folder and its error said '.', and `probe.open_run(5)` was Path's own TypeError (the commands refuse
    an empty flag in argparse: `probe.job.path_text`; model/args.py has the model library's copy, which
    imports nothing of probe)."""
    if isinstance(path, str) and not path.strip():
        raise error(f"{what}={path!r}: {EMPTY_PATH}")
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what}={path!r}: expected a path (str or os.PathLike), not {type(path).__name__}")
    return Path(path)
