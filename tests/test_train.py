"""model.train: losses go down, balancing pieces do what the report says, resume is exact, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import load_hf

from data.mathgen import math_document
from data.tokenizer import save_tokenizer, train_tokenizer
from model import ConfigError, ModelArgs, Transformer
from model import load as load_ckpt
from model.moe import Gate
from model.train import (RoutingTap, TrainError, max_violation, moe_gates, parse_args, run, seq_balance_loss,
                         settle_biases, switch_balance_loss, update_bias)
from model.train import main as train_main

WORDS = "the king queen night watch ghost castle sword crown speak love death".split()
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"


def _docs(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        docs.append({"id": f"math/{seed}/{i}", "domain": "math", "text": math_document(rng, 600)})
        docs.append({"id": f"lit/{seed}/{i}", "domain": "literature",
                     "text": ".\n".join(" ".join(rng.choice(WORDS) for _ in range(9)) for _ in range(12))})
        docs.append({"id": f"zh/{seed}/{i}", "domain": "chinese",
                     "text": "。".join("".join(rng.choice(HANZI) for _ in range(14)) for _ in range(20))})
    return docs


def _write(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    train, val = _docs(0, 12), _docs(1, 2)
    _write(d / "train.jsonl", train)
    _write(d / "val.jsonl", val)
    save_tokenizer(train_tokenizer((x["text"] for x in train), vocab_size=320), d / "tokenizer.json")
    return d


def _flags(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--tokenizer", str(corpus / "tokenizer.json"), "--config", "tiny",
            "--out", str(out), "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "2",
            "--eval-windows", "2", "--no-progress", "--threads", "1", "--save-dtype", "float32", *extra]


# ------------------------------------------------------------------------------------ balancing math
def test_update_bias_sign_and_direction():
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10.0, 0.0, 5.0, 5.0]), 0.01)
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])  # overloaded down, underloaded up

    # A router that prefers expert 0 for every token: repeated updates move load away from it.
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | dict(n_expert_groups=1, n_limited_groups=1,
                                                                            n_routed_experts=8, n_activated_experts=2))
    gate = Gate(args)
    torch.manual_seed(0)
    gate.reset_parameters()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(args.dim, generator=g)
    u = u / u.norm()
    x = 0.5 * torch.randn(256, args.dim, generator=g) + (3 + torch.randn(256, 1, generator=g)) * u
    with torch.no_grad():
        gate.weight[0] = u  # expert 0's logit is about 3 for every token, the others about 0
    loads = [torch.bincount(gate(x)[1].flatten(), minlength=8).float()]
    for _ in range(60):
        update_bias(gate.bias, loads[-1], 0.01)
        loads.append(torch.bincount(gate(x)[1].flatten(), minlength=8).float())
    assert loads[0][0] >= 250  # constructed case: expert 0 takes (nearly) every token
    assert gate.bias[0] < 0 < gate.bias[1:].min()
    late = torch.stack(loads[-10:])
    assert late[:, 0].max() < 0.4 * loads[0][0]
    assert max(max_violation(v) for v in late) < 0.3 * max_violation(loads[0])


def test_settle_biases_balances_a_lopsided_router_and_touches_nothing_else():
    args = ModelArgs.from_name("tiny")
    torch.manual_seed(0)
    m = Transformer(args, dtype=torch.float32)
    m.reset_parameters()
    gates = moe_gates(m)
    mods = {g.label: m.get_submodule(g.prefix) for g in gates}
    with torch.no_grad():
        for mod in mods.values():
            mod.bias[:2] = 0.5  # experts 0 and 1 win nearly every token
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def batch(i: int) -> torch.Tensor:
        return torch.randint(0, args.vocab_size, (4, 33), generator=torch.Generator().manual_seed(i))

    history = settle_biases(m, RoutingTap(gates), mods, batch, updates=40, pooled=2, speed=0.05,
                            all_reduce=lambda t: t)
    assert set(history) == {g.label for g in gates} and all(len(h) == 40 for h in history.values())
    for label, h in history.items():
        assert h[0] > 2.0, (label, h[0])  # lopsided to begin with
        assert max(h[-5:]) < 0.25 * h[0], (label, h)
        assert float(mods[label].bias[:2].max()) < 0.5
    after = m.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v) == (not k.endswith("gate.bias")), k
    # the step decays linearly: 4 updates from 0.04 move a still-overloaded expert by
    # 0.04 + 0.03 + 0.02 + 0.01 = 0.10 (a constant step would give 0.16)
    with torch.no_grad():
        for mod in mods.values():
            mod.bias.zero_()
            mod.bias[:2] = 0.5
    settle_biases(m, RoutingTap(gates), mods, batch, updates=4, pooled=1, speed=0.04, all_reduce=lambda t: t)
    for mod in mods.values():
        torch.testing.assert_close(mod.bias[:2], torch.full((2,), 0.4), rtol=0, atol=1e-6)


def test_balance_losses_on_hand_computed_cases():
    E, K, S = 4, 2, 3
    # uniform scores, each token picks a different pair: perfectly balanced -> 1.0 for both losses
    scores = torch.full((2 * S * 2, E), 0.5)[: 2 * S]
    ids = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3], [0, 2], [1, 3]])
    assert float(switch_balance_loss(scores, ids)) == pytest.approx(1.0)
    # one sequence (S=3): every token picks experts 0 and 1, with scores s = [3, 1, 0, 0] / 4 normalised
    s = torch.tensor([[0.6, 0.2, 0.0001, 0.0001]]).repeat(S, 1)
    ids1 = torch.tensor([[0, 1]]).repeat(S, 1)
    p = s[0] / s[0].sum()
    f = torch.tensor([E / (K * S) * S, E / (K * S) * S, 0, 0])
    assert float(seq_balance_loss(s, ids1, batch=1)) == pytest.approx(float((f * p).sum()), rel=1e-6)
    # two sequences: the loss is their mean (each computed on its own tokens)
    both = seq_balance_loss(torch.cat([s, scores[:S]]), torch.cat([ids1, ids[:S]]), batch=2)
    one_b = seq_balance_loss(scores[:S], ids[:S], batch=1)
    assert float(both) == pytest.approx((float((f * p).sum()) + float(one_b)) / 2, rel=1e-6)
    assert max_violation(torch.tensor([2.0, 2.0, 2.0, 2.0])) == 0.0
    assert max_violation(torch.tensor([8.0, 0.0, 0.0, 0.0])) == pytest.approx(3.0)


# -------------------------------------------------------------------------------------------- runs
def test_training_reduces_loss_and_writes_the_run(corpus, tmp_path):
    out = tmp_path / "run"
    info = run(parse_args(_flags(corpus, out, "--steps", "40", "--eval-every", "20", "--checkpoint-every", "0")))
    assert info["status"] == "completed"
    rows = pq.read_table(out / "train_metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == list(range(1, 41))
    first = sum(r["lm_loss"] for r in rows[:5]) / 5
    last = sum(r["lm_loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5, (first, last)
    cols = set(rows[0])
    for name in ("loss_math", "loss_literature", "loss_chinese", "mtp_loss", "maxvio_layer1", "maxvio_layer2",
                 "maxvio_mtp0", "bias_norm_layer1", "lr", "tokens_per_s"):
        assert name in cols, name
    assert rows[-1]["bias_norm_layer1"] > 0  # aux-free: the biases moved
    ev = pq.read_table(out / "eval_metrics.parquet").to_pylist()
    assert [r["step"] for r in ev] == [20, 40] and ev[1]["val_loss"] < ev[0]["val_loss"]
    loads = pq.read_table(out / "expert_load.parquet")
    assert loads.num_rows == 40 * 3 * 16  # steps x gates x experts
    assert json.loads((out / "run.json").read_text())["final"]["val_loss_math"] == ev[-1]["val_loss_math"]

    # the final model: our loader gives the trained weights back (the gate biases settled after the
    # last step, everything else as trained), with the tokenizer beside it
    m = load_ckpt(out / "model", dtype=torch.float32)
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"]
    final = m.state_dict()
    settled = {k for k in state if k.endswith("gate.bias")}
    assert len(settled) == 3 and all(not torch.equal(final[k], state[k]) for k in settled)
    for k, v in state.items():
        if k not in settled:
            assert torch.equal(final[k], v), k
    settle = info["bias_settle"]
    assert settle["updates"] == 30 and set(settle["maxvio_pooled"]) == {"layer1", "layer2", "mtp0"}
    ref = Transformer(m.args, dtype=torch.float32)
    ref.load_state_dict(state | {k: final[k] for k in settled})
    tokens = torch.randint(0, m.args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m(tokens), ref.eval()(tokens), rtol=0, atol=0)
    assert (out / "model" / "tokenizer.json").read_bytes() == (corpus / "tokenizer.json").read_bytes()
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["vocab_size"] == 320 and cfg["num_nextn_predict_layers"] == 1
    # transformers reads the same directory and computes the same logits
    with torch.no_grad():
        want = load_hf(out / "model")(tokens).logits
    torch.testing.assert_close(m(tokens), want, rtol=1e-4, atol=1e-4)


def test_balance_none_keeps_bias_zero_and_switch_adds_loss(corpus, tmp_path):
    none = run(parse_args(_flags(corpus, tmp_path / "none", "--steps", "3", "--balance", "none", "--eval-every", "0")))
    rows = pq.read_table(tmp_path / "none" / "train_metrics.parquet").to_pylist()
    assert none["status"] == "completed"
    assert all(r["bias_norm_layer1"] == 0 and r["aux_loss"] == 0 for r in rows)
    run(parse_args(_flags(corpus, tmp_path / "sw", "--steps", "3", "--balance", "switch", "--eval-every", "0")))
    rows = pq.read_table(tmp_path / "sw" / "train_metrics.parquet").to_pylist()
    # three gates, each loss near 1 (>= 1 unless perfectly balanced), weight 0.01
    assert all(r["bias_norm_layer1"] == 0 and 0.02 < r["aux_loss"] < 0.2 for r in rows)


def test_resume_equals_uninterrupted(corpus, tmp_path):
    common = ("--steps", "6", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(_flags(corpus, tmp_path / "a", *common)))
    stopped = run(parse_args(_flags(corpus, tmp_path / "b", *common, "--stop-at", "3")))
    assert stopped["status"] == "stopped" and stopped["step"] == 3
    run(parse_args(_flags(corpus, tmp_path / "b", *common, "--resume")))
    a = torch.load(tmp_path / "a" / "checkpoint" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bitwise, biases included
    ra = pq.read_table(tmp_path / "a" / "train_metrics.parquet").to_pylist()
    rb = pq.read_table(tmp_path / "b" / "train_metrics.parquet").to_pylist()
    assert [r["step"] for r in rb] == list(range(1, 7))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert pq.read_table(tmp_path / "b" / "expert_load.parquet").equals(
        pq.read_table(tmp_path / "a" / "expert_load.parquet"))


# --------------------------------------------------------------------------------------- bad input
def test_bad_input_errors(corpus, tmp_path, capsys):
    with pytest.raises(TrainError, match="corpus too small for one batch"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--batch-size", "5000", "--steps", "1")))
    with pytest.raises(ConfigError, match="n_routed_experts=15 must be a positive multiple of n_expert_groups=4"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--set", "n_routed_experts=15")))
    with pytest.raises(ConfigError, match=r"n_activated_experts=12 must be in \[1, 8\]"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--set", "n_activated_experts=12")))
    with pytest.raises(TrainError, match="ModelArgs has no field 'bogus'"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--set", "bogus=1")))
    with pytest.raises(TrainError, match="no tokenizer"):
        run(parse_args(_flags(corpus, tmp_path / "x") + ["--tokenizer", str(tmp_path / "none.json")]))
    with pytest.raises(TrainError, match="exceeds the config's max_seq_len=256"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--seq-len", "512")))
    # resume from a checkpoint of another shape
    run(parse_args(_flags(corpus, tmp_path / "r", "--steps", "2", "--eval-every", "0")))
    with pytest.raises(TrainError, match=r"cannot resume from .*checkpoint: it holds a model with dim=64.*"
                                         r"this run builds dim=48"):
        run(parse_args(_flags(corpus, tmp_path / "r", "--steps", "4", "--set", "dim=48", "--resume")))
    with pytest.raises(TrainError, match="no checkpoint there"):
        run(parse_args(_flags(corpus, tmp_path / "empty", "--resume")))
    (tmp_path / "junk" / "checkpoint").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="state.pt is not a training checkpoint"):
        run(parse_args(_flags(corpus, tmp_path / "junk", "--resume")))
    with pytest.raises(TrainError, match="n_mtp_layers=2: training supports MTP depth 0 or 1"):
        run(parse_args(_flags(corpus, tmp_path / "x", "--set", "n_mtp_layers=2")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text('{"domain": "x"}\n')
    with pytest.raises(TrainError, match=r"train.jsonl:1: a document needs string fields"):
        run(parse_args(_flags(corpus, tmp_path / "x") + ["--corpus", str(tmp_path / "bad")]))
    # the command line: one line on stderr, exit status 2
    with pytest.raises(SystemExit) as e:
        train_main(_flags(corpus, tmp_path / "x", "--set", "n_routed_experts=15"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid ModelArgs") and "\n" not in err


def test_two_process_gloo_run_matches_one_process(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo) x batch 2 takes the same steps as 1 process x batch 4."""
    import os
    import subprocess
    import sys

    common = ("--steps", "3", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(_flags(corpus, tmp_path / "one", *common)))
    flags = _flags(corpus, tmp_path / "two", *common)
    flags[flags.index("--batch-size") + 1] = "2"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")} | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "model.train", *flags], cwd=Path(__file__).resolve().parents[1], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = pq.read_table(tmp_path / "one" / "train_metrics.parquet").to_pylist()
    two = pq.read_table(tmp_path / "two" / "train_metrics.parquet").to_pylist()
    assert [x["tokens"] for x in two] == [x["tokens"] for x in one] == [4 * 32] * 3
    for x, y in zip(one, two):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
        assert y["bias_norm_layer1"] == pytest.approx(x["bias_norm_layer1"], abs=1e-6)
        assert y["maxvio_layer2"] == x["maxvio_layer2"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
