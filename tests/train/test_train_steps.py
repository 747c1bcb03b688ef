"""train.steps and one optimizer step of train.loop: the losses and their weights against a plain
recomputation from the model's outputs, the validation figures, the schedules, the optimizer's
groups, the model's arguments. (Whole training runs: test_train.py.)"""

from __future__ import annotations

import math
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_model

from model import ModelArgs
from train import RoutingTap, moe_gates, parse_args
from train.steps import Dist, evaluate, forward_losses, lr_shape, make_optimizer, model_args

from helpers.training import step_run

REPO = Path(__file__).resolve().parents[2]


def _routing(m, x: torch.Tensor, mtp: bool) -> tuple:
    """(logits, mtp_logits, {gate prefix: (scores [T, E], ids [T, K])}) of one forward pass."""
    seen: dict = {}
    hooks = []
    for g in moe_gates(m):
        for what in ("scores", "topk_ids"):
            hooks.append((f"{g.prefix}.hook_{what}", lambda t, hook, k=(g.label, what): seen.__setitem__(k, t)))
    with torch.no_grad(), m.hooks(hooks):
        out = m(x, mtp=mtp)
    logits, mtp_logits = out if mtp else (out, None)
    return logits, mtp_logits, {g.label: (seen[g.label, "scores"], seen[g.label, "topk_ids"]) for g in moe_gates(m)}


def _seq_balance_by_loop(scores: torch.Tensor, ids: torch.Tensor, batch: int) -> float:
    """sum_i f_i P_i of each sequence, averaged over sequences: f_i = E/(K S) * #tokens choosing i,
    P_i = mean_t s_i,t / sum_j s_j,t."""
    T, E = scores.shape
    S, K = T // batch, ids.shape[1]
    total = 0.0
    for b in range(batch):
        rows = range(b * S, (b + 1) * S)
        for i in range(E):
            f = E / (K * S) * sum(int(i in ids[t].tolist()) for t in rows)
            p = sum(float(scores[t, i] / scores[t].sum()) for t in rows) / S
            total += f * p
    return total / batch


def test_forward_losses_weigh_mtp_by_lambda_and_add_alpha_times_each_gates_sequence_balance():
    m = random_model("tiny", seed=1).train()
    x = torch.randint(0, m.args.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    ns = Namespace(mtp_weight=0.3, balance="aux-free", seq_aux_weight=0.01, switch_weight=0.0)
    o = forward_losses(m, m, RoutingTap(moe_gates(m)), x, ns, train=True)
    logits, mtp_logits, routing = _routing(m, x[:, :8], mtp=True)
    lm = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [B, 8]: token i+1
    mtp = F.cross_entropy(mtp_logits.transpose(1, 2), x[:, 2:], reduction="none")  # [B, 7]: token i+2
    aux = 0.01 * sum(_seq_balance_by_loop(s, ids, batch=2) for s, ids in routing.values())
    assert len(routing) == 3  # layers 1, 2 and the MTP block's router
    torch.testing.assert_close(o.lm_rows, lm.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o.mtp_rows, mtp.mean(1), rtol=1e-5, atol=1e-6)
    assert float(o.aux) == pytest.approx(aux, rel=1e-5)
    assert float(o.loss.detach()) == pytest.approx(float(lm.mean() + 0.3 * mtp.mean()) + aux, rel=1e-5)
    # lambda 0: no MTP pass at all (its rows are null in train_steps), and no balance loss in evaluation
    off = forward_losses(m, m, RoutingTap(moe_gates(m)), x, Namespace(**vars(ns) | {"mtp_weight": 0.0}), train=False)
    assert off.mtp_rows is None and float(off.loss.detach()) == pytest.approx(float(lm.mean()), rel=1e-5)


def test_evaluate_averages_tokens_per_domain_and_counts_mtp_agreement_and_global_maxvio():
    m = random_model("tiny", seed=2)
    drafts = m.mtp_logits

    def agreeing_drafts(h, *a, **kw):  # the MTP draft of position i made the main model's prediction at i + 1, i < 3
        return torch.cat([m.head(h[:, 1:4]), drafts(h, *a, **kw)[:, 3:]], 1)

    m.mtp_logits = agreeing_drafts
    g = torch.Generator().manual_seed(1)
    windows = {"b": torch.randint(0, 512, (3, 9), generator=g), "a": torch.randint(0, 512, (2, 9), generator=g)}
    ns = Namespace(batch_size=2, mtp_weight=0.3, balance="aux-free", seq_aux_weight=1e-4, switch_weight=0.0)
    res = evaluate(m, RoutingTap(moe_gates(m)), windows, ns, Dist("cpu"))
    hits = positions = 0
    loads = {}
    for d, w in windows.items():  # the whole domain in one pass (evaluate goes in batches of 2: 2 + 1 windows)
        logits, mtp_logits, routing = _routing(m, w[:, :8], mtp=True)
        lm = F.cross_entropy(logits.reshape(-1, 512), w[:, 1:].reshape(-1))
        mtp = F.cross_entropy(mtp_logits.reshape(-1, 512), w[:, 2:].reshape(-1))
        assert res[f"val_loss_{d}"] == pytest.approx(float(lm), rel=1e-5)
        assert res[f"val_mtp_loss_{d}"] == pytest.approx(float(mtp), rel=1e-5)
        same = mtp_logits.argmax(-1) == logits[:, 1:].argmax(-1)  # the draft of token i+2 vs the main model's
        hits, positions = hits + int(same.sum()), positions + same.numel()
        for label, (_, ids) in routing.items():
            loads[label] = loads.get(label, 0) + np.bincount(ids.flatten().numpy(), minlength=16)
    assert res["val_loss"] == pytest.approx((res["val_loss_a"] + res["val_loss_b"]) / 2)
    assert 5 * 3 <= hits < positions and res["val_mtp_agree"] == pytest.approx(hits / positions)
    for label, c in loads.items():
        assert res[f"val_maxvio_{label}"] == pytest.approx((c.max() - c.mean()) / c.mean(), rel=1e-6)


def test_the_lr_warms_up_linearly_to_the_peak_then_follows_the_cosine_down_to_min_lr_ratio():
    ns = Namespace(warmup_steps=4, steps=12, min_lr_ratio=0.1)
    # step s trains at (s + 1) / warmup, so step 3 reaches the peak; then 0.1 + 0.9 (1 + cos(pi p)) / 2,
    # p = (s - 4) / 8
    want = {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 5: 0.1 + 0.45 * (1 + math.cos(math.pi / 8)), 8: 0.55,
            11: 0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 8))}
    assert {step: lr_shape(step, ns) for step in want} == pytest.approx(want, rel=1e-12)
    assert lr_shape(0, Namespace(warmup_steps=0, steps=12, min_lr_ratio=0.1)) == 1.0  # no warm-up: the peak at once


