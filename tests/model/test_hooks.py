"""Hook points: pinned names, cached shapes, replacement semantics, scoping."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import model
from helpers import cast_, random_model

# The full ordered list for the shipped tiny config (1 dense layer, 2 MoE layers, 1 MTP module).
# Changing a name breaks users' code: update this list only on purpose.
TINY_HOOK_NAMES = [
    "hook_embed",
    "layers.0.hook_resid_pre",
    "layers.0.hook_attn_in",
    "layers.0.attn.hook_q_nope",
    "layers.0.attn.hook_q_pe",
    "layers.0.attn.hook_c_kv",
    "layers.0.attn.hook_k_pe",
    "layers.0.attn.hook_pattern",
    "layers.0.attn.hook_z",
    "layers.0.attn.hook_result",
    "layers.0.hook_attn_out",
    "layers.0.hook_resid_mid",
    "layers.0.hook_ffn_in",
    "layers.0.ffn.hook_hidden",
    "layers.0.hook_ffn_out",
    "layers.0.hook_resid_post",
    "layers.1.hook_resid_pre",
    "layers.1.hook_attn_in",
    "layers.1.attn.hook_q_nope",
    "layers.1.attn.hook_q_pe",
    "layers.1.attn.hook_c_kv",
    "layers.1.attn.hook_k_pe",
    "layers.1.attn.hook_pattern",
    "layers.1.attn.hook_z",
    "layers.1.attn.hook_result",
    "layers.1.hook_attn_out",
    "layers.1.hook_resid_mid",
    "layers.1.hook_ffn_in",
    "layers.1.ffn.gate.hook_logits",
    "layers.1.ffn.gate.hook_scores",
    "layers.1.ffn.gate.hook_select_scores",
    "layers.1.ffn.gate.hook_group_scores",
    "layers.1.ffn.gate.hook_allowed_scores",
    "layers.1.ffn.gate.hook_topk_ids",
    "layers.1.ffn.gate.hook_topk_weights",
    "layers.1.ffn.experts.hook_expert_out",
    "layers.1.ffn.hook_routed_out",
    "layers.1.ffn.shared_experts.hook_hidden",
    "layers.1.ffn.hook_shared_out",
    "layers.1.hook_ffn_out",
    "layers.1.hook_resid_post",
    "layers.2.hook_resid_pre",
    "layers.2.hook_attn_in",
    "layers.2.attn.hook_q_nope",
    "layers.2.attn.hook_q_pe",
    "layers.2.attn.hook_c_kv",
    "layers.2.attn.hook_k_pe",
    "layers.2.attn.hook_pattern",
    "layers.2.attn.hook_z",
    "layers.2.attn.hook_result",
    "layers.2.hook_attn_out",
    "layers.2.hook_resid_mid",
    "layers.2.hook_ffn_in",
    "layers.2.ffn.gate.hook_logits",
    "layers.2.ffn.gate.hook_scores",
    "layers.2.ffn.gate.hook_select_scores",
    "layers.2.ffn.gate.hook_group_scores",
    "layers.2.ffn.gate.hook_allowed_scores",
    "layers.2.ffn.gate.hook_topk_ids",
    "layers.2.ffn.gate.hook_topk_weights",
    "layers.2.ffn.experts.hook_expert_out",
    "layers.2.ffn.hook_routed_out",
    "layers.2.ffn.shared_experts.hook_hidden",
    "layers.2.ffn.hook_shared_out",
    "layers.2.hook_ffn_out",
    "layers.2.hook_resid_post",
    "hook_final",
    "mtp.0.hook_in",
    "mtp.0.block.hook_resid_pre",
    "mtp.0.block.hook_attn_in",
    "mtp.0.block.attn.hook_q_nope",
    "mtp.0.block.attn.hook_q_pe",
    "mtp.0.block.attn.hook_c_kv",
    "mtp.0.block.attn.hook_k_pe",
    "mtp.0.block.attn.hook_pattern",
    "mtp.0.block.attn.hook_z",
    "mtp.0.block.attn.hook_result",
    "mtp.0.block.hook_attn_out",
    "mtp.0.block.hook_resid_mid",
    "mtp.0.block.hook_ffn_in",
    "mtp.0.block.ffn.gate.hook_logits",
    "mtp.0.block.ffn.gate.hook_scores",
    "mtp.0.block.ffn.gate.hook_select_scores",
    "mtp.0.block.ffn.gate.hook_group_scores",
    "mtp.0.block.ffn.gate.hook_allowed_scores",
    "mtp.0.block.ffn.gate.hook_topk_ids",
    "mtp.0.block.ffn.gate.hook_topk_weights",
    "mtp.0.block.ffn.experts.hook_expert_out",
    "mtp.0.block.ffn.hook_routed_out",
    "mtp.0.block.ffn.shared_experts.hook_hidden",
    "mtp.0.block.ffn.hook_shared_out",
    "mtp.0.block.hook_ffn_out",
    "mtp.0.block.hook_resid_post",
    "mtp.0.hook_hidden",
    "mtp.0.hook_logits",
]


def test_pinned_hook_names():
    m = model.Transformer(model.ModelArgs.from_name("tiny"))
    assert m.hook_names() == TINY_HOOK_NAMES


def test_hook_names_follow_forward_order():
    m = random_model("tiny")
    seen = []
    with m.hooks([(lambda n: True, lambda t, hook: seen.append(hook.name))]):
        m(torch.zeros(1, 4, dtype=torch.long), mtp=True)
    assert seen == TINY_HOOK_NAMES


def test_a_hook_point_knows_its_layer():
    """hook.layer() (TransformerLens's) is the layer a hook fn runs in, in a pass over every layer; a
    point outside the layers is a one-line ValueError naming it, with the hook's note."""
    m = random_model("tiny")
    seen = []
    with m.hooks([("layers.*.hook_ffn_out", lambda t, hook: seen.append((hook.name, hook.layer())))]):
        m(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [(f"layers.{i}.hook_ffn_out", i) for i in range(3)]
    assert m.hook_points["layers.2.ffn.gate.hook_topk_ids"].layer() == 2
    with pytest.raises(ValueError, match=r"^hook\.layer\(\) on hook_embed: that point is not in a layer "
                                         r"\(layers\.\{i\}\.\*\)") as e:
        m.run_with_hooks(torch.zeros(1, 4, dtype=torch.long), fwd_hooks=[("hook_embed", lambda t, hook: hook.layer())])
    assert e.value.__notes__[0].endswith("<lambda> on hook_embed)")  # the hook point the hook ran on
    with pytest.raises(ValueError, match=r"on mtp\.0\.block\.hook_resid_pre: that point is in MTP module 0, not"):
        m.hook_points["mtp.0.block.hook_resid_pre"].layer()
    with pytest.raises(ValueError, match=r"^hook\.layer\(\): this hook point has no name"):
        model.HookPoint().layer()


def test_run_with_cache_shapes():
    m = random_model("tiny")
    a = m.args
    B, S = 2, 9
    T, H, K, E = B * S, a.n_heads, a.n_activated_experts, a.n_routed_experts
    (logits, mtp_logits), cache = m.run_with_cache(torch.zeros(B, S, dtype=torch.long), mtp=True)
    assert "layers.0.attn.hook_pattern" not in cache  # opt-in
    D, C, R, N, V = a.dim, a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim
    expect = {
        "hook_embed": (B, S, D), "hook_final": (B, S, D),
        "layers.0.hook_resid_pre": (B, S, D), "layers.0.hook_attn_in": (B, S, D),
        "layers.0.attn.hook_q_nope": (B, S, H, N), "layers.0.attn.hook_q_pe": (B, S, H, R),
        "layers.0.attn.hook_c_kv": (B, S, C), "layers.0.attn.hook_k_pe": (B, S, R),
        "layers.0.attn.hook_z": (B, S, H, V), "layers.0.hook_attn_out": (B, S, D),
        "layers.0.hook_resid_mid": (B, S, D), "layers.0.hook_ffn_out": (B, S, D),
        "layers.1.ffn.gate.hook_logits": (T, E), "layers.1.ffn.gate.hook_scores": (T, E),
        "layers.1.ffn.gate.hook_select_scores": (T, E), "layers.1.ffn.gate.hook_topk_ids": (T, K),
        "layers.1.ffn.gate.hook_group_scores": (T, a.n_expert_groups),
        "layers.1.ffn.gate.hook_topk_weights": (T, K), "layers.1.ffn.hook_routed_out": (B, S, D),
        "layers.1.ffn.hook_shared_out": (B, S, D), "layers.2.hook_resid_post": (B, S, D),
        "mtp.0.hook_in": (B, S - 1, D), "mtp.0.block.ffn.gate.hook_topk_ids": ((S - 1) * B, K),
        "mtp.0.hook_hidden": (B, S - 1, D), "mtp.0.hook_logits": (B, S - 1, a.vocab_size),
    }
    for name, shape in expect.items():
        assert tuple(cache[name].shape) == shape, name
    assert set(cache) == {n for n in TINY_HOOK_NAMES if not n.endswith(("hook_pattern", "hook_expert_out", "hook_result"))}
    assert cache["layers.0.ffn.hook_hidden"].shape == (B, S, a.inter_dim)
    assert cache["layers.1.ffn.shared_experts.hook_hidden"].shape == (B, S, a.n_shared_experts * a.moe_inter_dim)
    assert torch.equal(cache["hook_final"], cache["hook_final"].detach())
    assert torch.allclose(cache["mtp.0.hook_logits"], mtp_logits)


def test_cached_values_are_consistent():
    m = random_model("tiny", seed=2)
    x = torch.randint(0, 512, (2, 7))
    logits, c = m.run_with_cache(x)
    g = "layers.1.ffn.gate."
    w, ids, scores = c[g + "hook_topk_weights"], c[g + "hook_topk_ids"], c[g + "hook_scores"]
    # weights come from the UNBIASED scores, normalised and scaled
    s = scores.gather(1, ids)
    assert torch.allclose(w, s / s.sum(-1, keepdim=True) * m.args.route_scale)
    # the bias only enters the selection scores
    assert torch.allclose(c[g + "hook_select_scores"] - scores, m.layers[1].ffn.gate.bias.expand_as(scores))
    assert torch.allclose(c["layers.1.hook_resid_post"],
                          c["layers.1.hook_resid_mid"] + c["layers.1.hook_ffn_out"], atol=1e-6)
    assert torch.allclose(c["layers.1.hook_ffn_out"],
                          c["layers.1.ffn.hook_routed_out"] + c["layers.1.ffn.hook_shared_out"], atol=1e-6)
    assert torch.allclose(logits, m.head(c["hook_final"]), atol=1e-6)


def test_the_cache_holds_copies_that_later_edits_do_not_reach():
    """layers.0.hook_resid_post and layers.1.hook_resid_pre are one tensor: a hook that zeroed the latter in
    place zeroed the cached former too, though the docs said the cache records copies (a researcher's tour)."""
    m = random_model("tiny", seed=4)
    x = torch.randint(0, 512, (2, 7))
    _, clean = m.run_with_cache(x, names="layers.0.hook_resid_post")
    with m.hooks([("layers.1.hook_resid_pre", lambda t, h: t.zero_())]):
        edited, c = m.run_with_cache(x, names="layers.0.hook_resid_post")
    assert not torch.allclose(edited, m(x))  # the control: the in-place edit did reach the forward
    assert torch.equal(c["layers.0.hook_resid_post"], clean["layers.0.hook_resid_post"])
    assert c["layers.0.hook_resid_post"].abs().sum() > 0


def test_mlp_hidden_and_each_experts_output():
    """hook_hidden: the SwiGLU's hidden state, w2's input (dense layers and shared experts). hook_expert_out
    (opt-in): each chosen expert's output before its weight, [T, K, D] in hook_topk_ids' order; the routed
    output is their weighted sum, and a replacement is summed instead (per-expert attribution, patching)."""
    m = random_model("tiny", seed=6)
    x = torch.randint(0, 512, (2, 7))
    g, ex = "layers.1.ffn.", "layers.1.ffn.experts.hook_expert_out"
    ref, c = m.run_with_cache(x)
    assert ex not in c  # opt-in
    torch.testing.assert_close(m.layers[0].ffn.w2(c["layers.0.ffn.hook_hidden"]), c["layers.0.hook_ffn_out"])
    torch.testing.assert_close(m.layers[1].ffn.shared_experts.w2(c[g + "shared_experts.hook_hidden"]),
                               c[g + "hook_shared_out"])
    logits, c2 = m.run_with_cache(x, names=[ex, g + "gate.hook_topk_ids", g + "gate.hook_topk_weights",
                                            g + "hook_routed_out", "layers.1.hook_ffn_in"])
    out, ids, w = c2[ex], c2[g + "gate.hook_topk_ids"], c2[g + "gate.hook_topk_weights"]
    T, K = ids.shape
    assert out.shape == (T, K, m.args.dim)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)  # observing moves the sum by rounding only
    torch.testing.assert_close((out * w[..., None]).sum(1), c2[g + "hook_routed_out"].view(T, -1))
    t, k = 5, 2  # one assignment by hand: expert ids[t, k]'s SwiGLU on token t's FFN input
    e, xt = int(ids[t, k]), c2["layers.1.hook_ffn_in"].view(T, -1)[t]
    E = m.layers[1].ffn.experts
    by_hand = E.w2[e] @ (torch.nn.functional.silu(E.w1[e] @ xt) * (E.w3[e] @ xt))
    torch.testing.assert_close(out[t, k], by_hand, rtol=1e-5, atol=1e-6)
    # a replacement is what gets summed: every expert's output but the first choice's dropped
    with m.hooks([(ex, lambda o, hook: o * (torch.arange(K) == 0)[None, :, None])]):
        _, c3 = m.run_with_cache(x, names=g + "hook_routed_out")
    torch.testing.assert_close(c3[g + "hook_routed_out"].view(T, -1), out[:, 0] * w[:, :1])


def test_attention_pattern_opt_in():
    m = random_model("tiny", seed=3)
    x = torch.randint(0, 512, (2, 6))
    ref = m(x)
    out, c = m.run_with_cache(x, names="layers.*.attn.hook_pattern")
    p = c["layers.2.attn.hook_pattern"]
    assert p.shape == (2, m.args.n_heads, 6, 6)
    assert torch.allclose(p.sum(-1), torch.ones(2, m.args.n_heads, 6))
    assert p.triu(1).abs().max() == 0  # causal
    assert torch.equal(out, ref)  # observing the pattern leaves the output the fused kernel's, bit for bit
    m64, x = cast_(m, torch.float64), torch.randint(0, 512, (2, 40))  # the router stays float32
    out, c = m64.run_with_cache(x, names="layers.*.attn.hook_pattern")
    assert c["layers.2.attn.hook_pattern"].dtype == torch.float64
    assert torch.equal(out, m64(x))
    # in bfloat16 the materialised product moved logits by 1.4 and flipped experts (found by a review)
    b16, x = cast_(m, torch.bfloat16), torch.randint(0, 512, (4, 64))
    out, _ = b16.run_with_cache(x, names="layers.*.attn.hook_pattern")
    assert torch.equal(out, b16(x))
    # an edit takes effect, in place (returning None) as by a replacement: attend to the first key only
    def first_key_only(p, hook):
        p.zero_()
        p[..., 0] = 1.0

    with torch.no_grad():
        with m.hooks([("layers.2.attn.hook_pattern", first_key_only)]):
            edited = m(x[:2, :6])
        with m.hooks([("layers.2.attn.hook_pattern", lambda p, hook: torch.zeros_like(p).index_fill_(-1,
                                                                       torch.tensor([0]), 1.0))]):
            replaced = m(x[:2, :6])
    assert torch.equal(edited, replaced) and not torch.equal(edited, m(x[:2, :6]))


@torch.no_grad()
def test_an_edited_pattern_is_applied_query_by_key_as_written():
    """A replaced pattern is applied as written, rows the queries and columns the keys: when every
    query attends to key 0 only, every position's per-head output (hook_z) and attention output equal
    position 0's, which attends to key 0 alone anyway (the unedited run's); with absorb (expanded and
    latent forms) and naive. A pattern applied transposed (key by query) went unnoticed by a
    symmetric edit's check (a review): it gives position 0 the sum of all values and the others zero."""
    m = random_model("tiny", seed=3)
    x = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(3))
    names = ["layers.2.attn.hook_z", "layers.2.hook_attn_out"]

    def key0_only(p, hook):
        return torch.zeros_like(p).index_fill_(-1, torch.tensor([0]), 1.0)

    for impl, latent in (("absorb", "auto"), ("absorb", "always"), ("naive", "auto")):
        m.attn_impl = impl
        for a in m.attention_modules():
            a.latent_attention = latent
        _, plain = m.run_with_cache(x, names=names)
        with m.hooks([("layers.2.attn.hook_pattern", key0_only)]):
            _, edited = m.run_with_cache(x, names=names)
        for name in names:
            first = plain[name][:, :1]  # position 0: its own (only) key, edited or not
            # the control: unedited, the later positions differ from position 0
            assert not torch.allclose(plain[name], first.expand_as(plain[name]), atol=1e-3)
            assert torch.allclose(edited[name], first.expand_as(edited[name]), atol=1e-5), (impl, latent, name)


