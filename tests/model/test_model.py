"""Forward-pass semantics: KV cache, chunked prefill, padding, MTP, autograd, both attention paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model
from model import ConfigError, Transformer
from helpers import random_model
from helpers.models import random_tokens as tokens, rel

ATOL = 1e-5


@pytest.fixture(params=["absorb", "naive"])
def impl_model(request):
    return random_model("tiny", seed=1, attn_impl=request.param)


@torch.no_grad()
def test_absorb_equals_naive():
    m = random_model("tiny", seed=3)
    x = tokens(3, 40)
    a = m(x)
    m.attn_impl = "naive"
    b = m(x)
    print(f"absorb vs naive: max rel diff {rel(a, b):.2e}")
    assert rel(a, b) < ATOL


@torch.no_grad()
def test_absorb_latent_and_expanded_forms_agree():
    """Absorb picks, per call, latent-space attention (decode) or expanded keys (prefill); forcing
    the latent form everywhere gives the same logits, in a full forward, a prefill + decode and a
    chunked prefill. The cost rule itself: one query against many keys stays latent, a prefill expands."""
    m = random_model("tiny", seed=4)
    attn = m.layers[0].attn
    assert not attn._expand_is_cheaper(1, 500) and attn._expand_is_cheaper(64, 64)
    x = tokens(2, 40, seed=5)

    def run():
        full = m(x)
        stepped = [m(x[:, :17], use_cache=True)] + [m(x[:, i:i + 1], start_pos=i) for i in range(17, 21)]
        stepped.append(m(x[:, 21:], start_pos=21))  # a chunk at start_pos > 0
        return full, torch.cat(stepped, 1)

    auto = run()
    for a in m.attention_modules():
        a.latent_attention = "always"
    latent = run()
    for a, b in zip(auto, latent):
        assert rel(a, b) < ATOL
    assert rel(auto[0], auto[1]) < ATOL


@torch.no_grad()
@pytest.mark.parametrize("impl", ["absorb", "naive"])
def test_the_query_assembled_in_place_changes_nothing_hooks_see(impl):
    """The expanded forms write the RoPE'd q_pe into the query projection rather than concatenating
    (MLA._query): bit-equal to the concatenation, which a hook that replaces q_nope by a copy forces,
    and the cached q_nope and q_pe hold the same values either way. A hook's replacement still
    reaches the attention (the control: doubling q_nope changes the logits)."""
    m = random_model("tiny", seed=6, attn_impl=impl)
    x = tokens(2, 24, seed=7)
    names = ["layers.*.attn.hook_q_nope", "layers.*.attn.hook_q_pe"]
    fast, c_fast = m.run_with_cache(x, names=names)
    with m.hooks([("layers.*.attn.hook_q_nope", lambda t, hook: t.clone())]):
        joined, c_joined = m.run_with_cache(x, names=names)
    assert torch.equal(fast, joined)
    assert set(c_fast) == set(c_joined) and len(c_fast) == 2 * len(m.layers)
    for name in c_fast:
        assert torch.equal(c_fast[name], c_joined[name]), name
    with m.hooks([("layers.*.attn.hook_q_nope", lambda t, hook: t * 2)]):
        assert rel(m(x), fast) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("nope,rope,v_dim", [(16, 8, 16), (16, 8, 8), (8, 8, 24)])
@pytest.mark.parametrize("masked", [False, True])
def test_keys_and_values_in_one_tensor_equal_zero_padded_values(nope, rope, v_dim, masked):
    """MLA._attend_expanded keeps keys and values in one [k_nope | k_pe | v] tensor, the value's leading
    dims standing in for zero padding: bit-equal to concatenated keys and zero-padded values
    (_attend_kv), with V below, equal to and above N (and above N+R, where nothing is padded), with
    and without a mask, and on the materialised path (a hook on hook_pattern that returns a copy: a
    hook that only observes leaves the output the fused kernel's, a review)."""
    import dataclasses

    from model.mla import MLA

    args = dataclasses.replace(model.ModelArgs.from_name("tiny"), qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                               v_head_dim=v_dim)
    attn, g = MLA(args, device="meta"), torch.Generator().manual_seed(0)
    B, S, H = 2, 12, args.n_heads
    query = torch.randn(B, S, H, nope + rope, generator=g)
    kvb, k_pe = torch.randn(B, S, H, nope + v_dim, generator=g), torch.randn(B, S, rope, generator=g)
    mask = torch.rand(B, 1, S, S, generator=g).lt(0.7) | torch.eye(S, dtype=torch.bool) if masked else None
    k = torch.cat([kvb[..., :nope], k_pe[:, :, None].expand(-1, -1, H, -1)], dim=-1)
    for pattern_hooked in (False, True):
        handle = attn.hook_pattern.add(lambda t, hook: t.clone()) if pattern_hooked else None
        got = attn._attend_expanded(query, kvb, k_pe, mask)
        want = attn._attend_kv(query, k, kvb[..., nope:], mask)
        if handle:
            handle.remove()
        assert got.shape == (B, S, H, v_dim)
        assert torch.equal(got, want), pattern_hooked


@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(impl_model):
    m, x = impl_model, tokens(2, 24)
    full = m(x)
    out = [m(x[:, :10], use_cache=True)]
    for i in range(10, 24):
        out.append(m(x[:, i : i + 1], start_pos=i))
    stepped = torch.cat(out, dim=1)
    assert rel(stepped, full) < ATOL


@torch.no_grad()
def test_chunked_prefill_equals_full_forward(impl_model):
    m, x = impl_model, tokens(2, 30, seed=1)
    full = m(x)
    parts, start = [], 0
    for size in (7, 11, 1, 11):
        parts.append(m(x[:, start : start + size], start_pos=start, use_cache=True))
        start += size
    assert rel(torch.cat(parts, 1), full) < ATOL


@torch.no_grad()
def test_cache_grows_beyond_initial_allocation():
    m = random_model("tiny", seed=2)
    m.setup_cache(1, 8)
    x = tokens(1, 40, seed=5)
    full = m(x)
    got = torch.cat([m(x[:, :8], use_cache=True), m(x[:, 8:], start_pos=8)], 1)
    assert m.layers[0].attn.cache_shape[1] >= 40
    assert rel(got, full) < ATOL


@torch.no_grad()
def test_padded_batch_equals_single_rows(impl_model):
    m = impl_model
    lens = [17, 9, 1]
    rows = [tokens(1, n, seed=10 + i) for i, n in enumerate(lens)]
    padded = torch.zeros(3, max(lens), dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : r.shape[1]] = r
    batched = m(padded, lengths=torch.tensor(lens))
    for i, r in enumerate(rows):
        alone = m(r)
        assert rel(batched[i, : lens[i]], alone[0]) < ATOL, f"row {i}"


@torch.no_grad()
def test_padded_prefill_then_per_row_decode(impl_model):
    """Different-length prompts in one batch, then decode with per-row start positions."""
    m = impl_model
    lens = [12, 5]
    full = [tokens(1, n + 4, seed=20 + i) for i, n in enumerate(lens)]
    padded = torch.full((2, max(lens)), 3, dtype=torch.long)
    for i, n in enumerate(lens):
        padded[i, :n] = full[i][0, :n]
    m(padded, lengths=torch.tensor(lens), use_cache=True)
    starts = torch.tensor(lens)
    steps = []
    for j in range(4):
        nxt = torch.stack([full[i][0, lens[i] + j] for i in range(2)])[:, None]
        steps.append(m(nxt, start_pos=starts + j))
    steps = torch.cat(steps, 1)
    for i, n in enumerate(lens):
        alone = m(full[i])
        assert rel(steps[i], alone[0, n:]) < ATOL, f"row {i}"


@torch.no_grad()
def test_padding_changes_nothing_but_a_wrong_length_does():
    """Negative control: telling the model a row is longer than it is lets padding leak in."""
    m = random_model("tiny", seed=4)
    r = tokens(1, 6, seed=1)
    padded = torch.cat([r, torch.full((1, 4), 7)], 1)
    alone = m(r)[0]
    # right padding is causal-invisible for the real tokens even without lengths ...
    assert rel(m(padded, lengths=torch.tensor([6]))[0, :6], alone) < ATOL
    # ... but a decode step after it must not see the padding: with lengths it does not
    m(padded, lengths=torch.tensor([6]), use_cache=True)
    nxt = tokens(1, 1, seed=2)
    good = m(nxt, start_pos=torch.tensor([6]))
    ref = m(torch.cat([r, nxt], 1))[0, -1]
    assert rel(good[0, 0], ref) < ATOL
    m(padded, use_cache=True)  # no lengths: the padding is taken as real tokens
    bad = m(nxt, start_pos=torch.tensor([10]))
    assert rel(bad[0, 0], ref) > 1e-3


@torch.no_grad()
def test_mtp_logits_predict_token_i_plus_2():
    m = random_model("tiny", seed=5)
    x = tokens(2, 16, seed=3)
    logits, mtp_logits = m(x, mtp=True)
    assert logits.shape == (2, 16, 512) and mtp_logits.shape == (2, 15, 512)
    # reference assembled by hand from the module's parts
    h = m(x, return_hidden=True)[1]
    mt = m.mtp[0]
    e = m.embed(x[:, 1:])
    z = mt.eh_proj(torch.cat([mt.enorm(e), mt.hnorm(h[:, :-1])], -1))
    # the MTP block is an ordinary causal block over positions 0..S-2
    from model.layers import rope_cos_sin
    pos = torch.arange(15)[None].expand(2, 15)
    cos, sin = rope_cos_sin(pos, m.rope_inv_freq, m.args.rope_attention_factor)
    z = mt.block(z, cos, sin, pos, None, 15, False)
    ref = m.head(mt.norm(z))
    assert rel(mtp_logits, ref) < ATOL
    # negative control: the report's order [hidden ; embedding] is a different function
    z2 = mt.eh_proj(torch.cat([mt.hnorm(h[:, :-1]), mt.enorm(e)], -1))
    swapped = m.head(mt.norm(mt.block(z2, cos, sin, pos, None, 15, False)))
    assert rel(mtp_logits, swapped) > 1e-3
    # position i of the MTP output depends on tokens up to i+1 only (causal)
    x2 = x.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 512
    _, mtp2 = m(x2, mtp=True)
    assert rel(mtp2[:, :9], mtp_logits[:, :9]) < ATOL
    assert rel(mtp2[:, 9], mtp_logits[:, 9]) > 1e-4


@torch.no_grad()
def test_mtp_padded_batch_matches_single_rows():
    m = random_model("tiny", seed=7)
    lens = [10, 6]
    rows = [tokens(1, n, seed=30 + i) for i, n in enumerate(lens)]
    padded = torch.zeros(2, 10, dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : r.shape[1]] = r
    _, mtp = m(padded, lengths=torch.tensor(lens), mtp=True)
    for i, r in enumerate(rows):
        _, alone = m(r, mtp=True)
        assert rel(mtp[i, : lens[i] - 1], alone[0]) < ATOL


def test_autograd_through_everything():
    m = random_model("tiny", seed=8)
    m.train()
    x = tokens(2, 12)
    logits, mtp_logits = m(x, mtp=True)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss = loss + 0.3 * torch.nn.functional.cross_entropy(mtp_logits[:, :-1].flatten(0, 1), x[:, 2:].flatten())
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    # experts nobody chose get no gradient, everything else must
    assert all(".experts." in n for n in no_grad), no_grad
    assert m.layers[1].ffn.gate.weight.grad.abs().sum() > 0  # gradients reach the router via the weights
    assert m.layers[1].attn.wkv_b.weight.grad.abs().sum() > 0


def test_gradient_wrt_a_hooked_activation():
    """Gradient-based attribution: d(logit)/d(latent) through a hook."""
    m = random_model("tiny", seed=9)
    x = tokens(1, 8)
    saved = {}

    def keep(t, hook):
        t.retain_grad()
        saved[hook.name] = t

    with m.hooks([("layers.1.attn.hook_c_kv", keep)]):
        logits = m(x)
    logits[0, -1, 5].backward()
    g = saved["layers.1.attn.hook_c_kv"].grad
    assert g.shape == (1, 8, m.args.kv_lora_rank) and g.abs().sum() > 0


def test_bad_forward_inputs():
    m = random_model("tiny")
    with pytest.raises(ValueError, match="2-D"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        m(torch.tensor([[1, 512]]))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, m.args.max_seq_len + 1, dtype=torch.long))
    m.reset_cache()
    with pytest.raises(ValueError, match="prefill with use_cache=True first"):
        m(torch.zeros(1, 1, dtype=torch.long), start_pos=4)
    with pytest.raises(ConfigError, match=r"^attn_impl='flash': choose one of \('absorb', 'naive'\)$"):
        m.attn_impl = "flash"  # model's own error class, as from the constructor (was a plain ValueError)
    with pytest.raises(ConfigError, match="attn_impl='flash'"):
        Transformer(m.args, attn_impl="flash", device="meta")
    # per-row lengths and starts that do not fit the batch: one line, not a broadcast or a wrong mask
    x = torch.zeros(2, 4, dtype=torch.long)
    for kw, msg in [(dict(lengths=torch.tensor([4])), r"lengths: expected 2 integer lengths \(one per row\), got shape \(1,\)"),
                    (dict(lengths=[4, 4]), "lengths: expected 2 integer lengths .* got list"),
                    (dict(lengths=torch.tensor([4.0, 4.0])), "got shape .* of torch.float32"),
                    (dict(lengths=torch.tensor([True, True])), "got shape .* of torch.bool"),  # was lengths 1
                    (dict(start_pos=torch.tensor([True, False])), "start_pos: .* of torch.bool"),
                    (dict(lengths=torch.tensor([4, 5])), r"lengths must be in \[0, 4\] .* got \[4, 5\]"),
                    (dict(lengths=torch.tensor([-1, 4])), r"lengths must be in \[0, 4\]"),
                    (dict(start_pos=torch.tensor([0, 1, 2])), "start_pos: expected an int or 2 integer starts"),
                    (dict(start_pos=-2), r"start_pos must be >= 0, got -2"),
                    (dict(start_pos=torch.tensor([0, -1])), r"start_pos must be >= 0, got \[0, -1\]")]:
        with pytest.raises(ValueError, match=msg):
            m(x, **kw)
        with pytest.raises(ValueError, match=msg):
            m(x, mtp=True, **kw)
    assert torch.equal(m(x, lengths=torch.tensor([4, 2], dtype=torch.int32))[0], m(x)[0])  # the control
    # positions for the head, and the other per-call numbers, are checked before any block runs
    for kw, msg in [(dict(logits_at=torch.tensor([[4], [0]])), r"logits_at: positions must be in \[0, 4\) .* got \[0, 4\]"),
                    (dict(logits_at=torch.tensor([[-1], [0]])), r"logits_at: positions must be in \[0, 4\)"),
                    (dict(logits_at=torch.zeros(3, 1, dtype=torch.long)), r"logits_at: expected integer positions of shape \[2, K\]"),
                    (dict(logits_at=[[1], [2]]), "logits_at: expected integer positions .* got list"),
                    (dict(logits_at=torch.tensor([[1.0], [2.0]])), "got shape \\(2, 1\\) of torch.float32"),
                    (dict(start_pos=2.5), "start_pos: expected an int or 2 integer starts .* got 2.5"),
                    (dict(start_at_layer=1.0, resid=torch.zeros(2, 4, m.args.dim)), "start_at_layer=1.0: must be an integer"),
                    (dict(start_at_layer=1, resid=torch.zeros(2, 4, m.args.dim, dtype=torch.float64)),
                     "resid: expected the model's dtype torch.float32, got torch.float64")]:
        with pytest.raises(ValueError, match=msg):
            m(x, **kw)
    assert m(x, logits_at=torch.tensor([3, 1])).shape == (2, 1, m.args.vocab_size)  # the control: one a row
    with pytest.raises(ValueError, match=r"logits_at: positions must be in \[0, 3\)"):
        h = m(x, return_hidden=True)[1]
        m.mtp_logits(h, x, logits_at=torch.tensor([[3], [0]]))
    with torch.device("meta"):
        on_meta = model.Transformer(m.args)
    with pytest.raises(ValueError, match="this model is on the meta device"):
        on_meta(x)
    # a chunk that starts past what its row's cache holds would read keys nothing wrote (zeros, or an
    # earlier prompt's): refused; right where the row ends (its length, per row) is the control
    m.reset_cache()
    m(x[:, :3], use_cache=True)
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\] start past the positions their KV cache holds \(\[3, 3\]\)"):
        m(x[:, :1], start_pos=10)
    m(x, use_cache=True, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] start past"):
        m(x[:, :1], start_pos=torch.tensor([4, 3]))
    assert m(x[:, :1], start_pos=torch.tensor([4, 2])).shape == (2, 1, m.args.vocab_size)
    # the MTP pass of a later chunk would read the cache slot of the previous chunk's last position,
    # which only the next token could fill: refused rather than wrong (it was off by ~1.6 in the logits)
    m.reset_cache()
    m(x, use_cache=True, mtp=True)
    with pytest.raises(ValueError, match="mtp=True needs start_pos=0"):
        m(x, start_pos=4, mtp=True)
    # the MTP block's own cache is tracked the same way: after the MTP pass over 4 tokens it holds
    # positions 0-2; a main prefill from 0 empties it (it held the earlier prompt's keys)
    h = m(x, return_hidden=True)[1]
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\] start past the positions their MTP block 0's KV cache"):
        m.mtp_logits(h[:, :2], x[:, :2], start_pos=5, use_cache=True)
    m(x, use_cache=True, mtp=True)
    assert m.mtp_logits(h[:, :2], x[:, :2], start_pos=3, use_cache=True).shape == (2, 1, m.args.vocab_size)
    m(x, use_cache=True)
    with pytest.raises(ValueError, match=r"MTP block 0's KV cache holds \(\[0, 0\]\)"):
        m.mtp_logits(h[:, :2], x[:, :2], start_pos=3, use_cache=True)
    with pytest.raises(ValueError, match=r"depth=1: this model has 1 MTP module\(s\), depth 0 to 0"):
        m.mtp_logits(h, x, depth=1)
    # depth from numpy or a 0-d tensor (refused) is depth 0, its cache's fill kept where depth=0 reads it
    m(x, use_cache=True)
    m.mtp_logits(h, x, use_cache=True, depth=torch.tensor(0))
    assert m.mtp_logits(h[:, :2], x[:, :2], start_pos=3, use_cache=True, depth=np.int64(0)).shape[1] == 1