def test_the_optimizer_decays_matrices_only_with_the_flags_betas():
    m = random_model("tiny")
    ns = Namespace(weight_decay=0.1, lr=1e-3, beta1=0.8, beta2=0.99)
    opt = make_optimizer(m, ns)
    group_of = {id(p): grp for grp in opt.param_groups for p in grp["params"]}
    assert len(group_of) == len(list(m.parameters()))
    for name, p in m.named_parameters():
        want = 0.1 if p.dim() >= 2 else 0.0  # norms (and any vector) undecayed
        assert group_of[id(p)]["weight_decay"] == want, name
        assert group_of[id(p)]["betas"] == (0.8, 0.99), name
    assert any(p.dim() == 2 for p in m.parameters()) and any(p.dim() == 1 for p in m.parameters())


def test_model_args_take_the_tokenizers_ids_and_a_seq_len_up_to_max_seq_len():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(REPO / "data" / "tokenizer.json"))
    args = model_args(parse_args(["--config", "tiny", "--seq-len", "256"]), tok.get_vocab_size())
    assert args.max_seq_len == ModelArgs.from_name("tiny").max_seq_len == 256  # seq_len == max_seq_len fits
    assert (args.vocab_size, args.bos_token_id, args.eos_token_id) == (
        tok.get_vocab_size(), tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>"))


# ------------------------------------------------------------------------------ one optimizer step
STREAMS = {"a": np.arange(5, dtype=np.int32), "b": np.arange(10, 210, dtype=np.int32),
           "c": np.arange(300, 500, dtype=np.int32)}  # "a" is shorter than a window: never drawn


def test_a_step_updates_each_bias_by_that_steps_cosine_speed_against_the_global_loads(tmp_path):
    r = step_run(tmp_path, STREAMS, "--bias-schedule", "cosine", "--bias-update-speed", "0.01")
    r.step = 5  # after warm-up (2 steps of 10): gamma x (0.1 + 0.9 (1 + cos(pi (5 - 2) / 8)) / 2)
    before = {k: mod.bias.clone() for k, mod in r.gate_mods.items()}
    row, domain_loss, loads = r._train_step()
    speed = 0.01 * (0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 8)))
    for gi, g in enumerate(r.gates):
        want = before[g.label] - speed * torch.sign(loads[gi] - loads[gi].mean())
        torch.testing.assert_close(r.gate_mods[g.label].bias, want, rtol=0, atol=1e-9)
    assert r.step == 6 and row["step"] == 6 and row["tokens"] == 2 * 8
    # each domain's loss is booked under its own name: "a" had no rows (it was shorter than a window)
    assert math.isnan(domain_loss[0]) and all(math.isfinite(v) for v in domain_loss[1:])


