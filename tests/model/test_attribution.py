"""Direct logit attribution: per-head attention results (`attn.hook_result`, opt-in) and
`cache.apply_final_norm` (model/attribution.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model
from helpers import cast_, random_model
from model.hooks import ActivationCache

IMPLS = [("absorb", "auto"), ("absorb", "always"), ("naive", "auto")]  # expanded, latent, naive


def _set_impl(m, impl: str, latent: str) -> None:
    m.attn_impl = impl
    for a in m.attention_modules():
        a.latent_attention = latent


def _tokens(m, shape=(2, 7), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, m.args.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl,latent", IMPLS)
@torch.no_grad()
def test_per_head_results_sum_to_the_attention_output(impl, latent):
    """hook_result [B, S, H, D]: head h's value output times wo's columns of head h; their sum over H is
    the block's attention output. Opt-in, and observing it leaves the output wo's own, bit for bit."""
    m = random_model("tiny", seed=1)
    _set_impl(m, impl, latent)
    a, x = m.args, _tokens(m)
    ref, plain = m.run_with_cache(x)
    assert "layers.1.attn.hook_result" not in plain  # opt-in
    with pytest.raises(model.HookError, match=r"layers\.1\.attn\.hook_result is opt-in"):
        plain["layers.1.attn.hook_result"]
    logits, c = m.run_with_cache(x, names=["layers.*.attn.hook_result", "layers.*.attn.hook_z",
                                           "layers.*.hook_attn_out"])
    assert torch.equal(logits, ref)
    for i, layer in enumerate(m.layers):
        r, z = c[f"layers.{i}.attn.hook_result"], c[f"layers.{i}.attn.hook_z"]
        assert r.shape == (2, 7, a.n_heads, a.dim) and r.dtype == z.dtype
        torch.testing.assert_close(r.sum(2), c[f"layers.{i}.hook_attn_out"], rtol=1e-5, atol=1e-6)
        V, wo = a.v_head_dim, layer.attn.wo.weight
        for h in range(a.n_heads):  # by hand: head h's values through its own columns of wo
            torch.testing.assert_close(r[:, :, h], z[:, :, h] @ wo[:, h * V:(h + 1) * V].T, rtol=1e-5, atol=1e-6)
        assert (r.abs().amax(dim=(0, 1, 3)) > 1e-3).all()  # every head contributes: the sum is no accident


@torch.no_grad()
def test_observing_results_in_bfloat16_leaves_the_output_bit_for_bit():
    """In bfloat16 the heads' sum differs from wo's GEMM in the last bit, which the next blocks can turn
    into other experts: a hook that only observes hook_result must leave the forward wo's own."""
    m = cast_(random_model("tiny", seed=1), torch.bfloat16)
    x = _tokens(m, (4, 64), seed=1)
    out, c = m.run_with_cache(x, names=["layers.*.attn.hook_result", "layers.*.hook_attn_out"])
    assert torch.equal(out, m(x))
    r, attn_out = c["layers.2.attn.hook_result"], c["layers.2.hook_attn_out"]
    assert r.dtype == torch.bfloat16
    torch.testing.assert_close(r.float().sum(2), attn_out.float(), rtol=0.02, atol=0.02)
    with m.hooks([("layers.*.attn.hook_result", lambda r, hook: r.clone())]):  # replaced by an equal copy
        assert not torch.equal(m(x), out)  # the control: the sum over heads is another rounding


