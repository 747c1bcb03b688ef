"""Recorders that write routing, expert loads, latent-KV statistics and MTP acceptance into Parquet runs.

(The `python -m probe record` job lands with its own issue; this package is the home for it.)
"""
