"""Recorders that write routing, expert loads, latent-KV statistics and MTP acceptance into Parquet runs.

    python -m probe record --ckpt CKPT --corpus DIR --out runs/x      # or: dsv3-probe record ...
    run = probe.open_run("runs/x"); run.df("routing")

Tables and columns: `probe.schema`. The model is imported only by the record job, so reading runs
(dashboards, analyses) never imports torch.
"""

from .run import Run, open_run
from .schema import DOCS, TABLES
from .writer import RunError

__all__ = ["open_run", "Run", "RunError", "TABLES", "DOCS"]