@pytest.mark.parametrize("impl,latent", IMPLS)
@torch.no_grad()
def test_a_replaced_result_is_what_the_block_sums(impl, latent):
    """A replacement of hook_result (or an edit in place) is applied: the attention output becomes its
    sum over heads. Zeroing head 2 there equals zeroing head 2's values at hook_z."""
    m = random_model("tiny", seed=2)
    _set_impl(m, impl, latent)
    x, p = _tokens(m, seed=2), "layers.1.attn."
    _, c = m.run_with_cache(x, names=p + "hook_result")
    only1 = (torch.arange(m.args.n_heads) == 1)[:, None]
    with m.hooks([(p + "hook_result", lambda r, hook: r * only1)]):
        _, replaced = m.run_with_cache(x, names="layers.1.hook_attn_out")
    torch.testing.assert_close(replaced["layers.1.hook_attn_out"], c[p + "hook_result"][:, :, 1])
    def in_place(r, hook):
        r.mul_(only1)

    with m.hooks([(p + "hook_result", in_place)]):
        _, edited = m.run_with_cache(x, names="layers.1.hook_attn_out")
    torch.testing.assert_close(edited["layers.1.hook_attn_out"], c[p + "hook_result"][:, :, 1])

    def zero_head2(t, hook):
        t = t.clone()
        t[:, :, 2] = 0
        return t

    with m.hooks([(p + "hook_result", zero_head2)]):
        by_result = m(x)
    with m.hooks([(p + "hook_z", zero_head2)]):
        by_z = m(x)
    assert (by_result - m(x)).abs().max() > 1e-3  # the control: the ablation moves the logits
    torch.testing.assert_close(by_result, by_z, rtol=1e-5, atol=1e-5)


