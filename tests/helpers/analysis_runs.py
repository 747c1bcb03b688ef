"""The small run the notebook and report tests analyse (shared by test_notebooks.py and
test_report.py, recorded once per session): on the bundled model and validation corpus when
data/model exists, else on a tiny random checkpoint and a two-domain corpus. The tests assert only
what holds for both. And runs of conftest's `probe_env` capped in corpus order, with what they hold
(the jobs that sample within a run's windows: test_ablate_cli.py, test_importance.py, ...)."""

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


def corpus_order_run(env: dict, out: Path, max_tokens: int) -> Path:
    """A run of conftest's `probe_env` (its corpus: code/, then prose/) recorded in corpus order up to
    `max_tokens`: a cap within code leaves prose out of the run, as `record --order corpus` does."""
    from probe.record import RecordOptions, record

    return record(RecordOptions(ckpt=str(env["ckpt"]), corpus=str(env["corpus"]), out=str(out), order="corpus",
                                max_tokens=max_tokens, seq_len=32, batch_size=4, kv_stats=False, mtp=False,
                                progress=False))


def corpus_tokens(env: dict, domain: str) -> int:
    """The tokens of `domain` in `probe_env`'s corpus, as the jobs read it (a BOS before each document)."""
    from tokenizers import Tokenizer

    from probe.corpus import corpus_windows
    from probe.job import checkpoint_args

    tok = Tokenizer.from_file(str(env["ckpt"] / "tokenizer.json"))
    windows = corpus_windows(env["corpus"], lambda t: tok.encode(t, add_special_tokens=False).ids, 32,
                             checkpoint_args(env["ckpt"]).bos_token_id, None, "corpus")
    return sum(len(w.ids) for w in windows if w.domain == domain)


def scored_tokens(run_dir: Path) -> dict[str, int]:
    """The tokens of each domain a run scored (a loss: every window's but its last token), by domain."""
    import probe

    rows = probe.open_run(run_dir).sql("select domain, count(loss) from tokens group by 1").fetchall()
    return {d: int(n) for d, n in rows}