def test_meta_then_to_empty_then_reset_parameters_gives_a_whole_model():
    """PyTorch's idiom for building a large model without a CPU copy (tests/gpu/check_record.py
    uses it): on the meta device, then to_empty(), then reset_parameters(). to_empty leaves every
    buffer unset, so reset_parameters must also fill the RoPE frequencies; uninitialised memory is
    filled with NaN here so that a missed buffer fails every time, not only when the heap holds
    garbage."""
    from model.layers import rope_inv_freq

    args = model.ModelArgs.from_name("tiny")
    with torch.device("meta"):
        meta = model.Transformer(args, dtype=torch.float32)
    was = torch.utils.deterministic.fill_uninitialized_memory, torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        m = meta.to_empty(device="cpu")
        m.reset_parameters(seed=0)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was[0]
        torch.use_deterministic_algorithms(was[1])
    assert torch.equal(m.rope_inv_freq, rope_inv_freq(args))
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        assert torch.isfinite(t.float()).all(), name
    ref = model.Transformer(args, dtype=torch.float32)
    ref.reset_parameters(seed=0)
    tokens = torch.randint(0, args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m(tokens), ref(tokens))


@pytest.mark.parametrize("impl", ["absorb", "naive"])
def test_an_empty_batch_gives_empty_logits(impl):
    """Zero rows failed deep inside attention (a view with -1 over 0 elements; a review); zero
    positions already worked. Both now give empty logits of the right shape."""
    m = random_model("tiny", seed=0, attn_impl=impl)
    V = m.args.vocab_size
    assert m(torch.zeros(0, 8, dtype=torch.long)).shape == (0, 8, V)
    logits, mtp = m(torch.zeros(0, 8, dtype=torch.long), mtp=True)
    assert logits.shape == (0, 8, V) and mtp.shape == (0, 7, V)
    assert m(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, V)