def test_results_under_inference_mode_are_cached_and_edits_in_place_applied():
    """Under torch.inference_mode() (a serving loop's) the results were inference tensors, with no version
    counter to tell an edit in place by: every cache of hook_result raised there (a review)."""
    m = random_model("tiny", seed=2)
    x, p = _tokens(m, seed=2), "layers.1."
    with torch.no_grad():
        ref, c = m.run_with_cache(x, names=[p + "attn.hook_result", p + "hook_attn_out"])

    def zero_head0(r, hook):
        r[:, :, 0] = 0

    with torch.inference_mode():
        out, ci = m.run_with_cache(x, names=[p + "attn.hook_result", p + "hook_attn_out"])
        with m.hooks([(p + "attn.hook_result", zero_head0)]):
            _, edited = m.run_with_cache(x, names=p + "hook_attn_out")
    assert torch.equal(out, ref)  # observed: wo's own output, bit for bit
    torch.testing.assert_close(ci[p + "attn.hook_result"], c[p + "attn.hook_result"], rtol=0, atol=0)
    torch.testing.assert_close(edited[p + "hook_attn_out"], c[p + "attn.hook_result"][:, :, 1:].sum(2),
                               rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_per_head_results_of_an_fp8_resident_wo_sum_to_its_fp8_output():
    """An FP8-resident wo quantises its input: the per-head results quantise z the same way, so their
    sum is wo's FP8 output to rounding, not the unquantised product (the control)."""
    from helpers.checkpoints import FP8_OVERRIDES

    m = random_model("tiny", seed=3, **FP8_OVERRIDES)
    wo = m.layers[0].attn.wo.make_fp8_()
    x, p = _tokens(m, seed=3), "layers.0."
    _, c = m.run_with_cache(x, names=[p + "attn.hook_result", p + "attn.hook_z", p + "hook_attn_out"])
    out, r = c[p + "hook_attn_out"], c[p + "attn.hook_result"]
    torch.testing.assert_close(r.sum(2), out, rtol=1e-5, atol=1e-5)
    unquantised = c[p + "attn.hook_z"].flatten(2) @ wo.dense_weight().T
    assert (unquantised - out).abs().max() > 1e-4


def test_gradients_reach_each_heads_result():
    """With run_with_cache(detach=False) a logit's gradient with respect to each head's result is its
    gradient with respect to the attention output (the output is their sum)."""
    m = random_model("tiny", seed=4)
    names = ["layers.1.attn.hook_result", "layers.1.hook_attn_out"]
    logits, cache = m.run_with_cache(_tokens(m, (1, 5), seed=4), names=names, detach=False)
    g_result, g_out = torch.autograd.grad(logits[0, -1, 3], [cache[n] for n in names])
    assert g_out.abs().sum() > 0
    torch.testing.assert_close(g_result, g_out[:, :, None].expand_as(g_result))


@pytest.mark.parametrize("impl", ["absorb", "naive"])
@torch.no_grad()
def test_direct_logit_attribution_adds_up_to_the_logits(impl):
    """The embedding and every block's attention and FFN outputs, through apply_final_norm and the head,
    sum to the model's logits (float64); so do the per-head results in place of the attention outputs,
    and the last position alone (pos=-1). Scaled by the norm's weight only, or by the RMS of another
    residual, they do not (the controls)."""
    m = cast_(random_model("tiny", seed=5, attn_impl=impl), torch.float64)
    x = _tokens(m, (2, 9), seed=5)
    blocks = ["hook_embed", "layers.*.hook_attn_out", "layers.*.hook_ffn_out"]
    logits, c = m.run_with_cache(x, names=blocks + ["layers.*.attn.hook_result", "layers.*.hook_resid_post"])
    pieces = c.stack(blocks)  # [1 + 2L, B, S, D]
    assert pieces.shape[0] == 1 + 2 * len(m.layers)
    dla = m.head(c.apply_final_norm(pieces))
    assert dla.dtype == torch.float64 and dla.shape == (len(pieces), 2, 9, m.args.vocab_size)
    torch.testing.assert_close(dla.sum(0), logits, rtol=0, atol=1e-5)
    heads = torch.cat([c[f"layers.{i}.attn.hook_result"].movedim(2, 0) for i in range(len(m.layers))])
    per_head = torch.cat([c.stack(["hook_embed", "layers.*.hook_ffn_out"]), heads])
    torch.testing.assert_close(m.head(c.apply_final_norm(per_head)).sum(0), logits, rtol=0, atol=1e-5)
    last = m.head(c.apply_final_norm(pieces[:, :, -1], pos=-1))  # [P, B, V]
    torch.testing.assert_close(last, dla[:, :, -1], rtol=0, atol=1e-12)
    torch.testing.assert_close(c.apply_final_norm(c["layers.2.hook_resid_post"]), m.norm(c["layers.2.hook_resid_post"]))
    # the controls: without the scale, or with the RMS of the residual before the last block
    assert (m.head(pieces * m.norm.weight).sum(0) - logits).abs().max() > 1e-2
    earlier = c["layers.1.hook_resid_post"]
    rms = earlier.square().mean(-1, keepdim=True).add(m.norm.eps).rsqrt()
    assert (m.head(pieces * rms * m.norm.weight).sum(0) - logits).abs().max() > 1e-2


@torch.no_grad()
def test_direct_logit_attribution_on_the_mtp_head_adds_up_to_its_logits():
    """The MTP module's residual (its block's input and its attention and FFN outputs, or the heads in
    place of the attention), scaled by its own norm (mtp=0) and through the shared head, sums to its
    logits (float64); the last MTP position alone too. The main model's final norm, at the same
    positions, gives another sum (the control: the norm the MTP logits pass is the module's own)."""
    m = cast_(random_model("tiny", seed=7), torch.float64)
    x = _tokens(m, (2, 9), seed=7)
    mtp = ["mtp.0.hook_in", "mtp.0.block.hook_attn_out", "mtp.0.block.hook_ffn_out"]
    (logits, mtp_logits), c = m.run_with_cache(x, names=mtp + ["mtp.0.block.attn.hook_result"], mtp=True)
    pieces = c.stack(mtp)  # [3, B, S-1, D]
    dla = m.head(c.apply_final_norm(pieces, mtp=0))
    assert dla.dtype == torch.float64 and dla.shape == (3, 2, 8, m.args.vocab_size)
    torch.testing.assert_close(dla.sum(0), mtp_logits, rtol=0, atol=1e-10)
    heads = c["mtp.0.block.attn.hook_result"].movedim(2, 0)  # [H, B, S-1, D]
    per_head = torch.cat([pieces[[0, 2]], heads])
    torch.testing.assert_close(m.head(c.apply_final_norm(per_head, mtp=np.int64(0))).sum(0), mtp_logits,
                               rtol=0, atol=1e-10)
    last = m.head(c.apply_final_norm(pieces[:, :, -1], pos=-1, mtp=0))  # [3, B, V]
    torch.testing.assert_close(last, dla[:, :, -1], rtol=0, atol=1e-12)
    main = m.head(c.apply_final_norm(pieces, pos=slice(0, 8)))  # the control: the main model's norm
    assert (main.sum(0) - mtp_logits).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: pos=8: the cached forward's MTP module 0 had 8 "):
        c.apply_final_norm(pieces[:, :, -1], pos=8, mtp=0)
    with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: x of shape \(3, 2, 8, 64\): expected .* ending "
                                         r"in \(2, 9, 64\), as in the cached forward "):
        c.apply_final_norm(pieces)  # MTP pieces without mtp=0: the main norm's 9 positions
    with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: mtp=True: expected the index of an MTP module"):
        c.apply_final_norm(pieces, mtp=True)
    with pytest.raises(model.HookError, match=r"^cache\.apply_final_norm: this cache has no MTP module 1: the "
                                              r"model's MTP modules are \[0\]$"):
        c.apply_final_norm(pieces, mtp=1)
    _, plain = m.run_with_cache(x, names="hook_embed")
    with pytest.raises(model.HookError, match=r"no scale of MTP module 0's norm: its forward did not run the MTP "
                                              r"module \(run_with_cache\(\.\.\., mtp=True\)\)$"):
        plain.apply_final_norm(pieces, mtp=0)