def test_replacing_hooks_change_the_output_as_expected():
    m = random_model("tiny", seed=4)
    x = torch.randint(0, 512, (2, 8))
    # zero the last block's output: the final norm of zeros is zero, so the logits are exactly 0
    with m.hooks([("layers.2.hook_resid_post", lambda t, hook: torch.zeros_like(t))]):
        assert m(x).abs().max() == 0
    # removing layer 1's FFN through its hook equals skipping the FFN by hand
    with m.hooks([("layers.1.hook_ffn_out", lambda t, hook: torch.zeros_like(t))]):
        ablated, c = m.run_with_cache(x, names=["layers.1.hook_resid_mid", "layers.2.hook_resid_pre"])
    assert torch.equal(c["layers.1.hook_resid_mid"], c["layers.2.hook_resid_pre"])
    # masking an expert's selection score to -inf: it is never chosen, and the output changes
    ids = m.run_with_cache(x, names="layers.1.ffn.gate.hook_topk_ids")[1]["layers.1.ffn.gate.hook_topk_ids"]
    hot = int(ids.flatten().mode().values)

    def mask_expert(s, hook):
        s = s.clone()
        s[:, hot] = float("-inf")
        return s

    with m.hooks([("layers.1.ffn.gate.hook_select_scores", mask_expert)]):
        out, c = m.run_with_cache(x, names="layers.1.ffn.gate.hook_topk_ids")
    assert not (c["layers.1.ffn.gate.hook_topk_ids"] == hot).any()
    assert (out - m(x)).abs().max() > 1e-4