@torch.no_grad()
def test_latent_attention_always_forces_the_latent_form_and_auto_expands_a_prefill(monkeypatch):
    from model.mla import MLA

    m = random_model("tiny", seed=4)
    calls = []
    for name in ("_attend_latent", "_attend_expanded"):
        real = getattr(MLA, name)
        monkeypatch.setattr(MLA, name, (lambda real, name: lambda self, *a: calls.append(name) or real(self, *a))(real, name))
    x = tokens(1, 24, seed=5)
    m(x[:, :23], use_cache=True)  # auto: a prefill (S = T) expands its latents
    assert set(calls) == {"_attend_expanded"}
    calls.clear()
    m(x[:, 23:], start_pos=23)  # auto: one query against 24 keys stays latent
    assert set(calls) == {"_attend_latent"}
    for a in m.attention_modules():
        a.latent_attention = "always"
    calls.clear()
    m(x[:, :23], use_cache=True)
    assert set(calls) == {"_attend_latent"}  # "always": no expansion, even in a prefill


@pytest.mark.parametrize("impl", ["absorb", "naive"])
def test_gradients_reach_the_hooked_query_parts(impl):
    # the query assembled in place (MLA._query) must not cut a retained q_nope out of the graph: the same
    # gradients as with a hook that replaces q_nope by a copy (which forces the concatenation)
    m = random_model("tiny", seed=9, attn_impl=impl)
    x = tokens(1, 8)

    def grads(copy: bool):
        saved = {}

        def keep(t, hook):
            t = t.clone() if copy and hook.name.endswith("q_nope") else t
            t.retain_grad()
            saved[hook.name] = t
            return t

        m.zero_grad()
        with m.hooks([("layers.1.attn.hook_q_nope", keep), ("layers.1.attn.hook_q_pe", keep)]):
            logits = m(x)
        logits[0, -1, 5].backward()
        return {k: v.grad for k, v in saved.items()}

    fast, joined = grads(False), grads(True)
    for name, g in joined.items():
        assert g is not None and g.abs().sum() > 0, name
        assert fast[name] is not None, name
        torch.testing.assert_close(fast[name], g, rtol=1e-5, atol=1e-9)


