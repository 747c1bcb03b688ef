"""Recorders that write routing, expert loads, latent-KV statistics and MTP acceptance into Parquet runs.

    python -m probe record --ckpt CKPT --corpus DIR --out runs/x      # or: dsv3-probe record ...
    run = probe.open_run("runs/x"); run.df("routing")

Tables and columns: `probe.schema`. The model is imported only by the record job, so reading runs
(dashboards, analyses) never imports torch.
"""

from .lazy import exports

# NOTE: imported on first use (probe/lazy.py), so that `import probe` does not import pyarrow
__getattr__, __dir__, __all__ = exports(__name__, {".run": ("open_run", "Run"), ".writer": ("RunError",),
                                                  ".schema": ("TABLES", "DOCS")})
