"""Direct logit attribution: each head's share of the attention output (`attn.hook_result`) and the
final norm's scale for pieces of the residual stream (`ActivationCache.apply_final_norm`; with
`mtp=k`, MTP module k's norm for pieces of that module's residual stream).

    logits, cache = m.run_with_cache(tokens, names=["hook_embed", "layers.*.hook_attn_out", "layers.*.hook_ffn_out"])
    pieces = cache.stack(["hook_embed", "layers.*.hook_attn_out", "layers.*.hook_ffn_out"])  # [P, B, S, D]
    dla = m.head(cache.apply_final_norm(pieces))   # [P, B, S, V]; dla.sum(0) is the logits to rounding

The final norm is y = x / rms(x) * weight: for a fixed rms (the one the whole residual had) it is
linear, so the pieces the residual is the sum of, each scaled by it, add up to the head's input.

Legend: B batch, S positions, H heads (this rank's), V v_head_dim, D dim.
"""

from __future__ import annotations

import torch

from .args import InputError
from .indices import as_int, shown
from .kernels import act_quant, weight_dequant
from .layers import Linear, wide


def per_head_output(wo: Linear, z: torch.Tensor) -> torch.Tensor:
    """z [B, S, H, V] -> [B, S, H, D]: head h's term of wo(z.flatten(2)), z[..., h, :] times wo's
    columns of head h (they are head-major). Computed in wide(z.dtype) and returned in z's dtype.

    NOTE: an FP8-resident wo is dequantised for this call only (kept, as `dense_weight` keeps wkv_b,
    V3's 61 wo's would hold 14 GB more), and with activation quantisation z is quantised as wo's GEMM
    quantises it (per token and block of the flattened heads), so that the heads' sum is wo's FP8
    output to summation order; the gradient passes the quantisation straight through, as fp8_linear's."""
    bsz, seqlen, heads, v_dim = z.shape
    acc = wide(z.dtype)
    zf = z.to(acc)
    if not wo.fp8:
        w = wo.weight.to(acc)
    else:
        w = weight_dequant(wo.weight, wo.weight_scale_inv, wo.block, acc)
        if wo.quantise_activations:
            q, s = act_quant(z.flatten(2), wo.block, wo.scale_fmt)
            deq = q.to(acc) * s.to(acc).repeat_interleave(wo.block, dim=-1)[..., : heads * v_dim]
            zf = zf + (deq.view_as(zf) - zf).detach()
    return torch.einsum("bshv,dhv->bshd", zf, w.view(-1, heads, v_dim)).to(z.dtype)


def sum_heads(result: torch.Tensor, wo: Linear) -> torch.Tensor:
    """The attention output from per-head results [B, S, H, D]: their sum over H, added in wide(dtype);
    left wide where wo's output is (a tensor-parallel partial, rounded after the all-reduce)."""
    out = result.to(wide(result.dtype)).sum(2)
    return out if wo.wide_output else out.to(result.dtype)


def final_scale(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """1 / rms(x) [..., 1] of the final norm's input x [..., D], as the norm computes it (in wide(dtype))."""
    return norm.inverse_rms(x.to(wide(x.dtype)))


def apply_final_norm(x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, pos=None,
                     where: str = "the cached forward") -> torch.Tensor:
    """x [..., B, S, D] (pieces of the residual stream) times scale [B, S, 1] times weight [D], in
    x's dtype (computed in the wider of x's and scale's). `pos` (an integer or a slice) picks the
    positions x holds: x [..., B, D] for an int, [..., B, S', D] for a slice. `where` the scale came
    from, as a message names it."""
    if pos is not None:
        if not isinstance(pos, slice) and (pos := as_int(given := pos)) is None:  # numpy's and 0-d tensors' too
            raise InputError(f"cache.apply_final_norm: pos={shown(given)}: expected an int or a slice of positions")
        if isinstance(pos, int) and not -scale.shape[1] <= pos < scale.shape[1]:
            raise InputError(f"cache.apply_final_norm: pos={pos}: {where} had {scale.shape[1]} positions")
        scale = scale[:, pos]
    want = (*scale.shape[:-1], weight.shape[0])
    if not isinstance(x, torch.Tensor) or x.dim() < len(want) or tuple(x.shape[-len(want):]) != want:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        lead = "[..., B, D]" if isinstance(pos, int) else "[..., B, S, D]"
        raise InputError(f"cache.apply_final_norm: x of shape {got}: expected {lead} ending in {want}, as in {where} "
                         "(per-head results [B, S, H, D]: pass result.movedim(2, 0))")
    dt = torch.promote_types(x.dtype, scale.dtype)
    return (x.to(dt) * scale.to(x.device, dt) * weight.to(x.device, dt)).to(x.dtype)