@torch.no_grad()
@pytest.mark.parametrize("first,then", [("absorb", "naive"), ("naive", "absorb")])
def test_switching_attention_impl_after_a_cached_prefill_starts_a_fresh_cache(first, then):
    m = random_model("tiny", seed=1, attn_impl=first)
    x = tokens(2, 12, seed=3)
    m(x[:, :8], use_cache=True)
    m.attn_impl = then  # the other layout caches other tensors: the old cache must not be reused
    assert m.layers[0].attn.cache_shape == (0, 0)
    got = torch.cat([m(x[:, :8], use_cache=True)] + [m(x[:, i:i + 1], start_pos=i) for i in range(8, 12)], 1)
    assert rel(got, m(x)) < ATOL


@torch.no_grad()
def test_an_empty_row_in_a_cached_batch_leaves_no_query_without_a_key():
    # a padding query sees itself: a row of length 0 still has one visible key per query, so a hooked
    # pattern is a distribution everywhere (an all-masked row softmaxes to NaN)
    m = random_model("tiny", seed=1)
    x = tokens(2, 6, seed=2)
    _, c = m.run_with_cache(x, lengths=torch.tensor([6, 0]), use_cache=True, names="layers.*.attn.hook_pattern")
    for name, p in c.items():
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))


@torch.no_grad()
def test_mtp_rotates_with_the_yarn_attention_factor():
    # rope_attention_factor (YaRN's cos/sin multiplier, != 1 for V2 configs) applies in the MTP block too
    m = random_model("tiny", seed=5, rope_attention_factor=1.3)
    x = tokens(2, 16, seed=3)
    h = m(x, return_hidden=True)[1]
    mt = m.mtp[0]
    z = mt.eh_proj(torch.cat([mt.enorm(m.embed(x[:, 1:])), mt.hnorm(h[:, :-1])], -1))
    angles = torch.arange(15, dtype=torch.float32)[None, :, None] * m.rope_inv_freq
    cos, sin = (1.3 * angles.cos()).expand(2, -1, -1), (1.3 * angles.sin()).expand(2, -1, -1)
    pos = torch.arange(15)[None].expand(2, 15)
    ref = m.head(mt.norm(mt.block(z, cos, sin, pos, None, 15, False)))
    assert rel(m.mtp_logits(h, x), ref) < ATOL
    assert rel(m(x, mtp=True)[1], ref) < ATOL


