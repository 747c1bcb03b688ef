"""Run directories for the dashboard tests (shared by test_dashboard.py and test_dashboard_e2e.py).

`dashboard_runs(probe_env, tmp_path_factory)` records one small probe run once per session and
derives from it every state a page must survive:

    good/demo            complete probe run (+ ablations and speculative-decoding tables)
    good/demo-running    the same, status "running", final tables not written yet
    good/demo-stopped    status "interrupted", the last routing part missing
    good/train-demo      a training run (train_metrics / eval_metrics / expert_load Parquet)
    good/train-nobal     a second training run (for Compare runs)
    empty/               no runs at all
    corrupt/demo         the probe run with a garbage routing part and a truncated tokens part
    corrupt/loads        the probe run with unreadable expert_load, kv_stats and mtp parts
    corrupt/badjson      a run.json that is not JSON
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_CACHE: dict[str, dict[str, Path]] = {}


def _set_status(run: Path, status: str) -> None:
    info = json.loads((run / "run.json").read_text())
    info["status"] = status
    (run / "run.json").write_text(json.dumps(info))


def write_ablations(run: Path) -> None:
    from probe.schema import TABLES

    domains = ["all", "code", "prose"]
    rows = []
    for name, mode, rule, n in [("top2", "reroute", {"top": 2}, 4), ("top4", "reroute", {"top": 4}, 8),
                                ("rand2", "reroute", {"random": 2}, 4), ("rand4", "reroute", {"random": 4}, 8),
                                ("zero-top2", "zero", {"top": 2}, 4)]:
        for j, d in enumerate(domains):
            base = 5.0 + 0.3 * j
            delta = 0.05 * n * (2.0 if "top" in name else 1.0) + 0.01 * j
            rows.append({"ablation": name, "spec": json.dumps({"name": name, "mode": mode, **rule}), "mode": mode,
                         "renormalise": False, "shared": False, "n_disabled": n, "domain": d, "tokens": 1000,
                         "loss": base + delta, "baseline_loss": base, "delta": delta, "routing_changed": 0.1 * n,
                         "experts_changed": 0.02 * n, "downstream_layers": 1})
    (run / "ablations").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["ablations"]), run / "ablations" / "sweep.parquet")


def write_spec(run: Path) -> None:
    """spec_decode / spec_drafts as `dsv3-probe spec` writes them (synthetic acceptances)."""
    from probe.schema import TABLES

    rng = np.random.default_rng(0)
    dec, drafts = [], []
    for i in range(8):
        dom = ("code", "prose")[i % 2]
        acc = rng.random(15) < (0.7 if dom == "code" else 0.4)
        dec.append({"doc_id": f"d{i}", "domain": dom, "prompt_tokens": 32, "new_tokens": 16,
                    "forward_passes": int(16 - acc.sum() // 2), "drafts_proposed": 15,
                    "drafts_accepted": int(acc.sum()),
                    "tokens_per_forward": 16 / (16 - acc.sum() // 2), "finish_reason": "length"})
        drafts += [{"doc_id": f"d{i}", "domain": dom, "position": p + 1, "token": 5, "accepted": bool(a)}
                   for p, a in enumerate(acc)]
    for name, rows in (("spec_decode", dec), ("spec_drafts", drafts)):
        (run / name).mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[name]), run / name / "part-0.parquet")


def write_train_run(run: Path, steps: int = 120, balance: str = "aux-free", seed: int = 0) -> Path:
    """A training run in the layout `model.train` writes (synthetic numbers, same columns)."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True)
    domains, gates, E = ["code", "prose"], ["layer1", "layer2", "mtp0"], 16
    s = np.arange(1, steps + 1)
    decay = 3.0 * np.exp(-s / 40)
    tm = {"step": s, "lr": np.minimum(1, s / 10) * 1e-3, "loss": 6 + decay * 1.3, "lm_loss": 5 + decay,
          "mtp_loss": 5.2 + decay, "aux_loss": np.full(steps, 1e-4), "grad_norm": 1 + rng.random(steps),
          "tokens": np.full(steps, 512), "tokens_seen": 512 * s, "step_time_s": np.full(steps, 0.1),
          "tokens_per_s": 5000 + 100 * rng.random(steps), "elapsed_s": 0.1 * s}
    for d in domains:
        tm[f"loss_{d}"] = 5 + decay + rng.normal(0, 0.05, steps)
    for g in gates:
        tm[f"maxvio_{g}"] = (0.3 if balance == "aux-free" else 1.5) + decay / 3 + rng.random(steps) * 0.1
        tm[f"bias_norm_{g}"] = np.sqrt(s) * 0.003 if balance == "aux-free" else np.zeros(steps)
    pq.write_table(pa.table(tm), run / "train_metrics.parquet")
    ev = {"step": np.array([50, 100]), "tokens_seen": np.array([25600, 51200])}
    for d in domains:
        ev[f"val_loss_{d}"] = np.array([5.6, 5.3])
        ev[f"val_mtp_loss_{d}"] = np.array([5.8, 5.4])
    ev["val_loss"] = np.array([5.6, 5.3])
    for g in gates:
        ev[f"val_maxvio_{g}"] = np.array([0.5, 0.3])
    ev["val_mtp_agree"] = np.array([0.4, 0.5])
    pq.write_table(pa.table(ev), run / "eval_metrics.parquet")
    n = steps * len(gates) * E
    load = rng.poisson(100, n) * np.tile(np.repeat(np.linspace(0.5, 1.5, E)[None], len(gates), 0).ravel(), steps)
    pq.write_table(pa.table({
        "step": np.repeat(s, len(gates) * E), "gate": np.tile(np.repeat(gates, E), steps).tolist(),
        "expert": np.tile(np.arange(E), steps * len(gates)), "load": load.astype(np.int64),
        "bias": (rng.normal(0, 0.01, n) * (balance == "aux-free")).astype(np.float32)}),
        run / "expert_load.parquet")
    info = {"status": "completed", "started": "2026-01-01T00:00:00+00:00", "step": steps, "steps": steps,
            "tokens_seen": int(512 * steps), "domains": domains, "gates": gates,
            "flags": {"balance": balance, "batch_size": 2, "seq_len": 256, "corpus": "synthetic"},
            "model_args": {"n_layers": 3, "n_dense_layers": 1, "n_routed_experts": E, "n_activated_experts": 4,
                           "dim": 64},
            "train_tokens": {"code": 1000, "prose": 2000}, "final": {"val_loss": 5.3}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def dashboard_runs(probe_env, tmp_path_factory) -> dict[str, Path]:
    key = str(tmp_path_factory.getbasetemp())
    if key in _CACHE:
        return _CACHE[key]
    from probe.record import RecordOptions, record

    base = tmp_path_factory.mktemp("dash")
    good, empty, corrupt = base / "good", base / "empty", base / "corrupt"
    for d in (good, empty, corrupt):
        d.mkdir()
    demo = Path(record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]),
                                     out=str(good / "demo"), seq_len=64, batch_size=4, router_logits="full",
                                     sample=0.5, commit_every=4, progress=False)))
    write_ablations(demo)
    write_spec(demo)

    running = good / "demo-running"
    shutil.copytree(demo, running)
    _set_status(running, "running")
    for t in ("kv_stats", "kv_spectrum", "ablations", "spec_decode", "spec_drafts"):
        shutil.rmtree(running / t)

    stopped = good / "demo-stopped"
    shutil.copytree(demo, stopped)
    _set_status(stopped, "interrupted")
    sorted((stopped / "routing").glob("*.parquet"))[-1].unlink()

    write_train_run(good / "train-demo")
    write_train_run(good / "train-nobal", balance="none", seed=1)

    bad = corrupt / "demo"
    shutil.copytree(demo, bad)
    parts = sorted((bad / "routing").glob("*.parquet"))
    parts[0].write_bytes(b"this is not parquet" * 100)
    tok = sorted((bad / "tokens").glob("*.parquet"))[-1]
    tok.write_bytes(tok.read_bytes()[: tok.stat().st_size // 2])
    loads = corrupt / "loads"
    shutil.copytree(demo, loads)
    for t in ("expert_load", "kv_stats", "mtp"):
        sorted((loads / t).glob("*.parquet"))[0].write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    (corrupt / "badjson").mkdir()
    (corrupt / "badjson" / "run.json").write_text("{not json")

    _CACHE[key] = {"good": good, "empty": empty, "corrupt": corrupt, "demo": demo}
    return _CACHE[key]
