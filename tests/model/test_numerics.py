"""Numerics of the layers in each dtype: bfloat16 and float16 compute their norms and rotations in
float32, float64 models stay in float64, RMSNorm scales in place only where nothing can tell, and RoPE
on strided slices."""

from __future__ import annotations

import torch

import model
from helpers import cast_, random_model
from helpers.models import random_tokens as tokens, rel


@torch.no_grad()
def test_bfloat16_close_to_float32():
    m = random_model("tiny", seed=10)
    x = tokens(2, 32)
    ref = m(x)
    m16 = cast_(random_model("tiny", seed=10), torch.bfloat16)  # the router stays float32
    got = m16(x).float()
    # a few near-tie routing decisions flip in bf16, so compare on average, not at the maximum
    mean_rel = ((got - ref).abs().mean() / ref.abs().mean()).item()
    print(f"bf16 vs fp32: mean |diff| / mean |logit| = {mean_rel:.3f}")
    assert mean_rel < 0.1


@torch.no_grad()
def test_a_float64_model_normalises_and_rotates_in_float64():
    """RMSNorm and RoPE compute in float32 at least, in float64 for a float64 model (the
    `--dtype float64` reference precision): against a float64 formula they agree to float64
    rounding; the same input rounded through float32 (the control) is 1e-8 away."""
    from model.layers import RMSNorm, apply_rope

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 8, 96, dtype=torch.float64, generator=g) * 3
    norm = RMSNorm(96, eps=1e-6).double()
    norm.weight.copy_(torch.rand(96, dtype=torch.float64, generator=g) + 0.5)
    want = x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt() * norm.weight
    assert rel(norm(x), want) < 1e-14
    assert rel((norm.float()(x.float())).double(), want) > 1e-9  # the control: float32 is visibly coarser
    cos, sin = (torch.rand(3, 40, 16, generator=g) for _ in range(2))
    x0, x1 = x[..., 64::2], x[..., 65::2]
    c, s = cos[:, :, None].double(), sin[:, :, None].double()
    want = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
    assert apply_rope(x[..., 64:], cos, sin).dtype == torch.float64
    assert rel(apply_rope(x[..., 64:], cos, sin), want) < 1e-14
    assert rel(apply_rope(x[..., 64:].float(), cos, sin).double(), want) > 1e-9


@torch.no_grad()
def test_the_router_computes_in_float64_for_a_float64_model_and_float32_otherwise():
    """Its weight stays float32; the logits, scores and weights are float64 in a float64 model (two
    float64 inputs a few ulps apart must not round to different float32 values there: a sharded
    model's routing weights then differed from one process's in their last float32 bits), float32
    for float32 and bfloat16 inputs."""
    from model.moe import Gate

    gate = Gate(model.ModelArgs.from_name("tiny"))
    gate.reset_parameters(std=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, gate.weight.shape[1], dtype=torch.float64, generator=g)
    w, ids, scores = gate(x)
    assert w.dtype == scores.dtype == torch.float64 and gate.weight.dtype == torch.float32
    assert rel(scores, torch.sigmoid(x @ gate.weight.double().T)) < 1e-14
    # the control: the same input through float32 is ~1e-8 away
    assert rel(gate(x.float())[2].double(), scores) > 1e-9
    assert gate(x.to(torch.bfloat16))[0].dtype == torch.float32


def test_rms_norm_scales_in_place_only_where_nothing_can_tell():
    """RMSNorm multiplies its weight into its own fresh output in place when no gradient is recorded:
    bit-equal to F.rms_norm and to the tracked path, the input left as it was; with a gradient to
    record the weight still gets one (the in-place product would have destroyed what it needs)."""
    from model.layers import RMSNorm

    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
    x = torch.randn(3, 5, 64, generator=g)
    before = x.clone()
    with torch.no_grad():
        fast = norm(x)
    assert torch.equal(x, before)
    assert torch.equal(fast, torch.nn.functional.rms_norm(x, (64,), norm.weight, eps=1e-6))
    tracked = norm(x)
    assert tracked.requires_grad and torch.equal(tracked.detach(), fast)
    tracked.sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    with torch.no_grad():  # a bf16 input with a float32 weight: the product is float32, as before
        assert norm(x.bfloat16()).dtype == torch.float32


@torch.no_grad()
def test_float16_norm_and_rope_compute_in_float32():
    # float16 squares overflow above 256 (65504 max): the norm must compute in float32, as for bfloat16
    from model.layers import RMSNorm, apply_rope

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 64, generator=g) * 400
    norm = RMSNorm(64, eps=1e-6)
    norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
    want = x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt() * norm.weight
    got = norm.half()(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert rel(got.float(), want) < 2e-3
    cos, sin = (torch.rand(2, 5, 32, generator=g) for _ in range(2))
    xh = x.half()
    x0, x1 = xh[..., 0::2].float(), xh[..., 1::2].float()  # the float16 input's exact values
    want = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2).half()
    assert torch.equal(apply_rope(xh, cos, sin), want)  # one rounding, from a float32 rotation


@torch.no_grad()
def test_rope_rotates_a_slice_that_starts_at_an_odd_offset():
    # k_pe is a slice of wkv_a's output at offset kv_lora_rank: an odd rank puts its pairs at odd offsets
    from model.layers import apply_rope

    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 5, 18, generator=g)
    x = full[..., 9:17]  # storage offset 9, even strides
    cos, sin = (torch.rand(2, 5, 4, generator=g) for _ in range(2))
    x0, x1 = x[..., 0::2], x[..., 1::2]
    want = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin), want, rtol=1e-6, atol=1e-6)
