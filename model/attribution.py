"""Direct logit attribution: each head's share of the attention output (`attn.hook_result`).

Legend: B batch, S positions, H heads (this rank's), V v_head_dim, D dim.
"""

from __future__ import annotations

import torch

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
