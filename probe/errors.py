"""The jobs' error for bad options or inputs (`probe.job` re-exports it; `probe/out_paths.py` uses it)."""


class RecordError(ValueError):
    """Bad options or inputs for a job (one line, naming the culprit)."""