def test_grad_clip_0_means_no_clipping_not_a_zero_gradient(tmp_path):
    r = step_run(tmp_path, STREAMS, "--grad-clip", "0", "--weight-decay", "0", "--warmup-steps", "0")
    head = r.raw.head.weight.detach().clone()
    row, _, _ = r._train_step()
    # Adam's first step moves every weight with a gradient by lr * g / (|g| + eps): about lr = 1e-3
    moved = (r.raw.head.weight.detach() - head).abs()
    assert row["grad_norm"] > 0 and float(moved.max()) == pytest.approx(1e-3, rel=1e-3)


def test_the_bias_settling_draws_fresh_batches_after_the_last_training_step(tmp_path):
    r = step_run(tmp_path, STREAMS, "--settle-updates", "2", "--settle-batches", "3")
    r.info, drawn, get = {}, [], r.data.batches.get

    def recording(step, *a, **kw):
        drawn.append(step)
        return get(step, *a, **kw)

    r.data.batches.get = recording
    r._settle()
    # training drew steps 0-9; each of the (2 + 1) x 3 settle forward passes (2 updates, then the
    # MaxVio after the last) its own batch, none of those
    assert len(set(drawn)) == 9 and min(drawn) >= 10
    assert r.info["bias_settle"]["updates"] == 2 and set(r.info["bias_settle"]["maxvio_pooled"]) == set(r.gate_mods)
    assert all(len(h) == 3 for h in r.info["bias_settle"]["maxvio_pooled"].values())


def test_the_bias_settling_shows_its_progress_unless_told_not_to(tmp_path, capsys):
    """The phase ran for minutes after the steps' bar had closed, without a word (a tour)."""
    r = step_run(tmp_path, STREAMS, "--settle-updates", "2", "--settle-batches", "3")
    r.info, r.ns.no_progress = {}, False
    r._settle()
    err = capsys.readouterr().err
    assert "settling the bias (weights frozen)" in err and "/9 " in err  # (2 + 1) x 3 batches
    r.ns.no_progress = True
    r._settle()
    assert "settling the bias" not in capsys.readouterr().err


def test_the_bias_settling_counts_a_batch_once_its_forward_is_done(tmp_path, capsys, monkeypatch):
    """The bar counted each batch as it was drawn, so it read 9/9 while the last forward pass still ran."""
    import tqdm.auto

    bars, seen = [], []

    class Bar(tqdm.auto.tqdm):  # the phase's bar, kept to be read during each forward pass
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    r = step_run(tmp_path, STREAMS, "--settle-updates", "2", "--settle-batches", "3")
    r.info, r.ns.no_progress = {}, False
    r.raw.register_forward_pre_hook(lambda *_: seen.append(bars[-1].n))
    r._settle()
    # (2 + 1) x 3 forward passes: during the k-th, k batches are done; 9/9 once the last one is
    assert len(bars) == 1 and seen == list(range(9)) and bars[0].n == bars[0].total == 9


def test_device_cuda_n_trains_on_that_gpu_and_a_device_torch_lacks_is_one_line(monkeypatch):
    """--device cuda:1 was passed on as "cuda", which put the run on cuda:0 (the LOCAL_RANK GPU) without a
    word, beside whatever ran there; cudaXYZ was taken for cuda, and a GPU past the last was torch's traceback."""
    import model.parallel
    from model.ranks import World

    from train import TrainError

    asked = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process
    monkeypatch.setattr(model.parallel, "init_world", lambda mp, device: asked.append(device) or World(device=device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [Dist(flag).device for flag in ("cuda:1", "cuda", "cpu")] == [torch.device(d) for d in ("cuda:1", "cuda",
                                                                                                     "cpu")]
    assert asked == ["cuda:1", "cuda", "cpu"]
    with pytest.raises(TrainError, match=r"^--device=cuda:2: torch sees 2 CUDA devices \(cuda:0 to cuda:1\)$"):
        Dist("cuda:2")
    with pytest.raises(TrainError, match=r"^--device='cudaXYZ': choose auto, cpu, cuda or cuda:N$"):
        Dist("cudaXYZ")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match=r"^--device=cuda:1: under torchrun each process takes its own GPU"):
        Dist("cuda:1")
    assert asked == ["cuda:1", "cuda", "cpu"]  # refused before any process group


def test_the_closing_line_leaves_out_what_the_run_never_measured():
    """No MoE layer: the MaxVio label was printed alone ("  MaxVio_global "); no MTP: no agreement."""
    from train.loop import _final_line

    final = {"val_loss_code": 2.0, "val_maxvio_layer1": 0.25, "val_mtp_agree": 0.5}
    assert _final_line(final, ["code"], ["layer1"]) == ("  val loss code=2.000  MaxVio_global layer1=0.25  "
                                                        "MTP agreement 50.0%")
    dense = {"val_loss_code": 2.0, "val_mtp_agree": float("nan")}
    assert _final_line(dense, ["code"], []) == "  val loss code=2.000"
