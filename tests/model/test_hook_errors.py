"""Hook errors a user meets: a mistyped name (the closest suggested), a hook that raises or returns
another shape (named with its hook point), a cache asked for what it lacks (why), TransformerLens's
spellings, and a hook that leaves too few experts to route to."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import model
from helpers import random_model


def test_a_mistyped_hook_name_suggests_the_closest():
    """A typo, or TransformerLens's `blocks.` for our `layers.`, named the point with no hint of the
    right one: a researcher searched hook_names() by hand (a tour). The closest name is suggested."""
    m = random_model("tiny")
    tok = torch.zeros(1, 2, dtype=torch.long)
    for wrong, right in [("layers.1.hook_resid_psot", "layers.1.hook_resid_post"),
                         ("blocks.1.hook_resid_post", "layers.1.hook_resid_post"),
                         ("layers.2.ffn.gate.hook_topk_idx", "layers.2.ffn.gate.hook_topk_ids")]:
        with pytest.raises(model.HookError, match=rf"no hook point named '{wrong}' \(did you mean '{right}'\?\)"):
            m.run_with_cache(tok, names=wrong)
        with pytest.raises(model.HookError, match=rf"did you mean '{right}'\?"):
            m.add_hook(wrong, lambda t, hook: None)
    with pytest.raises(model.HookError, match=r"did you mean 'layers\.\*\.ffn\.gate\.hook_topk_ids'\?"):
        with m.hooks([("layers.*.ffn.gate.hook_topk_idz", lambda t, hook: None)]):
            pass
    with pytest.raises(model.HookError, match=r"no hook point named 'xyz' \(see"):  # nothing close: no guess
        m.run_with_cache(tok, names="xyz")
    # a block past the model's: the blocks it has, not the nearest name (it pointed at layers.2)
    with pytest.raises(model.HookError, match=r"no hook point named 'layers\.9\.hook_resid_post' \(this model has "
                                              r"layers\.0 to layers\.2\)"):
        m.run_with_cache(tok, names="layers.9.hook_resid_post")




def test_the_heads_and_final_norms_names_from_other_toolkits_say_what_this_model_has():
    """'hook_unembed' (the head, as TransformerLens calls it) was 'did you mean hook_embed?', the other end
    of the model: the head has no hook point, and the message says where its input and logits are."""
    m = random_model("tiny")
    tok = torch.zeros(1, 2, dtype=torch.long)
    head = (r" \(the head has no hook point: its input is 'hook_final', after the final norm, and its logits are "
            r"what forward returns; the MTP module's are 'mtp\.0\.hook_logits'\) \(see model\.hook_names\(\)\)$")
    for name in ("hook_unembed", "unembed.hook_out", "hook_logits", "lm_head"):
        with pytest.raises(model.HookError, match=rf"^no hook point named '{re.escape(name)}'{head}"):
            m.add_hook(name, lambda t, hook: None)
        with pytest.raises(model.HookError, match=r"the head has no hook point: its input is 'hook_final'"):
            m.run_with_cache(tok, names=name)
    without_mtp = random_model("tiny", n_mtp_layers=0)
    with pytest.raises(model.HookError, match=r"and its logits are what forward returns\) \(see"):
        without_mtp.add_hook("hook_unembed", lambda t, hook: None)
    with pytest.raises(model.HookError, match=r"no hook point named 'ln_final\.hook_normalized' \(did you mean "
                                              r"'hook_final'\? the final norm's output\)"):
        m.add_hook("ln_final.hook_normalized", lambda t, hook: None)
    # TransformerLens's positional embedding: RoPE is none, and the token embedding is not it
    for name in ("hook_pos_embed", "pos_embed.hook_out"):
        with pytest.raises(model.HookError, match=rf"^no hook point named '{re.escape(name)}' \(this model has no "
                                                  r"positional embedding: RoPE rotates the queries and keys in each "
                                                  r"attention, attn\.hook_q_pe and attn\.hook_k_pe; 'hook_embed' is "
                                                  r"the token embedding alone\) \(see model\.hook_names\(\)\)$"):
            m.add_hook(name, lambda t, hook: None)
    with pytest.raises(model.HookError, match=r"\(did you mean 'hook_embed'\?\)"):  # the control: a typo of it
        m.add_hook("hook_embd", lambda t, hook: None)
    _, cache = m.run_with_cache(tok)
    with pytest.raises(model.HookError, match=r"no hook point named 'hook_unembed' \(the head has no hook point"):
        cache["hook_unembed"]

def test_a_point_another_kind_of_block_has_names_the_blocks_that_have_it():
    """The router of the dense layer 0 was 'did you mean layers.2.ffn.gate.hook_scores?', a point of
    another layer offered as the typo's fix, and a dense hidden state asked of an MoE layer likewise
    (a tour): the blocks that have the point are named, and why this one has not."""
    m = random_model("tiny")  # layers.0 dense, layers.1 and 2 MoE
    tok = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(model.HookError, match=r"no hook point named 'layers\.0\.ffn\.gate\.hook_scores' \(layers\.0 "
                                              r"has no ffn\.gate\.hook_scores; layers\.1 to layers\.2 have it: a dense "
                                              r"layer has no router or experts\)"):
        m.run_with_cache(tok, names="layers.0.ffn.gate.hook_scores")
    with pytest.raises(model.HookError, match=r"layers\.1 has no ffn\.hook_hidden; layers\.0 has it: an MoE layer's is "
                                              r"its shared experts', ffn\.shared_experts\.hook_hidden"):
        m.add_hook("layers.1.ffn.hook_hidden", lambda t, hook: None)
    _, cache = m.run_with_cache(tok)
    with pytest.raises(model.HookError, match=r"layers\.0 has no ffn\.experts\.hook_expert_out; layers\.1 to "
                                              r"layers\.2"):
        cache["layers.0.ffn.experts.hook_expert_out"]
    with pytest.raises(model.HookError, match=r"did you mean 'layers\.2\.ffn\.gate\.hook_scores'"):  # a typo still
        m.run_with_cache(tok, names="layers.2.ffn.gate.hook_scorez")


def test_a_cache_asked_by_a_key_that_is_not_a_name_says_so():
    """cache["resid_pre", 2], TransformerLens's key, or cache[3] was a TypeError from inside re
    ('expected string or bytes-like object, got 'tuple'') while the cache looked for a close name
    (a tour): a one-line HookError, naming the hook point a TransformerLens key means."""
    m = random_model("tiny")
    _, cache = m.run_with_cache(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(model.HookError, match=r"^cache\[\('resid_pre', 2\)\]: a cache's keys are hook point names "
                                              r"\(str\); TransformerLens's cache\[\('resid_pre', 2\)\] is "
                                              r"cache\['layers\.2\.hook_resid_pre'\] here$"):
        cache["resid_pre", 2]
    with pytest.raises(model.HookError, match=r"is cache\['layers\.1\.attn\.hook_pattern'\] here"):
        cache["pattern", 1]
    with pytest.raises(model.HookError, match=r"is cache\['layers\.2\.hook_resid_pre'\] here"):
        cache["resid_pre", np.int64(2)]  # a layer number from numpy
    with pytest.raises(model.HookError, match=r"^cache\[3\]: a cache's keys are hook point names \(str\) \(see"):
        cache[3]

def test_a_hook_that_raises_is_named_with_its_hook_point():
    """A hook's own error named its line but not the hook point that ran it (a glob attaches one fn
    to many), and a hook written fn(t) failed inside the forward with '<lambda>() takes 1 positional
    argument but 2 were given' (a tour). The error keeps its type (a hook may raise to end a pass
    early), with a note naming the point; a wrong signature is refused when attached."""
    m = random_model("tiny")
    x = torch.zeros(1, 3, dtype=torch.long)

    def bad(t, hook):
        if hook.name == "layers.2.hook_resid_pre":
            raise RuntimeError("my bug")

    with pytest.raises(RuntimeError, match="my bug") as err:
        with m.hooks([("layers.*.hook_resid_pre", bad)]):
            m(x)
    assert err.value.__notes__ == [f"(raised by the hook {bad.__qualname__} on layers.2.hook_resid_pre)"]
    with pytest.raises(model.HookError, match=r"the hook .*<lambda> for layers\.1\.attn\.hook_z cannot be called as "
                                              r"fn\(tensor, hook\) \(its signature: \(t\)\)"):
        with m.hooks([("layers.1.attn.hook_z", lambda t: t)]):
            m(x)
    with pytest.raises(model.HookError, match="cannot be called as fn"):
        m.add_hook("hook_embed", lambda: None)
    assert m.reset_hooks() == 0
    import functools

    with m.hooks([("hook_embed", functools.partial(lambda t, hook, k: None, k=1))]):  # the controls
        m(x)
    m.add_hook("hook_embed", lambda *a: None)
    m(x)


def test_a_name_the_cache_lacks_says_why(tmp_path):
    """cache['layers.1.attn.hook_pattern'] after a run_with_cache without names was KeyError with the
    name alone, where TransformerLens caches the pattern by default (a tour); the cache now says why
    a name is missing. It is still a dict (HookError is a KeyError; get() and `in` as before)."""
    m = random_model("tiny")
    x = torch.zeros(1, 3, dtype=torch.long)
    _, cache = m.run_with_cache(x)
    with pytest.raises(model.HookError, match=r"^cache\['layers\.1\.attn\.hook_pattern'\]: not cached: .* is opt-in: "
                                              r"run_with_cache caches it only where names= names it"):
        cache["layers.1.attn.hook_pattern"]
    with pytest.raises(model.HookError, match=r"not cached: there is no hook point named 'layers\.1\.hook_resid_psot' "
                                              r"\(did you mean 'layers\.1\.hook_resid_post'\?\)"):
        cache["layers.1.hook_resid_psot"]
    with pytest.raises(KeyError, match=r"mtp\.0\.hook_in was not reached by this forward"):
        cache["mtp.0.hook_in"]
    _, named = m.run_with_cache(x, names="hook_embed")
    with pytest.raises(model.HookError, match="hook_final was not among the names= this cache was made with"):
        named["hook_final"]
    assert isinstance(named, dict) and named.get("hook_final") is None and "hook_final" not in named
    torch.save(named, tmp_path / "c.pt")  # saved as an OrderedDict, which a weights-only load reads
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(back) == ["hook_embed"] and torch.equal(back["hook_embed"], named["hook_embed"])
    import copy

    for c in (copy.copy(named), named.copy()):  # a copy keeps the reasons (copy.copy gave an OrderedDict)
        assert list(c) == ["hook_embed"] and c["hook_embed"] is named["hook_embed"]
        with pytest.raises(model.HookError, match="hook_final was not among the names="):
            c["hook_final"]


def test_transformerlens_names_filter_is_named():
    """run_with_cache(x, names_filter=...), TransformerLens's spelling, reached the forward and failed
    there with "unexpected keyword argument 'names_filter'" (a tour)."""
    m = random_model("tiny")
    with pytest.raises(model.HookError, match=r"run_with_cache takes names=, not TransformerLens's names_filter="):
        m.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter="hook_embed")


def test_a_cache_device_this_machine_lacks_is_refused_before_the_forward():
    """run_with_cache(device="gpu") was torch's list of its 20 device types, and device="cuda" on a machine
    without one torch's 'Torch not compiled with CUDA enabled' (an AssertionError), each from inside the
    first hook that copied to it, mid-forward (a bug hunt): one InputError, before any hook runs."""
    m = random_model("tiny")
    tok = torch.zeros(1, 2, dtype=torch.long)
    ran = []
    m.add_hook("hook_embed", lambda t, hook: ran.append(hook.name))
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        for device, msg in [("gpu", r"^run_with_cache: device='gpu': expected 'cpu', 'cuda', 'cuda:N' or a torch"),
                            (5.0, r"^run_with_cache: device=5\.0: expected 'cpu', 'cuda'"),
                            (f"cuda:{cuda}", rf"^run_with_cache: device='cuda:{cuda}': this machine's torch sees "
                                             rf"{cuda} CUDA device\(s\)$")]:
            with pytest.raises(model.InputError, match=msg):
                m.run_with_cache(tok, names="hook_embed", device=device)
        assert ran == []  # refused before the forward
        _, cache = m.run_with_cache(tok, names="hook_embed", device="cpu")  # the control
        assert cache["hook_embed"].device.type == "cpu" and ran == ["hook_embed"]
    finally:
        m.reset_hooks()


def test_a_replacement_of_another_shape_names_the_hook():
    """A hook that returns a tensor of another shape, or something not a tensor, fails at the hook
    with its name, not blocks later inside RoPE or a GEMM; a same-shape one is taken (the control)."""
    m = random_model("tiny")
    x = torch.zeros(1, 4, dtype=torch.long)
    name = "layers.1.hook_resid_pre"
    with pytest.raises(ValueError, match=rf"the hook on {name} returned torch.float32 of shape \(1, 2, 64\) on cpu; .* "
                                         r"torch.float32 \(1, 4, 64\)"):
        with m.hooks([(name, lambda t, hook: t[:, :2])]):
            m(x)
    with pytest.raises(ValueError, match=f"the hook on {name} returned list"):
        with m.hooks([(name, lambda t, hook: [t])]):
            m(x)
    with pytest.raises(ValueError, match=f"the hook on {name} returned torch.float64 of shape"):
        with m.hooks([(name, lambda t, hook: t.double())]):
            m(x)
    ids = "layers.1.ffn.gate.hook_topk_ids"
    with pytest.raises(ValueError, match=f"the hook on {ids} returned torch.float32"):
        with m.hooks([(ids, lambda t, hook: t.float())]):
            m(x)
    n_experts = m.args.n_routed_experts
    for bad in (n_experts, -1):  # an expert id out of range fails at the hook, not in a gather later
        with pytest.raises(ValueError, match=rf"the hook on {ids} returned index {bad}; .* \[0, {n_experts}\)"):
            with m.hooks([(ids, lambda t, hook: torch.full_like(t, bad))]):
                m(x)
        # the same edit in place was torch's "index out of bounds" from the gather, naming no hook (a review);
        # it is refused at the hook, as the replacement is (on a GPU before the gather's device-side assert)
        with pytest.raises(ValueError, match=rf"the hook on {ids} left, edited in place, index {bad}; .* \[0, {n_experts}\)"):
            with m.hooks([(ids, lambda t, hook: (t.fill_(bad), None)[1])]):
                m(x)
    # an expert given twice to a token was summed twice, its weight doubled, with no error (a tour)
    k = m.args.n_activated_experts
    twice = lambda t, hook: torch.cat([t[:, :1], t[:, :-1]], dim=1)  # noqa: E731  slot 0's expert in slot 1 too
    with pytest.raises(ValueError, match=rf"the hook on {ids} returned index \d+ twice in row 0 \(\[(\d+), \1, .*\]; "
                                         rf"{x.numel()} row\(s\) so\): a token's experts must differ"):
        with m.hooks([(ids, twice)]):
            m(x)
    # the same edit in place was taken, the expert summed twice with no error (a tour), under
    # inference_mode too (its tensors keep no version counter to tell an edit by)
    for mode in (torch.no_grad, torch.inference_mode):
        with pytest.raises(ValueError, match=rf"the hook on {ids} left, edited in place, index \d+ twice in row 0"):
            with mode(), m.hooks([(ids, lambda t, hook: (t[:, 1].copy_(t[:, 0]), None)[1])]):
                m(x)
    last_k = torch.arange(n_experts - k, n_experts)
    with m.hooks([(ids, lambda t, hook: last_k.expand_as(t).clone())]):  # in range, distinct: taken
        last = m(x)
    with m.hooks([(name, lambda t, hook: t * 0)]):
        zeroed = m(x)
    assert not torch.equal(zeroed, m(x))  # the replacement took effect
    assert not torch.equal(last, m(x))
    with pytest.raises(ValueError, match=rf"the hook on {name} returned torch.float32 of shape \(1, 4, 64\) on meta; "
                                         r".* on cpu"):  # another device (a CPU cache patched into a GPU model)
        with m.hooks([(name, lambda t, hook: torch.empty_like(t, device="meta"))]):
            m(x)


@pytest.mark.parametrize("groups", [4, 1])
def test_a_hook_that_leaves_too_few_experts_is_refused(groups):
    """Masking every expert but a few (-inf selection scores) routed every token to experts the hook had
    excluded, with real weights: top-k picked among -inf ties (with groups, a group with one expert left
    ranks -inf too). A researcher's tour found it; the mask is now refused, naming the router."""
    m = random_model("tiny", seed=0, n_expert_groups=groups, n_limited_groups=min(2, groups))
    K, E = m.args.n_activated_experts, m.args.n_routed_experts
    toks = torch.randint(0, m.args.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    g = "layers.1.ffn.gate."

    def keep(experts):
        mask = torch.full((E,), float("-inf"))
        mask[experts] = 0.0
        return lambda s, hook: s + mask

    with pytest.raises(ValueError, match=rf"^layers\.1\.ffn\.gate: the hooks on the router's scores leave 12 token\(s\) "
                                         rf"fewer than the {K} experts .*token 0: [12] allowed"):
        with m.hooks([(g + "hook_select_scores", keep([5, 9]))]):
            m(toks)
    with pytest.raises(ValueError, match="fewer than the"):  # NaN is no score either
        with m.hooks([(g + "hook_scores", lambda s, hook: torch.full_like(s, float("nan")))]):
            m(toks)
    # the control: a mask that leaves enough experts routes only to them (with groups: 2 in each of 2 groups)
    allowed = [0, 1, 4, 5] if groups > 1 else [3, 7, 8, 12]
    with m.hooks([(g + "hook_select_scores", keep(allowed))]):
        _, c = m.run_with_cache(toks, names=g + "hook_topk_ids")
    assert set(c[g + "hook_topk_ids"].flatten().tolist()) <= set(allowed)


def test_hooks_given_no_list_of_pairs_say_what_to_write():
    """hooks(None) and run_with_hooks(fwd_hooks=fn) were TypeErrors from the loop over them ('NoneType' object is
    not iterable; a bug hunt): one HookError each, with what to write."""
    m = random_model("tiny", seed=0)
    fn = lambda t, hook: None  # noqa: E731
    for bad in (None, fn, "hook_embed", 3):
        with pytest.raises(model.HookError, match=r"^hooks\(\) takes a list of \(name, fn\) pairs; got .*: write "
                                                  r"hooks\(\[\(name, fn\)\]\)$"):
            with m.hooks(bad):
                pass
        with pytest.raises(model.HookError, match=r"^run_with_hooks takes a list of \(name, fn\) pairs; got .*: "
                                                  r"write fwd_hooks=\[\(name, fn\)\]$"):
            m.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=bad)
    with m.hooks([("hook_embed", fn)]):  # the control: a list of pairs
        m(torch.tensor([[1, 2]]))