@torch.no_grad()
def test_apply_final_norm_refuses_what_it_cannot_scale():
    m = random_model("tiny", seed=6)
    _, c = m.run_with_cache(_tokens(m, (2, 5), seed=6), names="layers.*.attn.hook_result")
    r = c["layers.0.attn.hook_result"]  # [B, S, H, D]: the heads must come first
    with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: x of shape \(2, 5, 4, 64\): expected "
                                         r"\[\.\.\., B, S, D\] ending in \(2, 5, 64\).*movedim\(2, 0\)"):
        c.apply_final_norm(r)
    assert c.apply_final_norm(r.movedim(2, 0)).shape == (4, 2, 5, 64)
    with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: x of shape \(4, 2, 5, 64\): expected "
                                         r"\[\.\.\., B, D\] ending in \(2, 64\)"):
        c.apply_final_norm(r.movedim(2, 0), pos=-1)
    with pytest.raises(ValueError, match=r"pos=5: the cached forward had 5 positions"):
        c.apply_final_norm(r.movedim(2, 0)[:, :, 0], pos=5)
    with pytest.raises(ValueError, match=r"pos=1\.0: expected an int or a slice"):
        c.apply_final_norm(r.movedim(2, 0)[:, :, 0], pos=1.0)
    for bad in (True, torch.tensor([1]), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"^cache\.apply_final_norm: pos=.*: expected an int or a slice"):
            c.apply_final_norm(r.movedim(2, 0)[:, :, 0], pos=bad)
    want = c.apply_final_norm(r.movedim(2, 0)[:, :, 1], pos=1)
    for pos in (np.int64(1), torch.tensor(1), np.int32(-4)):  # positions from numpy or a tensor (were refused)
        assert torch.equal(c.apply_final_norm(r.movedim(2, 0)[:, :, 1], pos=pos), want)
    assert c.copy().apply_final_norm(r.movedim(2, 0)[:, :, 1:3], pos=slice(1, 3)).shape == (4, 2, 2, 64)
    with pytest.raises(model.HookError, match=r"^cache\.apply_final_norm: this cache has no final-norm scale"):
        ActivationCache(m.hook_names(), []).apply_final_norm(r)
