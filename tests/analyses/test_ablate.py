"""Expert ablations (analyses.ablate): the routing hooks and `evaluate` on random tiny checkpoints (the
command and its job: test_ablate_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.ablate import Ablation, RouterShape, ablated, check_routable, evaluate
from helpers.ablate_batches import random_batches, routed_by_hand

torch.set_num_threads(1)
IDS = "layers.*.ffn.gate.hook_topk_ids"


def _ids(model, tokens, **kw):
    if kw:
        with ablated(model, **kw):
            _, cache = model.run_with_cache(tokens, names=IDS)
    else:
        _, cache = model.run_with_cache(tokens, names=IDS)
    return {int(k.split(".")[1]): v for k, v in cache.items()}


# ----------------------------------------------------------------------------- the hooks
def test_reroute_never_selects_a_disabled_expert(tiny, tokens):
    disabled = {1: [0, 3, 5, 9, 12], 2: [2, 7]}
    base = _ids(tiny, tokens)
    for layer, ids in disabled.items():  # negative control: the baseline does pick them
        assert torch.isin(base[layer], torch.tensor(ids)).any()
    got = _ids(tiny, tokens, disabled=disabled, mode="reroute")
    for layer, ids in disabled.items():
        assert not torch.isin(got[layer], torch.tensor(ids)).any()
        assert (got[layer].sort(-1).values.diff(dim=-1) != 0).all()  # still K distinct experts


def test_reroute_equals_a_reference_router(tiny, tokens):
    """Per token, in plain Python: selection = sigmoid(logit) + bias, disabled experts removed, groups
    ranked by the sum of their two best remaining experts, top-k of the kept groups, weights = the
    unbiased scores normalised, times route_scale."""
    off = {3, 4, 5, 6, 9}  # group 1 keeps only expert 7: its group score is -inf, it cannot be chosen
    gate = tiny.layers[1].ffn.gate
    with ablated(tiny, {1: sorted(off)}):
        _, cache = tiny.run_with_cache(tokens, names="layers.1.ffn.gate.hook_*")
    logits, bias = cache["layers.1.ffn.gate.hook_logits"].double(), gate.bias.double()
    for t in range(0, logits.shape[0], 7):
        score = [1 / (1 + np.exp(-float(v))) for v in logits[t]]
        sel = {e: score[e] + float(bias[e]) for e in range(16) if e not in off}
        ids = routed_by_hand(sel, gate)
        assert cache["layers.1.ffn.gate.hook_topk_ids"][t].tolist() == ids and 7 not in ids
        w = np.array([score[e] for e in ids])
        np.testing.assert_allclose(cache["layers.1.ffn.gate.hook_topk_weights"][t].numpy(),
                                   w / w.sum() * gate.route_scale, rtol=1e-5)


def test_negative_control_zero_mode_keeps_the_disabled_experts_selected(tiny, tokens):
    """The check above can fail: zero mode routes as before, so the disabled experts stay chosen."""
    got = _ids(tiny, tokens, disabled={2: [2, 7]}, mode="zero")
    assert torch.isin(got[2], torch.tensor([2, 7])).any()


def test_nothing_disabled_is_exactly_the_baseline(tiny, tokens):
    from analyses.ablate import reroute_hook, zero_hook

    ref = tiny(tokens)
    with ablated(tiny, {}, mode="reroute"):
        assert torch.equal(tiny(tokens), ref)
    none = torch.zeros(16, dtype=torch.bool)  # the hook path itself, with an empty mask
    seen: dict = {}
    hooks = [(f"layers.{i}.ffn.gate.hook_select_scores", reroute_hook(none)) for i in (1, 2)]
    hooks += [("layers.1.ffn.gate.hook_topk_ids", lambda t, h: seen.__setitem__("ids", t)),
              ("layers.1.ffn.gate.hook_topk_weights", zero_hook(none, seen, True))]
    with tiny.hooks(hooks):
        assert torch.equal(tiny(tokens), ref)


def test_zero_mode_keeps_routing_and_changes_outputs(tiny, tokens):
    ref = tiny(tokens)
    base = _ids(tiny, tokens)
    got = _ids(tiny, tokens, disabled={2: [2, 7]}, mode="zero")
    assert all(torch.equal(got[i], base[i]) for i in base)  # the last MoE layer: nothing downstream
    with ablated(tiny, {2: [2, 7]}, mode="zero"):
        assert not torch.allclose(tiny(tokens), ref)
    # renormalised: disabled weights 0, each token's weights keep their sum (route_scale) if any is left
    with ablated(tiny, {1: [0, 3, 5]}, mode="zero", renormalise=True):
        _, cache = tiny.run_with_cache(tokens, names="layers.1.ffn.gate.hook_topk_*")
    ids, w = cache["layers.1.ffn.gate.hook_topk_ids"], cache["layers.1.ffn.gate.hook_topk_weights"]
    off = torch.isin(ids, torch.tensor([0, 3, 5]))
    assert off.any() and (w[off] == 0).all()
    left = ~off.all(-1)
    torch.testing.assert_close(w.sum(-1)[left], torch.full_like(w.sum(-1)[left], tiny.args.route_scale))


def test_shared_expert_off(tiny, tokens):
    ref = tiny(tokens)
    with ablated(tiny, {}, shared_layers=[2]):
        _, cache = tiny.run_with_cache(tokens, names="layers.2.ffn.hook_shared_out")
        assert not torch.allclose(tiny(tokens), ref)
    assert (cache["layers.2.ffn.hook_shared_out"] == 0).all()


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_baseline_control_and_reroute(tiny):
    batches = random_batches()
    abls = [Ablation(name="none", experts={}), Ablation(name="top3", top=3), Ablation(name="rand3", random=3),
            Ablation(name="z", experts="2:1+2", mode="zero", renormalise=True)]
    df, plans = evaluate(tiny, batches, abls)
    assert list(df.domain.unique()) == ["all", "code", "prose"]
    none = df[df.ablation == "none"]
    assert (none.loss == none.baseline_loss).all() and (none.delta == 0).all()
    assert (none.routing_changed == 0).all() and (none.downstream_layers == 2).all()
    top = df[(df.ablation == "top3") & (df.domain == "all")].iloc[0]
    assert top.n_disabled == 6 and top.delta != 0 and top.downstream_layers == 1 and top.routing_changed > 0
    assert json.loads(top.spec)["loads"] == "baseline"
    z = df[df.ablation == "z"]
    assert z.renormalise.all() and z.routing_changed.isna().all() and (z.downstream_layers == 0).all()
    n_targets = sum(int((b.lengths - 1).sum()) for b in batches)
    assert df[df.domain == "all"].tokens.eq(n_targets).all()
    # the top-3 are the most loaded experts of the baseline pass, counted here independently
    counts = {1: torch.zeros(16, dtype=torch.long), 2: torch.zeros(16, dtype=torch.long)}
    for b in batches:
        _, cache = tiny.run_with_cache(b.tokens, lengths=b.lengths, names=IDS)
        for name, ids in cache.items():
            counts[int(name.split(".")[1])] += torch.bincount(ids[b.valid.reshape(-1)].reshape(-1), minlength=16)
    assert plans[1].disabled == {k: sorted(np.argsort(-v.numpy(), kind="stable")[:3].tolist())
                                 for k, v in counts.items()}


def test_routing_and_experts_changed_equal_a_count_by_hand(tiny):
    """routing_changed (top-k sets that differ from the baseline's) and experts_changed (experts
    replaced, over K) at the MoE layers after the first ablated one, per domain, counted here token
    by token. Counting the experts kept as replaced, or not dividing by K, gave wrong numbers that no
    test saw, as did mixing up the rows' domains (a review)."""
    batches = random_batches()
    off = [0, 3, 5, 9, 12]
    df, _ = evaluate(tiny, batches, [Ablation(name="x", experts={1: off})])
    name, K = "layers.2.ffn.gate.hook_topk_ids", tiny.args.n_activated_experts
    sums: dict = {}  # domain -> [tokens, changed sets, replaced experts]
    for b in batches:
        _, base = tiny.run_with_cache(b.tokens, lengths=b.lengths, names=name)
        with ablated(tiny, {1: off}):
            _, abl = tiny.run_with_cache(b.tokens, lengths=b.lengths, names=name)
        S = b.tokens.shape[1]
        for t in range(b.tokens.numel()):
            if not b.valid.reshape(-1)[t]:
                continue
            was, now = set(base[name][t].tolist()), set(abl[name][t].tolist())
            for d in ("all", b.windows[t // S].domain):
                s = sums.setdefault(d, [0, 0, 0])
                s[0], s[1], s[2] = s[0] + 1, s[1] + (was != now), s[2] + len(now - was)
    got = df.set_index("domain")
    assert sorted(sums) == ["all", "code", "prose"] and (got.downstream_layers == 1).all()
    for d, (n, changed, replaced) in sums.items():
        assert 0 < changed < n and replaced > changed  # some sets change, by more than one expert
        assert got.loc[d, "routing_changed"] == pytest.approx(changed / n, rel=1e-12)
        assert got.loc[d, "experts_changed"] == pytest.approx(replaced / (K * n), rel=1e-12)


def test_reroute_with_only_the_kept_number_of_groups_left(tiny, tokens):
    # groups 0 and 1 off: exactly the 2 groups a token keeps remain, 8 experts >= K: routable
    off = list(range(8))
    check_routable(RouterShape.of(tiny.args), 1, off)
    got = _ids(tiny, tokens, disabled={1: off})[1]
    assert (got >= 8).all() and (got.sort(-1).values.diff(dim=-1) != 0).all()


def test_an_expert_no_token_chose_changes_nothing_zeroed_and_rerouted_only_through_its_group():
    """docs/metrics.md, "Ablation": zeroing experts no token chose leaves every logit as it was; rerouting
    them moves a token only where its kept groups change (a group is scored by its two best experts, so
    one it never chose can hold its group up). On the bundled model's first 40 tokens, layer 1's unchosen
    experts (a sweep user's check) move two tokens that way."""
    import generate
    import model
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    m = model.load(repo / "data" / "model", dtype="float32")
    first = json.loads((repo / "data" / "corpus" / "val.jsonl").open().readline())["text"]
    ids = torch.tensor([generate.load_codec(repo / "data" / "model").encode(first, chat=False)[:40]])
    g = "layers.1.ffn.gate."
    names = [g + "hook_topk_ids", g + "hook_group_scores", g + "hook_allowed_scores"]
    ref, base = m.run_with_cache(ids, names=names)
    unused = sorted(set(range(m.args.n_routed_experts)) - set(base[g + "hook_topk_ids"].flatten().tolist()))
    assert unused
    for renormalise in (False, True):
        with ablated(m, {1: unused}, mode="zero", renormalise=renormalise):
            assert torch.equal(m(ids), ref)
    with ablated(m, {1: unused}):
        _, got = m.run_with_cache(ids, names=names)
    moved = (got[g + "hook_topk_ids"].sort(-1).values != base[g + "hook_topk_ids"].sort(-1).values).any(-1)
    kept = [torch.isfinite(c[g + "hook_allowed_scores"]).view(len(moved), m.args.n_expert_groups, -1).any(-1)
            for c in (base, got)]  # the groups each token keeps: those whose experts stay allowed
    regrouped = (kept[0] != kept[1]).any(-1)
    assert moved.sum() == 2 and torch.equal(moved, moved & regrouped)