def test_transformerlens_names_of_points_named_otherwise_here_say_which():
    """TransformerLens's names of points this model names otherwise were pointed at other points, the
    closest spelling: `mlp.hook_post` (the MLP's hidden state) at 'layers.0.hook_resid_post', `attn.hook_q` at
    'attn.hook_z'. Each names this model's (both of MLA's parts), and why where a block has none."""
    m = random_model("tiny")
    tok = torch.zeros(1, 2, dtype=torch.long)
    _, cache = m.run_with_cache(tok)
    cases = [("blocks.0.mlp.hook_post", r"is 'layers\.0\.ffn\.hook_hidden' here\)"),
             ("blocks.2.hook_mlp_out", r"is 'layers\.2\.hook_ffn_out' here\)"),
             ("layers.1.hook_mlp_in", r"is 'layers\.1\.hook_ffn_in' here\)"),
             ("blocks.1.ln2.hook_normalized", r"is 'layers\.1\.hook_ffn_in' here\)"),
             ("layers.1.attn.hook_q", r"is 'layers\.1\.attn\.hook_q_nope' and 'layers\.1\.attn\.hook_q_pe' here: MLA's"),
             ("blocks.1.attn.hook_k", r"is 'layers\.1\.attn\.hook_c_kv' and 'layers\.1\.attn\.hook_k_pe' here: MLA's"),
             ("layers.1.attn.hook_attn_scores", r"is 'layers\.1\.attn\.hook_pattern' here: the probabilities"),
             # an MoE layer has no dense hidden state; a block past the model's
             ("blocks.1.mlp.hook_post", r"would be 'layers\.1\.ffn\.hook_hidden': layers\.1 has no ffn\.hook_hidden; "
                                        r"layers\.0 has it: an MoE layer's is its shared experts'"),
             ("blocks.9.hook_mlp_out", r"would be 'layers\.9\.hook_ffn_out': this model has layers\.0 to layers\.2\)")]
    for name, says in cases:
        told = rf"no hook point named '{re.escape(name)}' \(TransformerLens's '{re.escape(name)}' " + says
        with pytest.raises(model.HookError, match=told):
            cache[name]
        with pytest.raises(model.HookError, match=told):
            m.add_hook(name, lambda t, hook: None)
    with pytest.raises(model.HookError, match=r"names='blocks\.\*\.hook_mlp_out' matches no hook point \(Transformer"
                                              r"Lens's 'blocks\.\*\.hook_mlp_out' is 'layers\.\*\.hook_ffn_out' here\)"):
        m.run_with_cache(tok, names="blocks.*.hook_mlp_out")
