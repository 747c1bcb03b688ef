"""Recorders that write routing, expert loads, latent-KV statistics and MTP acceptance into Parquet runs.

    python -m probe record --ckpt CKPT --corpus DIR --out runs/x      # or: dsv3-probe record ...
    run = probe.open_run("runs/x"); run.df("routing")

Tables and columns: `probe.schema`. The model is imported only by the record job, so reading runs
(dashboards, analyses) never imports torch.
"""

from __future__ import annotations

import importlib

# NOTE: imported on first use (PEP 562), so that `import probe` does not import pyarrow: the jobs'
# entry points (probe/__main__.py, analyses.*.__main__) choose Arrow's allocator first, which
# pyarrow reads once, when it is imported (probe/allocator.py).
_EXPORTS = {"open_run": ".run", "Run": ".run", "RunError": ".writer", "TABLES": ".schema", "DOCS": ".schema"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
