"""The dashboard's runs: every run directory directly under the folder it serves (`discover`), each as a
`RunRef` (name, path, kind, status, run.json), a run's file signature, the cache key of every query, and
what a run is when it lacks a table (`why_missing`: the words a page's error and a note say); `dashboards.data`
re-exports these for the views."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import streamlit as st

from probe.run import MADE_BY
from probe.schema import TABLES
from probe.writer import run_status


@dataclass(frozen=True)
class RunRef:
    name: str
    path: str
    kind: str  # probe | train | unknown
    status: str  # running | complete | interrupted | unknown | unreadable
    info: dict = field(default_factory=dict, hash=False, compare=False)
    error: str | None = None

    @property
    def sig(self) -> tuple:
        return signature(self.path)


def signature(path: str | Path) -> tuple:
    """(name, size, mtime_ns) of run.json and every Parquet file: the cache key of a run."""
    p = Path(path)
    out = []
    for f in [p / "run.json", *sorted(p.glob("*.parquet")), *sorted(p.glob("*/*.parquet"))]:
        try:
            s = f.stat()
        except OSError:
            continue
        out.append((str(f.relative_to(p)), s.st_size, s.st_mtime_ns))
    return tuple(out)


def _dir_signature(root: Path) -> tuple:
    if not root.is_dir():
        return ()
    out = []
    for d in sorted(root.iterdir()):
        j = d / "run.json"
        if d.is_dir() and j.exists():
            s = j.stat()
            out.append((d.name, s.st_mtime_ns, s.st_size))
    return tuple(out)


def run_kind(path: Path, info: dict) -> str:
    """train (run.json kind), probe (any other run of this layout), or unknown (e.g. a training run
    written before training runs had this layout: flat train_metrics.parquet files)."""
    if info.get("kind") == "train":
        return "train"
    if "format" in info or any((path / t).is_dir() for t in TABLES):
        return "probe"
    return "unknown"


@st.cache_data(show_spinner=False, max_entries=32)
def _discover(root: str, sig: tuple) -> list[RunRef]:
    # NOTE: `sig` (each run.json's name, mtime and size) is part of the cache key: st.cache_data leaves
    # parameters named with a leading underscore out of it, and a run added, finished or deleted
    # stayed unseen until "Reload runs" while this was `_sig`
    refs = []
    for name, *_ in sig:
        p = Path(root) / name
        try:
            info = json.loads((p / "run.json").read_text())
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            refs.append(RunRef(name, str(p), run_kind(p, {}), "unreadable", {}, f"run.json unreadable: {e}"))
            continue
        refs.append(RunRef(name, str(p), run_kind(p, info), str(info.get("status", "unknown")), info))
    return refs


def discover(root: str | Path) -> list[RunRef]:
    """Every run directory directly under `root` (a folder holding a run.json). A record or training
    run whose run.json says "running" while no job holds it (killed) has status "interrupted": asked
    here at each call, not in the cache, which a kill leaves as it was (run.json does not change), so
    such a run was shown as still running for good (a tour)."""
    root = Path(root)
    return [replace(r, status=run_status(r.path, r.info)) if r.status == "running" else r
            for r in _discover(str(root.resolve()), _dir_signature(root))]


def unfinished_record(ref: RunRef) -> str | None:
    """'running' or 'interrupted' where `ref` is a record (a probe run no other command made) that has not
    finished, whose tables may not be written yet; else None."""
    status = ref.status or ref.info.get("status")
    if ref.kind == "probe" and ref.info.get("kind") is None and status in ("running", "interrupted"):
        return status
    return None


# a run that one command wrote its results into alone (run.json's `kind`): what it holds, and the page showing it
# run.json "kind" of a run that a command wrote its results into alone: what it records, and on which page
# (the command: probe.run.MADE_BY)
RESULTS_ONLY = {"spec": ("speculative decoding", "MTP"), "ablations": ("ablations", "Ablations"),
                "expert_importance": ("causal importance", "Ablations"), "steering": ("steering", "Steering")}


def results_only(ref: RunRef) -> str | None:
    """'a `dsv3-probe spec` run records speculative decoding (the MTP page), not a corpus's routing' for a run
    that one command wrote its results into alone, else None: the routing pages told such a run only that it
    'has no `expert_load` table', and to record a run as 'a serving engine's dump holds loads only' (a tour)."""
    if (kind := ref.info.get("kind")) not in RESULTS_ONLY:
        return None
    what, page = RESULTS_ONLY[kind]
    return f"a {MADE_BY[kind]} run records {what} (the {page} page), not a corpus's routing"


# `why_missing`'s advice to a run without per-token tables where run.json gives no cause (`ui.lacks_per_token`)
RECORD_PER_TOKEN = "Record a run with `dsv3-probe record` (a serving engine's per-pass or stat dump holds loads only)"


def why_missing(ref: RunRef, tables: tuple[str, ...], advice: str = "") -> str:
    """The words after "run R has no `T` table" (or "no `T` and no `U` table") that say why `ref` lacks
    `tables`, where run.json tells: a record of `--router-logits none` keeps no routing; a record at work
    that lists them has not written them yet, and one interrupted before writing them can go on; a run that
    one command wrote its results into alone holds those (`results_only`). Where it tells nothing, `advice`
    (a sentence: what would record them) or ''. No full stop: `missing_table`'s error, which `ui.guard` ends
    with ': cannot show ...', and `ui.lacks_per_token`'s note, which ends its sentence, both say them (each
    carried these branches in words of its own)."""
    them = "them" if len(tables) > 1 else "it"
    if "routing" in tables and (ref.info.get("options") or {}).get("router_logits") == "none":
        # a record of it was told to record a run (a tour): to record it again, with routing
        return ", as it was recorded with `--router-logits none`; record it again without it"
    status = unfinished_record(ref) if set(tables) & set(ref.info.get("tables") or ()) else None
    if status == "running":
        return f" yet (the record writes {them} as it goes, or as it ends)"
    if status == "interrupted":
        return f": the record was interrupted before writing {them}; continue it with `dsv3-probe record ... --resume`"
    if only := results_only(ref):  # a spec run was told of a serving engine's dump (a browser tour)
        return f", as {only}"
    return f". {advice}" if advice else ""