def test_reset_parameters_with_a_seed_leaves_the_global_rng_as_it_was():
    m = random_model("tiny", seed=0)
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    m.reset_parameters(seed=7)
    assert torch.equal(torch.rand(4), want)


@torch.no_grad()
def test_a_padded_mtp_pass_fills_each_rows_mtp_cache_to_its_length_minus_one():
    # MTP position i needs token i+1: a row of length L fills positions 0..L-2 of the MTP block's cache
    m = random_model("tiny", seed=2)
    x = tokens(2, 6, seed=4)
    m(x, lengths=torch.tensor([6, 3]), use_cache=True, mtp=True)
    h = m(x, return_hidden=True)[1]
    assert m.mtp_logits(h[:, :2], x[:, :2], start_pos=torch.tensor([5, 2]), use_cache=True).shape[1] == 1
    m(x, lengths=torch.tensor([6, 3]), use_cache=True, mtp=True)
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] start past the positions their MTP block 0's KV cache"):
        m.mtp_logits(h[:, :2], x[:, :2], start_pos=torch.tensor([5, 3]), use_cache=True)


@torch.no_grad()
def test_mtp_logits_refuse_positions_past_max_seq_len_as_forward_does():
    """mtp_logits ran its positions past max_seq_len silently (forward refuses them): now the same
    check refuses them with model.InputError, naming the tokens and start_pos; the MTP positions are
    one fewer than the tokens, so the last position a forward takes is still drafted from."""
    m = random_model("tiny")
    n, dim = m.args.max_seq_len, m.args.dim
    x, h = torch.zeros(1, n + 2, dtype=torch.long), torch.zeros(1, n + 2, dim)
    with pytest.raises(model.InputError,
                       match=rf"^tokens: {n + 1} MTP positions from start_pos=0 reach position {n}, past max_seq_len={n}$"):
        m.mtp_logits(h, x)
    for use_cache in (False, True):
        with pytest.raises(model.InputError, match=rf"^tokens: 3 MTP positions from start_pos={n - 2} reach position "
                                                   rf"{n}, past max_seq_len={n}$"):
            m.mtp_logits(h[:, :4], x[:, :4], start_pos=n - 2, use_cache=use_cache)
    # the controls: every position a forward takes (n + 1 tokens, n MTP positions), and the last one alone
    assert m.mtp_logits(h[:, :n + 1], x[:, :n + 1]).shape == (1, n, m.args.vocab_size)
    assert m.mtp_logits(h[:, :2], x[:, :2], start_pos=n - 1).shape == (1, 1, m.args.vocab_size)


