"""model.frozen_weights: inside the scope oneDNN's GEMMs read a frozen module's weights pre-packed,
made once and remade when the weight changes in place; the numbers are the unpacked path's."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch

import model
from model import frozen, gemm, layers

pytestmark = pytest.mark.skipif(not gemm.onednn_available(), reason="oneDNN linear unavailable in this torch build")


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch):
    """Every float32 GEMM on oneDNN, however small (the tiny model's are), the routed experts in its
    padded layout."""
    monkeypatch.setattr(layers, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(layers, "ONEDNN_MIN_MACS", 0)


@pytest.fixture
def packs(monkeypatch):
    """The weights frozen.pack was called on, in order."""
    made = []

    def spy(w):
        made.append(tuple(w.shape))
        return real(w)

    real = frozen.pack
    monkeypatch.setattr(frozen, "pack", spy)
    return made


def tiny_model_and_tokens():
    from helpers import random_model

    m = random_model("tiny", seed=3)
    # 4 x 64 tokens: the routed experts get >= ONEDNN_MIN_MEAN_ROWS rows on average, so their padded oneDNN layout runs
    return m, torch.randint(0, m.args.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_a_frozen_model_computes_the_unpacked_numbers_and_packs_each_weight_once(packs):
    m, tokens = tiny_model_and_tokens()
    plain = m(tokens)
    assert not packs  # outside the scope nothing is packed
    with model.frozen_weights(m) as handle:
        first = m(tokens)
        n = len(packs)
        experts = m.layers[1].ffn.experts
        e, inter, dim = experts.w1.shape
        # every routed expert's weights, one expert at a time (views of the stacked parameters): W1 and
        # W3 stacked by rows into one copy (one GEMM for both), W2
        assert packs.count((2 * inter, dim)) >= e and packs.count((dim, inter)) >= e, packs
        again = m(tokens)
        assert len(packs) == n  # the second forward reuses every packed copy
    # the same oneDNN kernels on the same numbers: bit-equal
    assert torch.equal(first, plain) and torch.equal(again, plain)
    assert not frozen.is_frozen(m) and handle is not None


@torch.no_grad()
def test_an_edit_through_the_parameter_is_seen_and_one_through_data_is_not(packs):
    m, tokens = tiny_model_and_tokens()
    experts = m.layers[1].ffn.experts  # the first MoE layer
    with model.frozen_weights(m):
        before = m(tokens)
        experts.w2.mul_(0.5)  # in place on the parameter: its version changes, its copies are remade
        n = len(packs)
        edited = m(tokens)
        assert len(packs) > n and not torch.equal(edited, before)
        experts.w3.mul_(0.5)  # half of each stacked [W1; W3] copy: those are remade too
        n = len(packs)
        before, edited = edited, m(tokens)
        e, inter, dim = experts.w1.shape
        assert (2 * inter, dim) in packs[n:] and not torch.equal(edited, before)
    assert torch.equal(edited, m(tokens))  # the unpacked path on the edited weights: the same numbers
    with model.frozen_weights(m):
        m(tokens)
        m.layers[0].attn.wo.weight.data.mul_(0.5)  # through .data: no version change, the packed copy stays
        stale = m(tokens)
    fresh = m(tokens)
    # the documented limit of the promise, and the proof that the packed copies are what runs
    assert not torch.equal(stale, fresh) and torch.equal(stale, edited)


@torch.no_grad()
def test_a_layers_routed_experts_are_packed_together_and_remade_together(packs):
    m, _ = tiny_model_and_tokens()
    experts = m.layers[1].ffn.experts
    e, inter, dim = experts.w1.shape
    weights = (experts.w1, experts.w2, experts.w3)
    assert frozen.packed_experts(*weights) is None  # outside the scope
    with model.frozen_weights(m):
        pairs = frozen.packed_experts(*weights)
        assert len(pairs) == e and packs == [(2 * inter, dim), (dim, inter)] * e
        assert frozen.packed_experts(*weights) is pairs  # one lookup per layer, nothing packed again
        x = torch.randn(5, dim)
        w13 = torch.cat([experts.w1[2], experts.w3[2]])
        assert torch.equal(gemm.onednn_linear(x, pairs[2][0]), gemm.onednn_linear(x, w13))
        assert torch.equal(gemm.onednn_linear(w13[:5, :inter], pairs[2][1]),
                           gemm.onednn_linear(w13[:5, :inter], experts.w2[2].clone()))
        held = frozen.packed_bytes()
        assert held == 3 * e * inter * dim * 4
        experts.w2[3].zero_()  # one expert's slice, in place: the parameter's version changes
        again = frozen.packed_experts(*weights)
        assert again is not pairs and len(packs) == 4 * e  # the whole layer is packed anew
        assert frozen.packed_bytes() == held  # the stale copies were dropped, not kept alongside


def test_the_scope_nests_ends_and_dies_with_its_module():
    m = torch.nn.Linear(64, 32, bias=False)
    outer = model.frozen_weights(m)
    with model.frozen_weights(m):
        assert frozen.is_frozen(m)
    assert frozen.is_frozen(m)  # the outer handle still holds it
    outer.release()
    outer.release()  # a second release is harmless
    assert not frozen.is_frozen(m)
    model.frozen_weights(m)  # never released: it lasts as long as the module
    assert frozen.is_frozen(m)
    del m
    gc.collect()
    assert not frozen._FROZEN
    with pytest.raises(TypeError, match="nn.Module"):
        model.frozen_weights(torch.zeros(3))


@torch.no_grad()
def test_other_tensors_and_gradients_are_left_alone(packs):
    m = torch.nn.Linear(128, 64, bias=False)
    x, other = torch.randn(32, 128), torch.randn(64, 128)
    with model.frozen_weights(m):
        assert frozen.packed(other) is other  # not a weight of a frozen module
        made = frozen.packed(m.weight)
        assert made is not m.weight
        with frozen.suspended(m):  # out of the scope for a while: the weight is read unpacked
            assert frozen.packed(m.weight) is m.weight and not frozen.is_frozen(m)
        assert frozen.packed(m.weight) is made  # back in the scope, the copy was kept
        with torch.enable_grad():
            assert frozen.packed(m.weight) is m.weight  # autograd never sees a packed copy
        assert torch.equal(gemm.onednn_linear(x, m.weight), gemm.onednn_linear(x, other.copy_(m.weight)))
    assert packs == [(64, 128)]


@pytest.mark.slow  # 1.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_jobs_load_their_model_frozen_where_the_copies_fit(tmp_path):
    from helpers import hf_checkpoint

    from probe.job import load_model, packing_fits

    ckpt = hf_checkpoint(tmp_path / "ckpt")
    cpu = SimpleNamespace(device="cpu", shards=None, size=1, rank=0)
    m = load_model(ckpt, cpu, dtype="float32")
    assert frozen.is_frozen(m)
    with torch.no_grad():
        m(torch.randint(0, m.args.vocab_size, (4, 64)))
    assert frozen.packed_bytes() > 0
    weights = sum(p.numel() * 4 for p in m.parameters())
    assert packing_fits(m, available=2 * weights) and not packing_fits(m, available=2 * weights - 8)
    # a bfloat16 model: only its float32 routers count
    mb = load_model(ckpt, cpu, dtype="bfloat16")
    routers = sum(p.numel() * 4 for p in mb.parameters() if p.dtype == torch.float32)
    assert 0 < routers < weights / 4 and packing_fits(mb, available=2 * routers)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
                                  lambda ps: torch.optim.SGD(ps, lr=1e-1, fused=True),
                                  lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True)])
def test_an_optimiser_step_is_seen_even_a_fused_one(make):
    """A fused optimiser step leaves the version counters as they were: the packed copies kept the
    old weights, and a frozen model's logits were 11.9 off its own parameters' (a review). Every
    optimiser step now drops the copies of the weights it holds."""
    m, tokens = tiny_model_and_tokens()
    ref, _ = tiny_model_and_tokens()
    with model.frozen_weights(m):
        with torch.no_grad():
            m(tokens)  # packs
        for mm in (m, ref):
            opt = make(mm.parameters())
            mm(tokens).float().logsumexp(-1).mean().backward()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
        with torch.no_grad():
            assert torch.equal(m(tokens), ref(tokens))


def test_weights_made_in_inference_mode_run_unpacked_not_fail(packs):
    """Inference tensors have no version counter: freezing a model made under inference_mode failed
    at its first GEMM (a review); its GEMMs run unpacked instead."""
    with torch.inference_mode():
        m, tokens = tiny_model_and_tokens()
        plain = m(tokens)
        with model.frozen_weights(m):
            assert torch.equal(m(tokens), plain)
    assert not packs


def stacked_experts(e: int = 3, inter: int = 8, dim: int = 16) -> torch.nn.Module:
    """A module holding routed experts' stacked weights w1, w3 [E, I, D] and w2 [E, D, I]."""
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Module()
    m.w1, m.w3 = (torch.nn.Parameter(torch.randn(e, inter, dim, generator=g)) for _ in range(2))
    m.w2 = torch.nn.Parameter(torch.randn(e, dim, inter, generator=g))
    return m


@torch.no_grad()
def test_a_fused_step_on_one_of_the_experts_weights_remakes_the_layers_copies():
    # the optimiser holds w2 alone (fine-tuning the down projections): the layer's copies hold w2 too
    m = stacked_experts()
    x = torch.randn(4, 8)
    with model.frozen_weights(m):
        before = frozen.packed_experts(m.w1, m.w2, m.w3)
        m.w2.grad = torch.ones_like(m.w2)
        torch.optim.SGD([m.w2], lr=0.5, fused=True).step()
        after = frozen.packed_experts(m.w1, m.w2, m.w3)
        for e in range(3):
            assert torch.equal(gemm.onednn_linear(x, after[e][1]), gemm.onednn_linear(x, m.w2[e].clone()))
    assert after is not before


def test_a_handle_released_twice_releases_its_own_hold_only():
    m = torch.nn.Linear(8, 4, bias=False)
    with model.frozen_weights(m):
        inner = model.frozen_weights(m)
        inner.release()
        inner.release()  # harmless: the outer scope still holds the module
        assert frozen.is_frozen(m)
    assert not frozen.is_frozen(m)


@torch.no_grad()
def test_weights_outside_the_frozen_module_are_not_packed_with_it():
    # a copy keyed by a tensor whose storage the scope does not hold could be served for another
    # tensor given that address later
    m = stacked_experts()
    loose = torch.randn_like(m.w2)
    with model.frozen_weights(m):
        assert frozen.packed_experts(m.w1, loose, m.w3) is None
        assert frozen.packed_experts(m.w1, m.w2, m.w3) is not None  # the control


@torch.no_grad()
def test_each_view_of_a_weight_gets_its_own_copy(packs):
    # experts' slices of one parameter (same shape and strides, other offsets), a square weight's
    # transpose (same offset and shape, other strides) and its first rows (same offset and strides,
    # another shape) are other matrices
    m = stacked_experts(e=2, inter=16, dim=16)
    x = torch.randn(4, 16)
    with model.frozen_weights(m):
        for w in (m.w1[0], m.w1[1], m.w1[1].t(), m.w1[1][:8]):
            assert torch.equal(gemm.onednn_linear(x, w), gemm.onednn_linear(x, w.clone()))
    assert packs == [(16, 16)] * 3 + [(8, 16)]


@torch.no_grad()
def test_a_stale_copy_is_freed_before_its_remake(monkeypatch):
    # the remake of an edited weight does not hold both copies at once (peak memory: twice the weights)
    m = torch.nn.Linear(128, 64, bias=False)
    held = []
    real = frozen.pack
    monkeypatch.setattr(frozen, "pack", lambda w: held.append(frozen.packed_bytes()) or real(w))
    with model.frozen_weights(m):
        frozen.packed(m.weight)
        m.weight.mul_(2)
        frozen.packed(m.weight)
    assert held == [0, 0]
