"""The jobs' error for bad options or inputs, and how an exception becomes one line of a report
(`probe.job` re-exports both; `probe/out_paths.py` and `probe/writer.py` use them)."""


class RecordError(ValueError):
    """Bad options or inputs for a job (one line, naming the culprit)."""


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """An exception's message as one line for an error report: its first line, cut at `limit`
    characters (a backend error can run to pages), or its type's name where it has no message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
