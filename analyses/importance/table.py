"""The importance job's table name and its error, apart from analysis.py (which imports pandas) and
run.py (torch): the job's ranks and the commands' argument checks need only these."""

TABLE = "expert_importance"


class ImportanceError(ValueError):
    """A bad request for an importance measurement (one line, naming the flag or the run)."""
