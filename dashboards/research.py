"""The research views' data: cached calls of the `analyses.metrics` run functions (expert paths,
token-id dependence, run vs run, vocabulary specialisation with its baseline), as `dashboards.data`
does for the SQL aggregates.

Each is keyed on the run's file signature (`data.cached`; run vs run: both runs'). A metric's
`MetricsError` (no routing rows, two runs over different windows) becomes `data.MissingTable` and an
unreadable file `data.DataError`, so `ui.guard` shows them as an info box or a warning, with the
runs named rather than their paths. Expert paths and token-id dependence load [tokens, layers, K]
expert ids in memory: they read the run's first windows only (`route_windows`).
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import streamlit as st

from .data import SAMPLE_TOKENS, DataError, MissingTable, RunRef, _seq_cap, cached, moe_layers, query, token_top1

# Expert paths and token-id dependence load [tokens, layers, K] expert ids: at most this many ids, from
# the run's first windows (and never more than SAMPLE_TOKENS tokens). Their time grows with the ids read:
# at 8 million (166,400 tokens x 8 layers x top-6 in benchmarks/bench_dashboard.py) the two pages that
# show them took 5.5-6.4 s against the 2 s page budget; at 2 million, 1.4-1.9 s (2026-12-02, 2 cores).
# The bundled model's 3 MoE layers x top-4 still get SAMPLE_TOKENS tokens; a 58-layer top-8 model gets
# ~4,300 (the page says how many windows it read; analyses.metrics' *_from_run functions read them all).
MAX_ROUTE_IDS = 2_000_000


def route_windows(ref: RunRef, n_layers: int) -> int:
    """The bound n on seq_id (windows seq_id < n) that the per-token metrics read for `n_layers`
    layers of top-k ids: past the windows holding the run's first MAX_ROUTE_IDS / (layers x K)
    tokens, counted in its tokens table (at least one window; 2**62 when the run is smaller). Windows
    of --seq-len tokens each were assumed before: a corpus of short documents or an SGLang import
    (one window per decode token) read a few percent of the budget (a review)."""
    K = int((ref.info.get("model_args") or {}).get("n_activated_experts") or 8)
    return _seq_cap(ref, max(1, min(SAMPLE_TOKENS, MAX_ROUTE_IDS // max(1, n_layers * K))))


@cached
def window_count(ref: RunRef) -> int:
    """Windows in the run (largest seq_id of `tokens` + 1)."""
    df = query(ref, "select coalesce(max(seq_id) + 1, 0) as n from tokens", ("tokens",))
    return int(df.n.iloc[0])


def sample_note(ref: RunRef, windows: int) -> str:
    """'' when the run has at most `windows` windows, else a sentence saying only the first ones were read."""
    total = window_count(ref)
    return (f" Read: the first {windows:,} of the run's {total:,} windows (the [tokens x layers x K] expert ids are "
            "held in memory)." if total > windows else "")


def _sampled_run(ref: RunRef, windows: int):
    """The run as a `probe.Run` whose routing and tokens hold only windows seq_id < `windows` (`Run.restrict`:
    a view of its own on the run's connection was replaced by the whole table's once a running record
    committed a part; a tour)."""
    from probe.run import open_run

    return open_run(ref.path).restrict(("routing", "tokens"), f"seq_id < {int(windows)}")


def metric_call(refs: tuple[RunRef, ...], what: str, fn):
    """fn() of `analyses.metrics`: its MetricsError (no such rows, runs that do not match) becomes a
    MissingTable, an unreadable file a DataError; run paths in the message are named by the run."""
    from analyses.metrics import MetricsError
    from probe.writer import RunError

    def path_of(r: RunRef) -> str:
        # a path is named only where it ends: runs/cap's replace turned runs/capc into `cap`c (a tour)
        return re.escape(str(Path(r.path))) + r"(?![\w-]|\.\w)"

    def named(msg: str) -> str:
        for r in refs:
            msg = re.sub(path_of(r), lambda _, n=r.name: f"`{n}`", msg)
        return msg

    try:
        return fn()
    except MetricsError as e:
        raise MissingTable(named(str(e))) from None
    except (duckdb.Error, OSError, RunError) as e:
        first = str(e).strip().splitlines()[0][:300]
        # the run whose file failed: run vs run blamed run A for run B's lost table (a hunt)
        run = next((r for r in refs if re.search(path_of(r), first)), refs[0])
        raise DataError(f"run {run.name!r}: cannot read {what} ({named(first)})") from None


@cached
def expert_paths(ref: RunRef, layers: tuple[int, ...], top: int = 10) -> dict:
    """Top-1 expert paths over `layers` (tokens routed at all of them, first `windows` windows):
    tokens, windows, summary (`path_summary`), information (`domain_information`, every 5th window
    held out), common (`common_paths`, `top` rows), flows and nodes (`compute.path_flows`)."""
    from analyses import metrics as m

    from . import compute

    windows = route_windows(ref, len(layers))
    r = metric_call((ref,), "`routing`, `tokens`",
                    lambda: m.routes_from_run(_sampled_run(ref, windows), list(layers)))
    out = {"tokens": len(r.ids), "windows": windows}
    if len(r.ids):
        flows, nodes = compute.path_flows(r.ids[:, :, 0], r.domain)
        out |= {"summary": m.path_summary(r.ids, r.domain, 1), "flows": flows, "nodes": nodes,
                "information": m.domain_information(r.ids, r.domain, r.layers, 1, r.heldout(5)),
                "common": m.common_paths(r.ids, r.domain, r.token_id, 1, top)}
    return out


@cached
def vocabulary_specialisation(ref: RunRef, layer: int, min_count: int | None = None) -> tuple[float, float]:
    """(OLMoE's vocabulary specialisation of `layer`'s first choices over the ids seen at least
    `min_count` times (default `VOCAB_MIN_COUNT`, as the report), its value without specialisation:
    `vocabulary_specialisation_baseline`, the experts shuffled across the same tokens with a fixed
    seed), over `data.token_top1`'s sample; NaN, NaN without routed tokens."""
    from analyses.metrics.specialisation import (VOCAB_MIN_COUNT, vocabulary_specialisation,
                                                 vocabulary_specialisation_baseline)

    min_count = VOCAB_MIN_COUNT if min_count is None else min_count
    tt = token_top1(ref, layer)
    if tt.empty:
        return float("nan"), float("nan")
    args = (tt.token_id.to_numpy(), tt.e1.to_numpy())
    return (vocabulary_specialisation(*args, min_count=min_count),
            vocabulary_specialisation_baseline(*args, min_count=min_count))


