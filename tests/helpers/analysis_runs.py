"""The small run the notebook and report tests analyse (shared by test_notebooks.py and
test_report.py, recorded once per session): on the bundled model and validation corpus when
data/model exists, else on a tiny random checkpoint and a two-domain corpus. The tests assert only
what holds for both."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "model"
TOKENS = 3000  # split evenly between the domains
_CACHE: dict[str, Path] = {}


def small_run(tmp_path_factory) -> Path:
    if "run" not in _CACHE:
        from analyses.notebook_utils import record_small
        from helpers import make_corpus, make_probe_ckpt

        base = tmp_path_factory.mktemp("analysis_run")
        if (BUNDLED / "config.json").exists():
            record_small(base / "run", TOKENS)
        else:
            corpus = make_corpus(base / "corpus", docs_per_domain=4, scale=3)
            ckpt = make_probe_ckpt(base / "ckpt", corpus)
            record_small(base / "run", TOKENS, ckpt=ckpt, corpus=corpus, seq_len=128)
        _CACHE["run"] = base / "run"
    return _CACHE["run"]
