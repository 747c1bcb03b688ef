"""The ablation jobs' error, in a module of its own that imports no torch: the report and the other
commands name it in their `except` before they know whether they will run the model (the report's
`--skip-ablation` reads the run only). analyses.ablate.select re-exports it."""


class AblationError(ValueError):
    """A bad ablation request (one line, naming the culprit)."""
