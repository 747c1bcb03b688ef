"""What interpretability work does with the hook points beyond caching and editing them: gradients of
cached activations (attribution), TransformerLens's one-pass `run_with_hooks`, a cache's `stack`
(split from test_hooks.py, which had passed 600 lines)."""

from __future__ import annotations

import warnings

import pytest
import torch

import model
from helpers import random_model


def test_a_cache_kept_in_the_graph_gives_gradients_with_respect_to_its_activations():
    """run_with_cache(detach=False) cached a copy that nothing downstream read: the gradient of a
    logit with respect to it raised 'The differentiated Tensor at index 0 appears to not have been
    used in the graph' (a tour, doing attribution). It is now the gradient the activation itself gets."""
    m = random_model("tiny", seed=3)
    x = torch.randint(0, 512, (2, 5))
    names = ["layers.1.hook_resid_post", "layers.2.hook_resid_pre", "layers.1.attn.hook_pattern",
             "layers.1.ffn.gate.hook_topk_weights"]
    kept = {}

    def keep(t, hook):  # the reference: the hook's own replacement, read downstream
        kept[hook.name] = t.clone()
        return kept[hook.name]

    with torch.enable_grad():
        with m.hooks([(names, keep)]):
            ref = torch.autograd.grad(m(x)[1, -1, 7], [kept[n] for n in names])
        logits, cache = m.run_with_cache(x, names=names, detach=False)
        got = torch.autograd.grad(logits[1, -1, 7], [cache[n] for n in names])
    for n, a, b in zip(names, got, ref):
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-6), n
    with torch.no_grad(), pytest.warns(UserWarning, match="gradients are off"):  # the cache is only observed:
        assert torch.equal(m.run_with_cache(x, names=names, detach=False)[0], m(x))  # the output bit for bit
    with torch.enable_grad():
        out, _ = m.run_with_cache(x, names="layers.1.hook_resid_post", detach=False)
    assert torch.equal(out.detach(), m(x))


@pytest.mark.parametrize("attn_impl", ["absorb", "naive"])
def test_an_in_place_edit_of_the_queries_works_with_gradients_on(attn_impl):
    """q_nope was one of split's views: with gradients on (a model outside torch.no_grad, as for
    attribution) a hook's in-place edit failed with torch's 'Output 0 of SplitWithSizes is a view
    and is being modified inplace' (a tour). It now equals the same edit as a replacement."""
    m = random_model("tiny", seed=4, attn_impl=attn_impl)
    x = torch.randint(0, 512, (2, 5))
    name = "layers.1.attn.hook_q_nope"
    with torch.enable_grad():
        with m.hooks([(name, lambda t, hook: (t.mul_(0.5), None)[1])]):
            in_place = m(x)
        in_place[0, -1, 3].backward()
        with m.hooks([(name, lambda t, hook: t * 0.5)]):
            copied = m(x)
    assert torch.allclose(in_place, copied, atol=1e-6) and not torch.allclose(copied, m(x))