@cached
def token_dependence(ref: RunRef, every: int = 5) -> tuple[pd.DataFrame, int]:
    """(`token_dependence_from_run` over every recorded MoE layer, windows read)."""
    from analyses import metrics as m

    windows = route_windows(ref, len(moe_layers(ref)) or 64)
    df = metric_call((ref,), "`routing`, `tokens`",
                     lambda: m.token_dependence_from_run(_sampled_run(ref, windows), every=every))
    return df, windows


# the domain probe's training and held-out tokens each (the report's probe takes up to 50,000): 18 fits in
# about 0.7 s for 8 MoE layers of 64 experts on 2 cores, each accuracy within about two points of a larger fit's
PROBE_ROWS = 3_000


@cached
def domain_probe(ref: RunRef, features: str = "weights", every: int = 5) -> tuple[pd.DataFrame, int]:
    """(`domain_probe_from_run` over every recorded MoE layer with at most PROBE_ROWS training and held-out
    tokens, windows read)."""
    from analyses import metrics as m

    windows = route_windows(ref, len(moe_layers(ref)) or 64)
    df = metric_call((ref,), "`routing`, `tokens`", lambda: m.domain_probe_from_run(
        _sampled_run(ref, windows), features=features, every=every, max_rows=PROBE_ROWS))
    return df, windows


@st.cache_data(show_spinner=False, max_entries=16)
def _run_vs_run(a: tuple, b: tuple, top: int) -> dict:
    from analyses import metrics as m

    ra, rb = (RunRef(name, path, "probe", "") for name, path, _ in (a, b))
    try:
        read = "`routing`, `tokens`"  # the tables joined: the tokens checked alike at each position
        agree = metric_call((ra, rb), read, lambda: m.routing_agreement_from_runs(ra.path, rb.path))
        changes = metric_call((ra, rb), read, lambda: m.route_changes_from_runs(ra.path, rb.path, top=top))
    except MissingTable as e:  # kept in the cache: runs over different windows are not re-joined each time
        return {"error": str(e)}
    return {"agreement": agree, "changes": changes}


def run_vs_run(a: RunRef, b: RunRef, top: int = 20) -> dict:
    """Routing of two runs over the same windows: {"agreement": `routing_agreement_from_runs`,
    "changes": `route_changes_from_runs`}, or {"error": why they cannot be compared}."""
    return _run_vs_run((a.name, a.path, a.sig), (b.name, b.path, b.sig), top)
