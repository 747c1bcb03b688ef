"""Run directories for the dashboard tests (shared by test_dashboard.py and test_dashboard_e2e.py).

`dashboard_runs(probe_env, tmp_path_factory)` records one small probe run once per session and
derives from it every state a page must survive:

    good/demo            complete probe run (+ ablations, speculative-decoding, expert_importance and
                         steering tables)
    good/demo-finetuned  demo's windows with part of the routing changed (Compare runs: run vs run)
    good/demo-running    the same, status "running", final tables not written yet
    good/demo-stopped    status "interrupted", the last routing part missing
    good/train-demo      a training run (train_steps, train_domains, train_gates, train_eval, expert_load, router_bias)
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


def write_importance(run: Path) -> None:
    """expert_importance as `python -m analyses.importance` writes it: the run's own loads per MoE layer
    (and domain), synthetic loss changes that mostly follow the load, with a few experts that do not."""
    import duckdb

    from probe.schema import TABLES

    info = json.loads((run / "run.json").read_text())
    a = info["model_args"]
    loads = duckdb.sql(f"""select layer, expert, domain, sum(count)::bigint as load from
        read_parquet('{run}/expert_load/*.parquet') where layer >= {a["n_dense_layers"]} and layer < {a["n_layers"]}
        group by all union all select layer, expert, 'all', sum(count)::bigint from
        read_parquet('{run}/expert_load/*.parquet') where layer >= {a["n_dense_layers"]} and layer < {a["n_layers"]}
        group by all order by all""").df()
    rng = np.random.default_rng(1)
    rows = []
    for (layer, dom), g in loads.groupby(["layer", "domain"]):
        total = int(g.load.sum())
        for e, load in zip(g.expert, g.load):
            share = load / total
            delta = 0.4 * share + rng.normal(0, 0.002) + (0.03 if e in (3, 11) else 0.0)  # 3, 11: undervalued
            base = 5.0 + 0.1 * len(dom)
            rows.append({"layer": int(layer), "expert": int(e), "domain": dom,
                         "tokens": total // a["n_activated_experts"], "load": int(load),
                         "load_share": float(share), "baseline_loss": base, "loss": base + delta,
                         "delta": float(delta)})
    (run / "expert_importance").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["expert_importance"]),
                   run / "expert_importance" / "imp.parquet")


def write_steering(run: Path) -> None:
    """steering as `python -m analyses.steer` writes it: two steerings, loss rows per domain and two
    generation rows each (synthetic numbers and texts)."""
    from probe.schema import TABLES

    rows = []
    for i, (name, mode, experts) in enumerate([("force-2:5", "force", {"2": [5]}),
                                               ("bias-1:3+7-b2", "bias", {"1": [3, 7]})]):
        spec = json.dumps({"name": name, "mode": mode, "experts": experts, "domains": None, "token_ids": None})
        for j, dom in enumerate(["all", "code", "prose"]):
            base = 5.0 + 0.2 * j
            delta = 0.12 * (i + 1) + 0.05 * j
            rows.append({"steer": name, "spec": spec, "kind": "loss", "domain": dom, "tokens": 1000 + 100 * j,
                         "steered_tokens": 1000 + 100 * j, "forced_share": 1.0 if mode == "force" else 0.6 - 0.1 * j,
                         "baseline_loss": base, "loss": base + delta, "delta": delta})
        for dom, prompt in (("code", "def add(a, b):\n    return"), ("prose", "The river ran past the old mill and")):
            rows.append({"steer": name, "spec": spec, "kind": "generation", "domain": dom, "tokens": 12,
                         "steered_tokens": 12, "forced_share": 1.0, "prompt": prompt,
                         "baseline_text": " a + b\n\ndef sub(a, b):" if dom == "code" else " into the quiet town.",
                         "steered_text": f" the the the {name} <b>bold</b> $x$" if i else " a - b  # steered"})
    (run / "steering").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["steering"]), run / "steering" / "steer.parquet")


def write_variant(demo: Path, out: Path) -> Path:
    """`demo`'s windows routed by a (synthetically) different checkpoint: the same tokens, and the
    routing of some positions with its expert ids permuted (layer 2 more than layer 1)."""
    out.mkdir()
    for t in ("tokens", "expert_load"):
        shutil.copytree(demo / t, out / t)
    info = json.loads((demo / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"status": "complete"}))
    perm = np.random.default_rng(2).permutation(info["model_args"]["n_routed_experts"])
    (out / "routing").mkdir()
    for f in sorted((demo / "routing").glob("*.parquet")):
        t = pq.read_table(f)
        ids = t.column("expert_ids").to_pylist()
        moved = [(lay == 2 and p % 3 == 0) or (lay == 1 and p % 11 == 0)
                 for lay, p in zip(t.column("layer").to_pylist(), t.column("pos").to_pylist())]
        ids = [[int(perm[e]) for e in row] if m else row for row, m in zip(ids, moved)]
        t = t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids",
                         pa.array(ids, type=t.schema.field("expert_ids").type))
        pq.write_table(t, out / "routing" / f.name)
    return out


def write_train_run(run: Path, steps: int = 120, balance: str = "aux-free", seed: int = 0) -> Path:
    """A training run written through the training code's own log (train.log.TrainLog: the tables of
    probe.schema), with synthetic numbers."""
    import torch

    from train.balance import GateRef
    from train.log import TrainLog

    rng = np.random.default_rng(seed)
    domains, E = ["code", "prose"], 16
    gates = [GateRef("layer1", 1, "layers.1.ffn.gate"), GateRef("layer2", 2, "layers.2.ffn.gate"),
             GateRef("mtp0", 3, "mtp.0.block.ffn.gate")]
    log = TrainLog(run, gates, domains, E, None)
    aux_free = balance == "aux-free"
    shape = np.repeat(np.linspace(0.5, 1.5, E)[None], len(gates), 0)
    for s in range(1, steps + 1):
        decay = 3.0 * np.exp(-s / 40)
        row = {"step": s, "lr": min(1, s / 10) * 1e-3, "loss": 6 + decay * 1.3, "lm_loss": 5 + decay,
               "mtp_loss": 5.2 + decay, "aux_loss": 1e-4, "grad_norm": 1 + rng.random(), "tokens": 512,
               "tokens_seen": 512 * s, "step_time_s": 0.1, "tokens_per_s": 5000 + 100 * rng.random(), "elapsed_s": 0.1 * s}
        loads = torch.tensor(rng.poisson(100, (len(gates), E)) * shape, dtype=torch.float32)
        loads = loads if aux_free else loads * torch.linspace(0.2, 3, E)
        biases = [torch.tensor(rng.normal(0, 0.01 * np.sqrt(s), E) * aux_free, dtype=torch.float32) for _ in gates]
        log.step(row, [5 + decay + rng.normal(0, 0.05) for _ in domains], loads, biases)
        log.loads(s, loads, biases, 512, 128)  # 4 windows of 128 tokens
        if s % 50 == 0:
            log.evaluation(s, 512 * s, {"val_loss": 5.6 - s / 500, "val_mtp_agree": 0.4 + s / 1000,
                                        **{f"val_loss_{d}": 5.6 - s / 500 for d in domains},
                                        **{f"val_mtp_loss_{d}": 5.8 - s / 500 for d in domains},
                                        **{f"val_maxvio_{g.label}": 0.5 - s / 1000 for g in gates}})
    log.commit()
    info = {"status": "complete", "format": 1, "kind": "train", "started": 1767225600.0, "step": steps,
            "steps": steps, "tokens_seen": int(512 * steps), "domains": domains, "gates": [g.label for g in gates],
            "flags": {"balance": balance, "batch_size": 2, "seq_len": 256, "corpus": "synthetic"},
            "model_args": {"n_layers": 3, "n_dense_layers": 1, "n_routed_experts": E, "n_activated_experts": 4,
                           "dim": 64},
            "train_tokens": {"code": 1000, "prose": 2000}, "final": {"val_loss": 5.3}}
    if aux_free:  # what train/loop.py's _settle records: each gate's MaxVio before each update, then after the last
        info["bias_settle"] = {"updates": 3, "batches_per_update": 8, "speed": 1e-3, "seconds": 12.5,
                               "maxvio_pooled": {g.label: [0.9, 0.6, 0.4, 0.3] for g in gates}}
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
    write_importance(demo)
    write_steering(demo)
    write_variant(demo, good / "demo-finetuned")

    running = good / "demo-running"
    shutil.copytree(demo, running)
    _set_status(running, "running")
    for t in ("kv_stats", "kv_spectrum", "ablations", "spec_decode", "spec_drafts", "expert_importance", "steering"):
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