def test_run_with_hooks_is_one_pass_with_the_hooks_attached():
    """TransformerLens's model.run_with_hooks(tokens, fwd_hooks=[...]) was an AttributeError (a tour):
    it is `with m.hooks(fwd_hooks): m(...)`, forward's arguments passed on, the hooks gone after."""
    m = random_model("tiny")
    tok = torch.tensor([[0, 5, 7, 9]])
    with torch.no_grad():
        plain = m(tok)
        scaled = m.run_with_hooks(tok, fwd_hooks=[("layers.1.hook_resid_post", lambda t, hook: t * 2)])
        with m.hooks([("layers.1.hook_resid_post", lambda t, hook: t * 2)]):
            assert torch.equal(scaled, m(tok))
        assert not torch.equal(scaled, plain)
        assert torch.equal(m(tok), plain)  # detached after the pass
        at = torch.tensor([[3]])  # forward's keywords reach it
        last = m.run_with_hooks(tok, logits_at=at, fwd_hooks=[("layers.1.hook_resid_post", lambda t, hook: t * 2)])
        with m.hooks([("layers.1.hook_resid_post", lambda t, hook: t * 2)]):
            assert last.shape == (1, 1, m.args.vocab_size) and torch.equal(last, m(tok, logits_at=at))
        # names from a generator (read twice inside: empty the second time, "matches no hook point")
        names = (f"layers.{i}.hook_resid_post" for i in (1,))
        assert torch.equal(m.run_with_hooks(tok, fwd_hooks=[(names, lambda t, hook: t * 2)]), scaled)
    with pytest.raises(model.HookError, match=r"run_with_hooks takes no bwd_hooks: .* detach=False"):
        m.run_with_hooks(tok, bwd_hooks=[("hook_embed", lambda g, hook: None)])
    # a hook on a point this forward does not reach ran never, silently: warned, as run_with_cache does
    mtp_edit = [("mtp.0.hook_in", lambda t, hook: t * 0), ("layers.1.hook_resid_post", lambda t, hook: None)]
    with pytest.warns(UserWarning, match=r"run_with_hooks: 1 of the 2 hook points named were not reached .*"
                                         r"\(e\.g\. mtp\.0\.hook_in\): the MTP module runs only with mtp=True"):
        m.run_with_hooks(tok, fwd_hooks=mtp_edit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reached: no warning
        m.run_with_hooks(tok, mtp=True, fwd_hooks=mtp_edit)
    assert m.reset_hooks() == 0  # the observer is gone with the hooks


def test_the_routers_choice_has_no_gradient_its_weights_have():
    """README, "Hook points": with run_with_cache(detach=False) a logit's gradient reaches the router
    through hook_topk_weights, hook_scores and hook_logits, never through the selection scores (top-k's
    ids: piecewise constant) or the integer ids. Pinned: a researcher's attribution over every router
    point met torch's 'not used in the graph' there, unexplained (a tour)."""
    m = random_model("tiny")
    gate = "layers.1.ffn.gate."
    logits, cache = m.run_with_cache(torch.tensor([[0, 5, 7, 9]]), names=f"{gate}*", detach=False)
    points = ("hook_topk_weights", "hook_scores", "hook_logits", "hook_select_scores", "hook_group_scores",
              "hook_allowed_scores")
    weights, scores, router_logits, select, groups, allowed = torch.autograd.grad(
        logits[0, -1, 3], [cache[gate + n] for n in points], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in (weights, scores, router_logits))
    assert select is None and groups is None and allowed is None
    assert not cache[gate + "hook_topk_ids"].requires_grad and not cache[gate + "hook_topk_ids"].is_floating_point()


def test_gradients_of_cached_activations_with_the_weights_held_still():
    """m.requires_grad_(False) (weights held still, no parameter gradients to store) left every
    activation without a graph: run_with_cache(detach=False) cached tensors that did not require grad
    and autograd.grad raised 'element 0 of tensors does not require grad' (a tour). The same
    gradients as with the weights free."""
    m = random_model("tiny")
    tok, names = torch.tensor([[0, 5, 7, 9]]), ["layers.1.hook_resid_pre", "layers.1.attn.hook_pattern",
                                                "layers.2.ffn.gate.hook_topk_weights"]

    def grads():
        logits, cache = m.run_with_cache(tok, names=names, detach=False)
        return torch.autograd.grad(logits[0, -1, 3], [cache[n] for n in names])

    free = grads()
    m.requires_grad_(False)
    held = grads()
    for n, a, b in zip(names, free, held):
        assert b.abs().sum() > 0 and torch.equal(a, b), n
    assert all(p.grad is None for p in m.parameters())
    # gradients off: nothing made to require grad, and a warning that says why (detach=False asked for
    # a graph, and autograd.grad failed later with torch's 'does not require grad')
    with torch.no_grad(), pytest.warns(UserWarning, match=r"run_with_cache\(detach=False\) under torch\.no_grad\(\)"):
        _, cache = m.run_with_cache(tok, names=names, detach=False)
    assert not any(t.requires_grad for t in cache.values())


@pytest.mark.parametrize("point", ["hook_topk_weights", "hook_scores", "hook_logits"])
def test_a_router_point_alone_gives_its_gradient_with_the_weights_held_still(point):
    """With the weights held still and a router point the only one cached (detach=False), the routing
    weights carried the only gradient of the MoE's inputs: the experts took their in-place inference
    path and torch.mm(out=) refused ('don't support automatic differentiation'; a tour). The gradient
    is the one the weights free give."""
    m = random_model("tiny")
    tok, name = torch.tensor([[0, 5, 7, 9, 11, 2]]), f"layers.2.ffn.gate.{point}"

    def grad():
        logits, cache = m.run_with_cache(tok, names=name, detach=False)
        return torch.autograd.grad(logits[0, -1, 3], cache[name])[0]

    free = grad()
    m.requires_grad_(False)
    held = grad()
    assert held.abs().sum() > 0 and torch.equal(free, held)


def test_a_cache_stacks_the_points_a_glob_picks():
    """cache.stack(glob), TransformerLens's stack_activation: the per-layer loop a logit lens or a
    per-layer patching plot starts with. Forward order, a new first dimension; points of two shapes
    (the MTP block's S-1 positions) and points not cached are one-line HookErrors."""
    m = random_model("tiny")
    _, cache = m.run_with_cache(torch.tensor([[0, 5, 7, 9], [0, 3, 2, 1]]), mtp=True)
    resid = cache.stack("layers.*.hook_resid_post")
    assert resid.shape == (3, 2, 4, m.args.dim)
    assert all(torch.equal(resid[i], cache[f"layers.{i}.hook_resid_post"]) for i in range(3))
    ids = cache.stack("layers.*.ffn.gate.hook_topk_ids")  # the MoE layers only: 1 and 2
    assert torch.equal(ids, torch.stack([cache[f"layers.{i}.ffn.gate.hook_topk_ids"] for i in (1, 2)]))
    assert torch.equal(cache.stack(["hook_final", "hook_embed"])[0], cache["hook_embed"])  # forward order
    with pytest.raises(model.HookError, match=r"^cache\.stack\('\*\.hook_resid_post'\): the points it picks differ in "
                                              r"shape \(\(2, 3, 64\) and \(2, 4, 64\)\)"):
        cache.stack("*.hook_resid_post")  # the MTP block's too
    with pytest.raises(model.HookError, match=r"hook_pattern is opt-in"):
        cache.stack("layers.*.attn.hook_pattern")
    with pytest.raises(model.HookError, match=r"^cache\.stack\(\[\]\): names no hook point to stack$"):
        cache.stack([])  # a list built by a filter that kept nothing


def test_run_with_cache_takes_fwd_hooks_and_caches_what_they_left():
    """The activations of a hooked pass (an ablation, a patch) were a `with m.hooks(...)` around
    run_with_cache: its fwd_hooks= was forward's 'unexpected keyword argument', and run_with_hooks(names=)
    likewise. run_with_cache attaches them before its own, so the cache holds what they left."""
    m = random_model("tiny", seed=3)
    x = torch.randint(0, 512, (1, 6))
    with torch.no_grad():
        _, plain = m.run_with_cache(x, names="layers.*.ffn.gate.hook_topk_ids")
    banned = int(plain.stack("layers.*.ffn.gate.hook_topk_ids")[0, 0, 0])  # chosen unhooked

    def ban(s, hook):
        return s.index_fill(-1, torch.tensor([banned]), float("-inf"))

    hooks = [("layers.*.ffn.gate.hook_select_scores", ban)]
    with torch.no_grad():
        out, cache = m.run_with_cache(x, names="layers.*.ffn.gate.hook_topk_ids", fwd_hooks=hooks)
        assert torch.equal(out, m.run_with_hooks(x, fwd_hooks=hooks))
        with m.hooks(hooks):
            _, scoped = m.run_with_cache(x, names="layers.*.ffn.gate.hook_topk_ids")
    ids = cache.stack("layers.*.ffn.gate.hook_topk_ids")
    assert torch.equal(ids, scoped.stack("layers.*.ffn.gate.hook_topk_ids")) and not (ids == banned).any()
    assert all(not p.active for p in m.hook_points.values())  # detached after
    with pytest.raises(model.HookError, match=r"^run_with_cache takes a list of \(name, fn\) pairs; got one pair"):
        m.run_with_cache(x, fwd_hooks=hooks[0])
    with pytest.raises(model.HookError, match=r"^run_with_hooks caches nothing, so takes no names=: run_with_cache"):
        m.run_with_hooks(x, fwd_hooks=hooks, names="hook_embed")
    # a hook on a point the pass does not reach is warned of, at the caller's line
    with pytest.warns(UserWarning, match=r"^run_with_cache: 1 of the 1 hook points named were not reached") as got:
        m.run_with_cache(x, names="hook_embed", fwd_hooks=[("mtp.0.hook_in", lambda t, hook: None)])
    assert got[0].filename == __file__
    with pytest.warns(UserWarning, match=r"^run_with_hooks: 1 of the 1 hook points") as got:
        m.run_with_hooks(x, fwd_hooks=[("mtp.0.hook_in", lambda t, hook: None)])
    assert got[0].filename == __file__