def test_bad_forward_inputs_raise_model_input_error_naming_argument_and_value():
    """Bad arguments to forward (and what it calls) raise model.InputError, a ValueError (so that
    `except ValueError` still catches them), whose message names the argument and the bad value."""
    m = random_model("tiny")
    assert issubclass(model.InputError, ValueError) and "InputError" in model.__all__
    x = torch.zeros(2, 4, dtype=torch.long)
    n = m.args.max_seq_len
    for args, kw, msg in [((torch.zeros(5, dtype=torch.long),), {}, r"^tokens must be a 2-D .* got \(5,\)$"),
                          ((torch.zeros(1, 3),), {}, r"^tokens must be integer token ids, got dtype torch.float32$"),
                          ((torch.zeros(1, 3, dtype=torch.int16),), {},
                           r"^tokens must be token ids of dtype torch.long or torch.int32, got torch.int16 \(\.long\(\) "
                           r"converts integer ids\)$"),
                          ((torch.zeros(1, 3, dtype=torch.uint8),), {},
                           r"^tokens must be token ids of dtype torch.long or torch.int32, got torch.uint8 \(uint8 "
                           r"holds bytes, .*: encode text with the tokenizer\)$"),
                          ((torch.zeros(1, 3, dtype=torch.bool),), {}, r"^tokens must be integer token ids, got dtype "
                           r"torch.bool$"),
                          ((torch.tensor([[1, 512]]),), {}, r"^tokens: token ids must be in \[0, 512\); got \[1, 512\]$"),
                          ((torch.zeros(1, n + 1, dtype=torch.long),), {},
                           rf"^tokens: {n + 1} positions from start_pos=0 reach position {n}, past max_seq_len={n}$"),
                          ((x,), dict(lengths=torch.tensor([4, 5])), r"^lengths must be in \[0, 4\] .* got \[4, 5\]$"),
                          ((x,), dict(start_pos=torch.tensor([0, -1])), r"^start_pos must be >= 0, got \[0, -1\]$"),
                          ((x,), dict(start_pos=2.5), r"^start_pos: expected an int or 2 integer starts .* got 2.5$"),
                          ((x,), dict(targets=torch.zeros(2, 3, dtype=torch.long)),
                           r"^targets: expected token ids of shape \(2, 4\), got \(2, 3\)$"),
                          ((x,), dict(mtp_targets=torch.zeros(2, 3, dtype=torch.long)), r"^mtp_targets with mtp=False"),
                          ((x,), dict(resid=torch.zeros(2, 4, m.args.dim)), r"^resid with start_at_layer=0: ")]:
        with pytest.raises(model.InputError, match=msg):
            m(*args, **kw)
    m.reset_cache()
    with pytest.raises(model.InputError, match=r"^start_pos > 0 over 1 rows of tokens, but the KV cache holds 0 rows"):
        m(torch.zeros(1, 1, dtype=torch.long), start_pos=4)
    m(x, use_cache=True, mtp=True)
    with pytest.raises(model.InputError, match=r"^mtp=True needs start_pos=0, got start_pos up to 4 "):
        m(x, start_pos=4, mtp=True)
    with pytest.raises(model.InputError, match=rf"^length={n + 1}: a KV cache longer than max_seq_len={n}$"):
        m.setup_cache(1, n + 1)
    assert m(x).shape == (2, 4, m.args.vocab_size)  # the control: good input runs


