"""Multi-head latent attention (MLA) with two equivalent computations and a static KV cache.

Legend: B batch, S query positions (this call), T key positions (cache prefix + this call),
H heads, D model dim, C kv_lora_rank (the latent), R qk_rope_head_dim, N qk_nope_head_dim,
V v_head_dim.

- "naive": expand the latent with `wkv_b` into per-head keys [N | R] and values [V]; the cache
  holds those full keys and values (H x (N+R+V) numbers per token).
- "absorb": fold wkv_b's key part into the query and its value part into the output; the cache
  holds only kv_norm(latent) [C] and the post-RoPE shared key k_pe [R] (C+R numbers per token).
  A call attends in latent space only when that costs fewer FLOPs than expanding its T keys: one
  new token against a long cache (decode) does; a prefill (S close to T) does not, since latent
  attention spends 2(C+R) per (query, key, head) against N+R+V for expanded keys (for 671B:
  1,152 vs 320). So an absorb prefill expands the latents it caches, as serving engines do;
  `MLA.latent_attention = "always"` forces the latent form (the tests check both agree).

Both use `scaled_dot_product_attention` (fp32 accumulation) unless `hook_pattern` has a hook
attached, in which case the scores are materialised, softmaxed in float32 (float64 in a float64
model) and passed through the hook (so it may read or replace the attention pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ConfigError, ModelArgs
from .attribution import per_head_output, sum_heads
from .hooks import HookPoint
from .layers import Linear, RMSNorm, apply_rope, dense_linear, grad_tracked, wide

ATTN_IMPLS = ("absorb", "naive")


# The two low-rank latents' norms keep 1e-6 whatever rms_norm_eps says, as DeepSeek's code and
# transformers both build them; rms_norm_eps is the residual stream's norms'.
LATENT_NORM_EPS = 1e-6


class MLA(nn.Module):
    def __init__(self, args: ModelArgs, *, attn_impl: str = "absorb", device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.n_heads = args.n_heads
        self.q_lora_rank = args.q_lora_rank
        self.kv_lora_rank = args.kv_lora_rank
        self.nope, self.rope, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.softmax_scale = args.softmax_scale
        self.attn_impl = attn_impl
        qk = self.nope + self.rope
        if self.q_lora_rank == 0:
            self.wq = Linear(args.dim, self.n_heads * qk, **kw)
        else:
            self.wq_a = Linear(args.dim, self.q_lora_rank, **kw)
            self.q_norm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS, **kw)
            self.wq_b = Linear(self.q_lora_rank, self.n_heads * qk, **kw)
        self.wkv_a = Linear(args.dim, self.kv_lora_rank + self.rope, **kw)
        self.kv_norm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS, **kw)
        self.wkv_b = Linear(self.kv_lora_rank, self.n_heads * (self.nope + self.v_dim), **kw)
        self.wo = Linear(self.n_heads * self.v_dim, args.dim, row_parallel=True, **kw)

        self.hook_q_nope = HookPoint()  # [B, S, H, N]
        self.hook_q_pe = HookPoint()  # [B, S, H, R] after RoPE
        self.hook_c_kv = HookPoint()  # [B, S, C] the latent after kv_norm (what absorb caches)
        self.hook_k_pe = HookPoint()  # [B, S, R] the shared rope key after RoPE (cached too)
        self.hook_pattern = HookPoint()  # [B, H, S, T] softmax probabilities, opt-in
        self.hook_z = HookPoint()  # [B, S, H, V] per-head outputs before wo
        self.hook_result = HookPoint()  # [B, S, H, D] each head's term of wo's output, opt-in
        self.cache: dict[str, torch.Tensor] = {}  # static KV cache, see `alloc_cache`
        self.latent_attention = "auto"  # absorb only: "auto" (cheaper form per call) or "always"

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, impl: str) -> None:
        if impl not in ATTN_IMPLS:
            raise ConfigError(f"attn_impl={impl!r}: choose one of {ATTN_IMPLS}")
        self._attn_impl = impl
        self.cache = {}  # the two layouts cache different tensors

    # ------------------------------------------------------------------------------ cache
    def alloc_cache(self, batch: int, length: int) -> None:
        """(Re)allocate the static cache for `batch` rows x `length` positions, keeping what fits."""
        w = self.kv_norm.weight  # the compute dtype (wkv_b may hold FP8)
        kw = dict(device=w.device, dtype=w.dtype)
        if self.attn_impl == "absorb":
            shapes = {"kv": (batch, length, self.kv_lora_rank), "pe": (batch, length, self.rope)}
        else:
            shapes = {"k": (batch, length, self.n_heads, self.nope + self.rope),
                      "v": (batch, length, self.n_heads, self.v_dim)}
        new = {k: torch.zeros(s, **kw) for k, s in shapes.items()}
        for k, old in self.cache.items():
            if k in new:
                b, t = min(batch, old.shape[0]), min(length, old.shape[1])
                new[k][:b, :t] = old[:b, :t]
        self.cache = new

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(rows, positions) the cache can hold; (0, 0) when none is allocated."""
        if not self.cache:
            return 0, 0
        t = next(iter(self.cache.values()))
        return t.shape[0], t.shape[1]

    def _store(self, name: str, value: torch.Tensor, pos: torch.Tensor, n_keys: int) -> torch.Tensor:
        """Write `value` [B, S, ...] at positions `pos` [B, S] and return the prefix [B, n_keys, ...]."""
        buf = self.cache[name]
        bsz = value.shape[0]
        rows = torch.arange(bsz, device=pos.device)[:, None]
        buf[rows, pos] = value.to(buf.dtype)
        return buf[:bsz, :n_keys]

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                mask: torch.Tensor | None, n_keys: int, use_cache: bool) -> torch.Tensor:
        """x [B, S, D]; cos/sin [B, S, R/2]; pos [B, S] absolute positions; mask [B, 1, S, T] bool
        (True = may attend) or None for plain causal attention over this call's tokens;
        n_keys = T. Returns [B, S, D]."""
        bsz, seqlen, _ = x.shape
        q = self.wq(x) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(bsz, seqlen, self.n_heads, self.nope + self.rope)
        # NOTE: sliced, not split: a hook may edit q_nope in place, and with gradients on torch refuses an
        # in-place edit of one of split's views ('output of a function that returns multiple views')
        nope_view, q_pe = q[..., : self.nope], q[..., self.nope :]
        q_nope = self.hook_q_nope(nope_view)  # [B, S, H, N]
        q_pe = self.hook_q_pe(apply_rope(q_pe, cos, sin))  # [B, S, H, R]

        kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope], dim=-1)
        kv = self.hook_c_kv(self.kv_norm(kv))  # [B, S, C]
        k_pe = self.hook_k_pe(apply_rope(k_pe, cos, sin))  # [B, S, R]

        if self.attn_impl == "absorb":
            # NOTE: absorb multiplies by wkv_b's blocks directly, so it reads the dense weight: an
            # FP8-resident wkv_b is dequantised once and kept (Linear.dense_weight), trading
            # kv_lora_rank x H x (N+V) compute-dtype numbers per layer for no per-call dequantisation.
            wkv_b = self.wkv_b.dense_weight().view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
            if use_cache:
                kv = self._store("kv", kv, pos, n_keys)  # [B, T, C]
                k_pe = self._store("pe", k_pe, pos, n_keys)  # [B, T, R]
            if self.latent_attention != "always" and self._expand_is_cheaper(seqlen, kv.shape[1]):
                kvb = dense_linear(kv, wkv_b.flatten(0, 1)).view(bsz, kv.shape[1], self.n_heads, self.nope + self.v_dim)
                z = self._attend_expanded(self._query(q, nope_view, q_nope, q_pe), kvb, k_pe, mask)
            else:
                z = self._attend_latent(q_nope, q_pe, kv, k_pe, wkv_b, mask)
        else:
            kvb = self.wkv_b(kv).view(bsz, kv.shape[1], self.n_heads, self.nope + self.v_dim)  # (-1 fails on 0 rows)
            query = self._query(q, nope_view, q_nope, q_pe)
            if use_cache:
                k_nope, v = kvb.split([self.nope, self.v_dim], dim=-1)
                k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1)
                k = self._store("k", k, pos, n_keys)  # [B, T, H, N+R]
                v = self._store("v", v, pos, n_keys)  # [B, T, H, V]
                z = self._attend_kv(query, k, v, mask)
            else:
                z = self._attend_expanded(query, kvb, k_pe, mask)
        z = self.hook_z(z)  # [B, S, H, V]
        if self.hook_result.active:
            return self._through_result(z)
        return self.wo(z.flatten(2))  # [B, S, D]

    def _through_result(self, z: torch.Tensor) -> torch.Tensor:
        """wo(z) with each head's term [B, S, H, D] passed through hook_result (opt-in: H residual
        streams). Only observed, the output is wo's own GEMM, bit for bit (as hook_pattern's fused
        kernel); replaced or edited in place, it is the sum over heads of what the hook left."""
        # NOTE: under torch.inference_mode() the result was an inference tensor, which keeps no version
        # counter: reading it raised "Inference tensors do not track version counter" for every cache of
        # hook_result there (a review); made as a normal tensor, an edit in place is still seen
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                made = per_head_output(self.wo, z)
        else:
            made = per_head_output(self.wo, z)
        version = made._version
        result = self.hook_result(made)
        if result is made and made._version == version:
            return self.wo(z.flatten(2))
        return sum_heads(result, self.wo)

    def _attend_latent(self, q_nope, q_pe, kv, k_pe, wkv_b, mask) -> torch.Tensor:
        """Attention in latent space: kv [B, T, C], k_pe [B, T, R], wkv_b [H, N+V, C] -> z [B, S, H, V]."""
        # NOTE: absorb: score_h(s,t) = q_nope_h(s) . (W_k,h c_t) + q_pe_h(s) . k_pe_t
        #                            = (W_k,h^T q_nope_h(s)) . c_t + ...: keys stay in latent space.
        q_lat = torch.einsum("bshn,hnc->bshc", q_nope, wkv_b[:, : self.nope])  # [B, S, H, C]
        query = torch.cat([q_lat, q_pe], dim=-1).transpose(1, 2)  # [B, H, S, C+R]
        key = torch.cat([kv, k_pe], dim=-1)[:, None]  # [B, 1, T, C+R], shared by all heads
        # NOTE: the values are the latents, i.e. the key's first C dims: passing the whole key
        # as value keeps q, k, v the same width (the fused SDPA kernel needs that); the extra
        # R output dims are dropped.
        out = self._attend(query, key, key, mask)[..., : self.kv_lora_rank]  # [B, H, S, C]
        z = torch.einsum("bhsc,hvc->bshv", out, wkv_b[:, self.nope :])  # [B, S, H, V]
        return z

    def _expand_is_cheaper(self, s: int, t: int) -> bool:
        """FLOPs per head of the expanded form (decompress T keys, attend at width N+R+V) against
        the latent form (fold S queries and outputs through wkv_b, attend at width 2(C+R))."""
        c, nv = self.kv_lora_rank, self.nope + self.v_dim
        expanded = t * c * nv + s * t * (self.nope + self.rope + self.v_dim)
        latent = s * c * nv + s * t * 2 * (c + self.rope)
        return expanded < latent

    def _query(self, q, nope_view, q_nope, q_pe) -> torch.Tensor:
        """The query [B, S, H, N+R] of the expanded forms: [q_nope | q_pe] after their hooks.

        NOTE: written into q, the projection both were split from, when that changes nothing anyone
        can see: q_nope is still q's own slice (its hook, if any, returned it rather than a
        replacement) and no gradient is recorded. The RoPE'd q_pe then overwrites q's pre-RoPE
        values, which no hook exposes. Bit-equal to the concatenation, one [B, S, H, R] copy instead
        of a new [B, S, H, N+R] tensor."""
        if q_nope is nope_view and not grad_tracked(q):
            q[..., self.nope :] = q_pe
            return q
        return torch.cat([q_nope, q_pe], dim=-1)

    def _attend_expanded(self, query, kvb, k_pe, mask) -> torch.Tensor:
        """query [B, S, H, N+R], kvb [B, T, H, N+V] (wkv_b applied to the latents), k_pe [B, T, R]
        -> z [B, S, H, V].

        NOTE: keys and values share one [B, T, H, N+R+V] tensor [k_nope | k_pe | v]: the key is its
        first N+R dims, the value its last max(V, N+R). The fused SDPA kernel needs values as wide
        as keys, and a value's extra leading dims (here k_nope's tail and k_pe) only produce output
        dims that are dropped (each output dim is its own weighted sum of one value dim), so they
        stand in for zero padding: one copy where a key concatenation and a padded value took two."""
        k_nope, v = kvb.split([self.nope, self.v_dim], dim=-1)
        qk, width = self.nope + self.rope, max(self.v_dim, self.nope + self.rope)
        kv = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1), v], dim=-1)
        out = self._attend(query.transpose(1, 2), kv[..., :qk].transpose(1, 2),
                           kv[..., qk + self.v_dim - width :].transpose(1, 2), mask)  # [B, H, S, width]
        return out[..., width - self.v_dim :].transpose(1, 2)

    def _attend_kv(self, query, k, v, mask) -> torch.Tensor:
        """query [B, S, H, N+R], k [B, T, H, N+R], v [B, T, H, V] -> z [B, S, H, V]."""
        # zero-pad values to the key width so the fused SDPA kernel applies; pads dropped after
        v_pad = F.pad(v, (0, self.nope + self.rope - self.v_dim)) if self.v_dim < self.nope + self.rope else v
        out = self._attend(query.transpose(1, 2), k.transpose(1, 2), v_pad.transpose(1, 2), mask)  # [B, H, S, N+R]
        return out[..., : self.v_dim].transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        """q [B, H, S, E], k [B, 1|H, T, E], v [B, 1|H, T, F] -> [B, H, S, F].

        NOTE: with a hook on the pattern, the probabilities are made for it; the output is still the
        fused kernel's unless the hook replaced them or edited them in place (then they are applied
        as the hook left them). Observing a pattern must not change what is observed: in bfloat16
        the materialised product moved logits by 1.4 and the experts of 12 of 256 tokens (a review)."""
        fused = lambda: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.softmax_scale,
            enable_gqa=k.shape[1] != q.shape[1])
        if not self.hook_pattern.active:
            return fused()
        dt = wide(q.dtype)  # float32, or float64 for a float64 model
        scores = torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * self.softmax_scale  # [B, H, S, T]
        if mask is None:
            s, t = scores.shape[-2:]
            mask = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(t - s)
        scores = scores.masked_fill(~mask, float("-inf"))
        made = scores.softmax(dim=-1)  # [B, H, S, T] float32 (or float64)
        version = made._version
        probs = self.hook_pattern(made)
        if probs is made and made._version == version:  # only observed
            return fused()
        return torch.matmul(probs.to(v.dtype), v)