def test_group_scores_decide_which_groups_are_kept_and_can_be_replaced():
    """hook_group_scores is each group's score (its two best biased scores summed), the allowed
    scores are -inf exactly outside the best n_limited_groups of them, and a replaced group score
    moves every choice into the groups it favours; a router without groups has no such hook."""
    m = random_model("tiny", seed=5)
    with torch.no_grad():
        m.layers[1].ffn.gate.bias.normal_(0, 0.1)  # the sum must be of the BIASED scores
    a, g = m.args, "layers.1.ffn.gate."
    G, kept, per = a.n_expert_groups, a.n_limited_groups, a.n_routed_experts // a.n_expert_groups
    x = torch.randint(0, a.vocab_size, (2, 16), generator=torch.Generator().manual_seed(5))
    _, c = m.run_with_cache(x)
    groups = c[g + "hook_group_scores"]
    assert torch.equal(groups, c[g + "hook_select_scores"].unflatten(-1, (G, per)).topk(2, -1).values.sum(-1))
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(kept, -1).indices, True)
    assert torch.equal(torch.isinf(c[g + "hook_allowed_scores"]), ~keep.repeat_interleave(per, 1))
    favoured = torch.arange(G) >= G - kept  # the last `kept` groups
    assert ((c[g + "hook_topk_ids"] // per) < G - kept).any()  # control: they are not all chosen already

    def favour(t, hook):
        return torch.where(favoured, 1e3, 0.0).expand_as(t)

    with m.hooks([(g + "hook_group_scores", favour)]):
        _, c = m.run_with_cache(x, names=g + "hook_topk_ids")
    assert ((c[g + "hook_topk_ids"] // per) >= G - kept).all()
    flat = model.ModelArgs.from_dict(a.to_dict() | dict(n_expert_groups=1, n_limited_groups=1))
    names = model.Transformer(flat).hook_names()
    assert g + "hook_select_scores" in names and not any(n.endswith("hook_group_scores") for n in names)

def test_hooks_are_scoped_and_detached_on_error():
    m = random_model("tiny")
    x = torch.zeros(1, 3, dtype=torch.long)
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks([("layers.*.hook_resid_pre", lambda t, hook: calls.append(1))]):
            m(x)
            raise RuntimeError("boom")
    assert len(calls) == 3
    assert all(not hp.active for hp in m.hook_points.values())
    m(x)
    assert len(calls) == 3


def test_a_named_hook_point_the_forward_never_reached_is_warned_of():
    """mtp.0.* without mtp=True (or a block before start_at_layer) left the cache without them, silently."""
    m = random_model("tiny", seed=7)
    x = torch.randint(0, 512, (1, 5))
    with pytest.warns(UserWarning, match=r"1 of the 2 hook points named were not reached .*\(e.g. mtp.0.hook_in\)"):
        _, c = m.run_with_cache(x, names=["hook_embed", "mtp.0.hook_in"])
    assert list(c) == ["hook_embed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the controls: every named point reached, or no names given
        m.run_with_cache(x, names=["hook_embed", "mtp.0.hook_in"], mtp=True)
        m.run_with_cache(x)


def test_a_filter_that_picks_the_mtp_modules_points_with_the_layers_is_not_warned_of_them():
    """TransformerLens's predicate `lambda n: n.endswith("hook_resid_post")` (or the glob "*hook_resid_post")
    picks mtp.0.block.hook_resid_post too: every forward without mtp=True warned of it. Named by its own
    name, or by a filter of the MTP module's points alone, it still is."""
    m = random_model("tiny", seed=7)
    x = torch.randint(0, 512, (1, 5))
    post = lambda n: n.endswith("hook_resid_post")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, c = m.run_with_cache(x, names=post)
        _, g = m.run_with_cache(x, names="*hook_resid_post")
        m.run_with_hooks(x, fwd_hooks=[(post, lambda t, hook: None)])
        m.run_with_hooks(x, fwd_hooks=[(["hook_embed", "*.hook_resid_post"], lambda t, hook: None)])
    assert list(c) == list(g) == [f"layers.{i}.hook_resid_post" for i in range(m.args.n_layers)]
    _, both = m.run_with_cache(x, names=post, mtp=True)
    assert "mtp.0.block.hook_resid_post" in both
    for names in (lambda n: n.startswith("mtp."), "mtp.0.*", ["*hook_resid_post", "mtp.0.hook_in"],
                  (n for n in ["hook_embed", "mtp.0.hook_in"]), ["layers.*.hook_resid_post", "mtp.0.*"]):
        with pytest.warns(UserWarning, match=r"run_with_cache: .* not reached .*\(e\.g\. mtp\.0\."):
            m.run_with_cache(x, names=names)
    with pytest.warns(UserWarning, match=r"run_with_hooks: 1 of the .* not reached .*\(e\.g\. mtp\.0\.hook_in\)"):
        m.run_with_hooks(x, fwd_hooks=[(post, lambda t, hook: None), ("mtp.0.hook_in", lambda t, hook: None)])


def test_hook_names_of_a_filter_are_the_labels_of_its_stack():
    """cache.stack(names) stacks in forward order, not a list's own order, and nothing named the points it
    stacked but the caller's own copy of the matching: hook_names(names) lists them in that order."""
    m = random_model("tiny", seed=7)
    x = torch.randint(0, 512, (1, 5))
    pieces = ["hook_embed", "layers.*.hook_attn_out", "layers.*.hook_ffn_out"]
    _, c = m.run_with_cache(x, names=pieces)
    labels = m.hook_names(pieces)
    L = m.args.n_layers
    assert labels[:3] == ["hook_embed", "layers.0.hook_attn_out", "layers.0.hook_ffn_out"] and len(labels) == 1 + 2 * L
    stack = c.stack(pieces)
    assert all(torch.equal(stack[i], c[n]) for i, n in enumerate(labels))
    backwards = ["layers.1.hook_resid_post", "layers.0.hook_resid_post"]  # a list's order is not kept
    assert m.hook_names(backwards) == backwards[::-1]
    assert m.hook_names(lambda n: n.endswith("attn.hook_pattern"))[0] == "layers.0.attn.hook_pattern"  # opt-in too
    assert m.hook_names() == list(m.hook_points) and m.hook_names("hook_embed") == ["hook_embed"]
    with pytest.raises(model.HookError, match=r"no hook point named 'hook_embd' \(did you mean 'hook_embed'\?\)"):
        m.hook_names("hook_embd")


def test_persistent_hooks_until_reset():
    """add_hook keeps a hook across forwards (a notebook session's edit); reset_hooks removes every hook."""
    m = random_model("tiny", seed=7)
    x = torch.randint(0, 512, (1, 5))
    ref = m(x)
    handles = m.add_hook("layers.*.hook_resid_post", lambda t, hook: t * 0.5)
    assert len(handles) == m.args.n_layers
    first, second = m(x), m(x)
    assert torch.equal(first, second) and not torch.allclose(first, ref)  # on for both forwards
    handles[0].remove()
    assert not torch.equal(m(x), first)  # one removed: the others still on
    with m.hooks([("hook_embed", lambda t, hook: None)]):
        assert m.reset_hooks() == m.args.n_layers - 1 + 1  # the scoped one too
    assert torch.equal(m(x), ref) and m.reset_hooks() == 0
    with pytest.raises(model.HookError, match="fn must be callable, got int"):
        m.add_hook("hook_embed", 3)
    with pytest.raises(model.HookError, match="matches no hook point"):
        m.add_hook("layers.*.hook_nothing", lambda t, hook: None)


def test_unknown_hook_names_are_errors():
    m = random_model("tiny")
    with pytest.raises(model.HookError, match="no hook point named 'layers.9.hook_resid_pre'"):
        m.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names=["layers.9.hook_resid_pre"])
    with pytest.raises(model.HookError, match="matches no hook point"):
        with m.hooks([("nothing.*", lambda t, hook: None)]):
            pass
    # run_with_cache says so too, rather than returning an empty cache for a mistyped glob
    with pytest.raises(model.HookError, match="names='layers.*.hook_topk_idx' matches no hook point"):
        m.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names="layers.*.hook_topk_idx")
    # ... and so does one mistyped glob in a list beside names that match (it was dropped silently,
    # and with m.hooks an intended ablation just did not happen; found by a review)
    tok = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(model.HookError, match=r"names='layers\.\*\.ffn\.gate\.hook_topk_idz' matches no hook"):
        m.run_with_cache(tok, names=["hook_embed", "layers.*.ffn.gate.hook_topk_idz"])
    with pytest.raises(model.HookError, match=r"names='layers\.\*\.ffn\.hook_routed_outt' matches no hook"):
        with m.hooks([(["hook_embed", "layers.*.ffn.hook_routed_outt"], lambda t, hook: None)]):
            pass
    # one pair where a list of pairs goes: "too many values to unpack (expected 2)" before (a researcher's tour)
    with pytest.raises(model.HookError, match=r"got one pair, 'hook_embed': write hooks\(\[\(name, fn\)\]\)"):
        with m.hooks(("hook_embed", lambda t, hook: None)):
            pass
    with pytest.raises(model.HookError, match=r"^run_with_hooks takes a list of \(name, fn\) pairs; got one pair, "
                                              r"'hook_embed': write fwd_hooks=\[\(name, fn\)\]$"):
        m.run_with_hooks(tok, fwd_hooks=("hook_embed", lambda t, hook: None))  # was "got 'hook_embed'", hooks()'s
    with pytest.raises(model.HookError, match=r"takes \(name, fn\) pairs, fn callable; got \('hook_embed', 3\)"):
        with m.hooks([("hook_embed", 3)]):
            pass
    # a name that is not a string: "'int' object is not iterable" from list(), or a TypeError from the glob test
    for bad in (5, [5], ["hook_embed", None], b"hook_embed"):
        with pytest.raises(model.HookError, match=rf"^hook point names {re.escape(repr(bad))}: expected a name or glob "
                                                  r"\(a str\), a list of them, or a callable"):
            m.run_with_cache(tok, names=bad)
    with pytest.raises(model.HookError, match=r"^hook point names 7: expected a name or glob"):
        m.add_hook(7, lambda t, hook: None)
    _, cache = m.run_with_cache(tok, names=["hook_embed", "layers.*.ffn.gate.hook_topk_ids"])  # the control
    moe = range(m.args.n_dense_layers, m.args.n_layers)
    assert set(cache) == {"hook_embed", *(f"layers.{i}.ffn.gate.hook_topk_ids" for i in moe)}


def test_the_routing_weights_are_the_unbiased_scores_normalised_and_scaled():
    """The README's hook_topk_weights row: unbiased scores at the ids, normalised, times the routed
    scaling factor (it said only 'their weights'; a tour expected them to sum to 1)."""
    m = random_model("tiny", seed=2)
    g = "layers.1.ffn.gate."
    _, c = m.run_with_cache(torch.randint(0, 512, (2, 5)), names=[g + "hook_scores", g + "hook_topk_ids",
                                                                   g + "hook_topk_weights"])
    picked = c[g + "hook_scores"].gather(1, c[g + "hook_topk_ids"])
    scale = m.args.route_scale
    assert scale != 1 and m.args.norm_topk_prob
    assert torch.allclose(c[g + "hook_topk_weights"], picked / picked.sum(-1, keepdim=True) * scale)


def in_place(s, hook):  # expert 5's score raised where it is computed
    s[:, 5] += 1.0


def on_a_copy(s, hook):  # the same edit on a copy the hook returns
    s = s.clone()
    s[:, 5] += 1.0
    return s


@pytest.mark.parametrize("router", ["softmax, no bias", "sigmoid, no groups"])
def test_an_in_place_edit_of_the_selection_scores_moves_only_the_selection(router):
    """Without a bias the selection scores were the weights' own scores, and without groups the
    allowed scores the selection's: an in-place edit (TransformerLens style, returning None) moved the
    weights and the cached scores too, unlike the same edit on a copy (found by a review: a softmax
    router's cached probabilities reached 1.03, the logits moved by 3.5)."""
    kw = (dict(score_func="softmax", model_type="deepseek_v2", norm_topk_prob=False) if router.startswith("softmax")
          else {})
    m = random_model("tiny", seed=0, n_expert_groups=1, n_limited_groups=1, **kw)
    toks = torch.randint(0, m.args.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    g = "layers.1.ffn.gate."
    names = [g + "hook_scores", g + "hook_select_scores", g + "hook_topk_weights"]

    with torch.no_grad():
        _, plain = m.run_with_cache(toks, names=names)
        for point in ("hook_select_scores", "hook_allowed_scores"):
            with m.hooks([(g + point, in_place)]):
                a, ca = m.run_with_cache(toks, names=names)
            with m.hooks([(g + point, on_a_copy)]):
                b, cb = m.run_with_cache(toks, names=names)
            assert torch.equal(a, b), point
            assert torch.equal(ca[g + "hook_topk_weights"], cb[g + "hook_topk_weights"]), point
            assert torch.equal(ca[g + "hook_scores"], plain[g + "hook_scores"]), point  # the cached scores untouched
        with m.hooks([(g + "hook_allowed_scores", in_place)]):  # nor the cached selection scores
            _, c = m.run_with_cache(toks, names=names)
        assert torch.equal(c[g + "hook_select_scores"], plain[g + "hook_select_scores"])
        assert not torch.equal(a, m(toks))  # the control: the edit does move the routing


def test_forward_from_a_later_block_equals_the_full_pass():
    """start_at_layer + resid (a block's hook_resid_pre from a full pass) gives the full pass's
    logits bit for bit; bad uses are refused with a message naming the argument."""
    m = random_model("tiny", seed=0)
    tok = torch.randint(0, m.args.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([17, 12, 9])
    cap = {}
    hooks = [(f"layers.{i}.hook_resid_pre", (lambda i: lambda t, hook: cap.__setitem__(i, t.clone()))(i))
             for i in range(len(m.layers))]
    with torch.no_grad(), m.hooks(hooks):
        full = m(tok, lengths=lengths)
    with torch.no_grad():
        for i in range(1, len(m.layers)):
            assert torch.equal(m(tok, lengths=lengths, start_at_layer=i, resid=cap[i]), full), i
        for i in (np.int64(2), torch.tensor(2)):  # a layer number from numpy or a tensor (was refused)
            assert torch.equal(m(tok, lengths=lengths, start_at_layer=i, resid=cap[2]), full)
        # negative control: another block's input does not give the same logits
        assert not torch.equal(m(tok, lengths=lengths, start_at_layer=1, resid=cap[len(m.layers) - 1]), full)
        for kw, msg in [({"start_at_layer": 1, "resid": cap[1][:, :5]}, "resid: expected the input of block 1"),
                        ({"start_at_layer": len(m.layers), "resid": cap[1]}, "start_at_layer="),
                        ({"start_at_layer": torch.tensor([1]), "resid": cap[1]},
                         r"start_at_layer=tensor\(\[1\]\): must"),
                        ({"resid": cap[1]}, "pass start_at_layer"),
                        # a float or bool 0 was read as 'from the embedding': 0.0 then torch's bare TypeError at
                        # the layers' slice, False the whole model run (a review)
                        ({"start_at_layer": 0.0}, r"start_at_layer=0\.0: must be an integer"),
                        ({"start_at_layer": torch.tensor(0.0), "resid": cap[1]}, r"start_at_layer=tensor\(0\.\): must"),
                        ({"start_at_layer": False}, "start_at_layer=False: must be an integer"),
                        ({"start_at_layer": 1, "resid": cap[1], "use_cache": True}, "use_cache=False")]:
            with pytest.raises(ValueError, match=msg):
                m(tok, lengths=lengths, **kw)


def test_an_in_place_edit_of_the_allowed_scores_alone_leaves_a_softmax_routers_weights():
    # without a bias and without groups the allowed scores are the weights' own scores: an in-place
    # edit there (no hook on the selection scores) must still move only the choice, as on a copy
    m = random_model("tiny", seed=0, n_expert_groups=1, n_limited_groups=1, score_func="softmax",
                     model_type="deepseek_v2", norm_topk_prob=False)
    toks = torch.randint(0, m.args.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    g = "layers.1.ffn.gate."

    with torch.no_grad():
        _, plain = m.run_with_cache(toks, names=g + "hook_scores")
        out = {}
        for fn in (in_place, on_a_copy):
            with m.hooks([(g + "hook_allowed_scores", fn)]):
                out[fn.__name__] = m.run_with_cache(toks, names=[g + "hook_topk_ids", g + "hook_topk_weights"])
    (a, ca), (b, cb) = out["in_place"], out["on_a_copy"]
    assert (ca[g + "hook_topk_ids"] == 5).any(dim=-1).all()  # the edit does choose expert 5
    want = plain[g + "hook_scores"].gather(1, ca[g + "hook_topk_ids"]) * m.args.route_scale  # unedited scores
    assert torch.equal(ca[g + "hook_topk_weights"], want)
    assert torch.equal(ca[g + "hook_topk_weights"], cb[g + "hook_topk_weights"]) and torch.equal(a, b)