def test_bad_mtp_logits_inputs_raise_model_input_error_naming_argument_and_value():
    """mtp_logits checks its tokens as forward does, and its h: an id past the vocabulary was the
    embedding's IndexError, a float or 1-D tokens or a short h a RuntimeError deep in the MTP block."""
    m = random_model("tiny")
    x = torch.randint(0, m.args.vocab_size, (2, 5))
    _, h = m(x, return_hidden=True)
    for args, msg in [((h, torch.full((2, 5), m.args.vocab_size)), r"^tokens: token ids must be in \[0, 512\); "),
                      ((h, x.float()), r"^tokens must be integer token ids, got dtype torch.float32$"),
                      ((h, x[0]), r"^tokens must be a 2-D .* got \(5,\)$"),
                      ((h[:, :3], x), rf"^h: expected .* shape \[2, at least 4, {m.args.dim}\], got \(2, 3, "),
                      ((h[..., :5], x), r"^h: expected .* got \(2, 5, 5\)$"),
                      ((h[:1], x), r"^h: expected .* got \(1, 5, "),
                      ((h.tolist(), x), r"^h: expected .* got list$")]:
        with pytest.raises(model.InputError, match=msg):
            m.mtp_logits(*args)
    # the controls: h of the tokens' positions, or of the MTP positions alone (generate's decoding)
    assert m.mtp_logits(h, x).shape == m.mtp_logits(h[:, :4], x).shape == (2, 4, m.args.vocab_size)
