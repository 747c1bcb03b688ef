"""train's balancing math on hand-computed cases: the bias update, settling the biases after training,
the sequence-wise and Switch balance losses, MaxVio (split from test_train.py, which runs the command)."""

from __future__ import annotations

import math

import pytest
import torch

from model import ModelArgs, Transformer
from model.moe import Gate
from train import (RoutingTap, max_violation, moe_gates, seq_balance_loss, settle_biases, switch_balance_loss,
                   update_bias)


# ------------------------------------------------------------------------------------ balancing math
def test_update_bias_sign_and_direction():
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10.0, 0.0, 5.0, 5.0]), 0.01)
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])  # overloaded down, underloaded up
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10.0, 0.0, 0.0, 2.0]), 0.01)  # against the mean 3, not the median
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01])

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


def _lopsided_tiny():
    """(args, model, gates, {label: gate module}, batch(i) -> windows [4, 33]) of the tiny model with
    experts 0 and 1 biased to win nearly every token."""
    args = ModelArgs.from_name("tiny")
    torch.manual_seed(0)
    m = Transformer(args, dtype=torch.float32)
    m.reset_parameters()
    gates = moe_gates(m)
    mods = {g.label: m.get_submodule(g.prefix) for g in gates}
    with torch.no_grad():
        for mod in mods.values():
            mod.bias[:2] = 0.5

    def batch(i: int) -> torch.Tensor:
        return torch.randint(0, args.vocab_size, (4, 33), generator=torch.Generator().manual_seed(i))

    return args, m, gates, mods, batch


@pytest.mark.slow  # 1.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_settle_biases_balances_a_lopsided_router_and_touches_nothing_else():
    args, m, gates, mods, batch = _lopsided_tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    history = settle_biases(m, RoutingTap(gates), mods, batch, updates=40, pooled=2, speed=0.05,
                            all_reduce=lambda t: t)
    assert set(history) == {g.label for g in gates} and all(len(h) == 41 for h in history.values())
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


def test_settle_biases_pool_fresh_batches_and_follow_the_loads_summed_over_ranks():
    args = ModelArgs.from_name("tiny")
    torch.manual_seed(0)
    m = Transformer(args, dtype=torch.float32)
    gates = moe_gates(m)
    mods = {g.label: m.get_submodule(g.prefix) for g in gates}
    drawn = []

    def batch(i: int) -> torch.Tensor:
        drawn.append(i)
        return torch.randint(0, args.vocab_size, (2, 9), generator=torch.Generator().manual_seed(i))

    other = torch.arange(16.0)  # the loads all ranks together count: expert 15 the busiest, 0 the idlest
    history = settle_biases(m, RoutingTap(gates), mods, batch, updates=2, pooled=3, speed=0.02,
                            all_reduce=lambda t: t * 0 + other)
    assert drawn == list(range(9))  # each update pools 3 batches of its own, and so does the last measure
    for label, mod in mods.items():
        # two updates, steps 0.02 and 0.01, each against sign(load - mean) of the summed loads
        torch.testing.assert_close(mod.bias, -0.03 * torch.sign(other - 7.5), rtol=0, atol=1e-7)
        assert history[label] == pytest.approx([(15 - 7.5) / 7.5] * 3)


def test_settle_biases_reports_the_maxvio_after_the_last_update():
    """The history ended with the MaxVio before the last update, so one update reported no change
    although the bias had moved (a review): its last value is measured after the last update."""
    args, m, gates, mods, batch = _lopsided_tiny()

    history = settle_biases(m, RoutingTap(gates), mods, batch, updates=1, pooled=2, speed=0.6,
                            all_reduce=lambda t: t)
    tap = RoutingTap(gates)  # the loads after the update, by hand, on the next two fresh batches
    loads = {g.label: torch.zeros(args.n_routed_experts) for g in gates}
    with torch.no_grad():
        for i in (2, 3):
            with m.hooks(tap.hooks()):
                m(batch(i)[:, :-1], mtp=len(m.mtp) > 0)
            for label, ids in tap.ids.items():
                loads[label] += torch.bincount(ids.flatten(), minlength=args.n_routed_experts).float()
    for label, h in history.items():
        assert len(h) == 2, (label, h)
        assert h[-1] == pytest.approx(max_violation(loads[label])), label
        assert h[-1] < 0.5 * h[0], (label, h)


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


def test_max_violation_of_no_load_is_undefined_not_balanced():
    """A gate that routed no token (mean load 0) has no MaxVio: nan, never 0, which reads as perfect
    balance in train_gates and on the dashboard."""
    assert math.isnan(max_violation(torch.zeros(4)))
    assert max_violation(torch.tensor([1.0, 3.0])) == pytest.approx(0.5)  # (3 - 2) / 2


def test_switch_balance_loss_normalises_non_uniform_scores():
    """The Switch loss was only checked on uniform scores, where any per-token normalisation (a
    softmax of the scores too) gives P = 1/E: P_i must be the mean of s_i,t / sum_j s_j,t (a review)."""
    scores = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    ids = torch.tensor([[2, 0], [0, 1]])  # T = 2, K = 2: counts [2, 1, 1]
    # s' = [[1/4, 1/4, 1/2], [1/2, 1/2, 0]] -> P = [3/8, 3/8, 1/4]; f = counts / (K T) = [1/2, 1/4, 1/4]
    # E * sum f P = 3 * (3/16 + 3/32 + 1/16) = 3 * 11/32
    assert float(switch_balance_loss(scores, ids)) == pytest.approx(33 / 32, rel=1e-6)
    # the same scores scaled per token (normalisation removes it) give the same loss
    assert float(switch_balance_loss(scores * torch.tensor([[3.0], [0.5]]), ids)) == pytest.approx(33 / 32, rel=1e-6)
