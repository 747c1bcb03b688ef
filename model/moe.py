"""DeepSeekMoE: the router (Gate), routed experts, shared experts, and the dense SwiGLU MLP.

Legend: T = tokens (batch x positions, flattened), D = model dim, E = routed experts,
K = experts per token (top-k), G = expert groups, I = expert hidden dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .hooks import HookPoint
from .fp8 import quantize_block
from .frozen import packed_experts
from .gemm import onednn_linear, onednn_swiglu
from .kernels import act_quant, dequant_for_gemm, fp8_matmul
from .layers import (ONEDNN_ROW_BUCKET, Linear, dense_linear, experts_on_onednn, fp8_wide, grad_tracked,
                     onednn_eligible, wide)


# the most bytes of gathered expert rows Experts._gathered holds at once: under the heap's 64 MiB
# mapping threshold (probe.job.bound_heap), so a slab is reused memory, not fresh pages
GATHER_BYTES = 32 << 20
# the padded oneDNN experts run only where the experts that have tokens average at least this many
# rows: at decode's 1-3 rows F.linear is the faster (Experts._padding_pays)
ONEDNN_MIN_MEAN_ROWS = 16


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). Dense layers and the shared experts."""

    def __init__(self, dim: int, inter_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.w1 = Linear(dim, inter_dim, device=device, dtype=dtype)
        self.w2 = Linear(inter_dim, dim, row_parallel=True, device=device, dtype=dtype)
        self.w3 = Linear(dim, inter_dim, device=device, dtype=dtype)
        self.hook_hidden = HookPoint()  # [B, S, I] silu(w1 x) * w3 x, the input of w2 (this rank's I under TP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.hook_hidden(F.silu(self.w1(x)) * self.w3(x)))


class Gate(nn.Module):
    """The router. Weight and bias are float32 and the scores are computed in float32, or in float64
    for a float64 model (layers.wide): cast to float32 there, two computations of the same float64
    input that differ in its last bits (another summation order: a sharded model against a whole
    one) could round it to neighbouring float32 values, and the weights would then differ in their
    last float32 bits (seen in tests/e2e/test_mp_jobs.py), or a near-tie choice flip.

    1. logits = x W^T; scores = sigmoid(logits) (V3) or softmax(logits) (V2)        [T, E]
    2. selection scores = scores + bias (sigmoid models always carry the bias)        [T, E]
    3. if G > 1: a group's score is the sum of its top-2 selection scores (with bias)
       or its max (no bias)                                                           [T, G]
       experts outside the best `n_limited_groups` groups get -inf
    4. ids = top-k of the selection scores (sorted, best first)                       [T, K]
    5. weights = the UNBIASED scores at ids, normalised to sum 1 when `norm_topk_prob`,
       times route_scale                                                              [T, K]
    """

    def __init__(self, args: ModelArgs, *, device=None) -> None:
        super().__init__()
        self.n_experts = args.n_routed_experts
        self.topk = args.n_activated_experts
        self.n_groups = args.n_expert_groups
        self.topk_groups = args.n_limited_groups
        self.score_func = args.score_func
        self.route_scale = args.route_scale
        self.norm_topk_prob = args.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(self.n_experts, args.dim, device=device, dtype=torch.float32))
        # The aux-loss-free balancing bias: updated by the training loop, never by gradients.
        if self.score_func == "sigmoid":
            self.register_buffer("bias", torch.zeros(self.n_experts, device=device, dtype=torch.float32))
        else:
            self.bias = None

        self.hook_logits = HookPoint()  # [T, E]
        self.hook_scores = HookPoint()  # [T, E] unbiased scores (the weights come from these)
        self.hook_select_scores = HookPoint()  # [T, E] biased scores used to choose, before group masking
        if self.n_groups > 1:  # group-limited routing only: a gate without groups has no such hook point
            self.hook_group_scores = HookPoint()  # [T, G] each group's score; the best n_limited_groups are kept
        self.hook_allowed_scores = HookPoint()  # [T, E] selection scores after group masking (-inf = excluded)
        self.hook_topk_ids = HookPoint(index_bound=self.n_experts)  # [T, K] chosen experts, best first
        self.hook_topk_weights = HookPoint()  # [T, K] float32 (float64 model: float64), normalised, times route_scale

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (weights_TK float32 (float64 in a float64 model), ids_TK, scores_TE)."""
        dt = wide(x_TD.dtype)
        logits_TE = self.hook_logits(F.linear(x_TD.to(dt), self.weight.to(dt)))
        if self.score_func == "softmax":
            scores_TE = logits_TE.softmax(dim=-1)
        else:
            scores_TE = logits_TE.sigmoid()
        scores_TE = self.hook_scores(scores_TE)
        # NOTE: a hook that edits the selection scores in place must edit only them: without a bias they
        # were the weights' own scores (and without groups the allowed scores the selection's), so the
        # edit moved the weights and the cached scores too (a review). Copied where a hook is attached.
        if self.bias is not None:
            select_TE = scores_TE + self.bias
        elif self.hook_select_scores.active or (self.n_groups == 1 and self.hook_allowed_scores.active):
            select_TE = scores_TE.clone()
        else:
            select_TE = scores_TE
        select_TE = self.hook_select_scores(select_TE)
        if self.n_groups > 1:
            grouped = select_TE.unflatten(-1, (self.n_groups, -1))  # [T, G, E/G]
            if self.bias is None:
                group_scores_TG = grouped.amax(dim=-1)
            else:
                group_scores_TG = grouped.topk(2, dim=-1).values.sum(dim=-1)
            group_scores_TG = self.hook_group_scores(group_scores_TG)
            keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool)
            keep_TG.scatter_(1, group_scores_TG.topk(self.topk_groups, dim=-1).indices, True)
            select_TE = grouped.masked_fill(~keep_TG[..., None], float("-inf")).flatten(1)
        elif self.hook_allowed_scores.active and self.hook_select_scores.active:
            select_TE = select_TE.clone()  # the selection hook's tensor (a cache may hold it): not edited here
        select_TE = self.hook_allowed_scores(select_TE)
        top = select_TE.topk(self.topk, dim=-1)
        if self._selection_hooked():
            self._check_choice(top.values)
        ids_TK = self.hook_topk_ids(top.indices)
        # NOTE: the bias picks the experts; the weights come from the unbiased scores.
        try:
            weights_TK = scores_TE.gather(1, ids_TK)
        except RuntimeError as e:  # a hook's edit in place: a returned tensor is checked at the hook point
            if not self.hook_topk_ids.active or "out of bounds" not in str(e):
                raise
            raise ValueError(f"the hook on {self.hook_topk_ids.name} left an expert id outside [0, {self.n_experts}) "
                             f"in place ({e})") from None
        if self.norm_topk_prob:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        weights_TK = self.hook_topk_weights(weights_TK * self.route_scale)
        return weights_TK, ids_TK, scores_TE

    def _selection_hooked(self) -> bool:
        points = [self.hook_scores, self.hook_select_scores, self.hook_allowed_scores]
        return any(p.active for p in points + ([self.hook_group_scores] if self.n_groups > 1 else []))

    def _check_choice(self, top_TK: torch.Tensor) -> None:
        """A hook that excluded experts (-inf scores) must leave top-k something to choose: where fewer
        than K experts stayed allowed, topk picked among -inf ties, i.e. experts the hook had excluded,
        with real weights and no error (keeping 2 experts out of 256 routed every token to others)."""
        bad = torch.isneginf(top_TK) | torch.isnan(top_TK)
        if not bool(bad.any()):
            return
        rows = bad.any(-1).nonzero().flatten()
        t = int(rows[0])
        left = int(self.topk - bad[t].sum())
        groups = (f"; with {self.n_groups} expert groups, a group is ranked by the sum of its two best scores, so "
                  f"it needs 2 allowed experts, and only the best {self.topk_groups} groups are kept"
                  if self.n_groups > 1 and self.bias is not None else
                  f"; only the best {self.topk_groups} of {self.n_groups} expert groups are kept"
                  if self.n_groups > 1 else "")
        raise ValueError(f"{self.hook_topk_ids.name.rsplit('.', 1)[0]}: the hooks on the router's scores leave "
                         f"{len(rows)} token(s) fewer than the {self.topk} experts each must be routed to (token "
                         f"{t}: {left} allowed, the rest -inf or NaN){groups}; top-k would pick excluded experts. "
                         f"Exclude fewer experts (analyses.ablate.ablated checks a mask before the forward)")

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.weight, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Experts(nn.Module):
    """The routed experts as stacked SwiGLU weights: w1, w3 [E, I, D] and w2 [E, D, I].

    `expert_range` = (first, end) of the experts held here (all of them on one process; a slice
    under expert parallelism). Tokens routed elsewhere contribute nothing here.

    FP8 resident (`make_fp8_()`, or `model.load(..., gemm_impl="fp8")`): w1/w2/w3 are float8_e4m3fn
    with block scales `w1_scale_inv` etc. [E, ceil(out/b), ceil(in/b)] (b = 128), and every expert
    GEMM is the block-scaled FP8 GEMM of `model.kernels` (the input quantised once for w1 and w3);
    with `quantise_activations = False` (gemm_impl="fp8-weights") each expert's weights are
    dequantised into the input's dtype for its GEMMs instead, and the input is not quantised.
    """

    WEIGHTS = ("w1", "w2", "w3")

    def __init__(self, args: ModelArgs, *, device=None, dtype=None) -> None:
        super().__init__()
        E, I, D = args.n_routed_experts, args.moe_inter_dim, args.dim
        self.n_experts = E
        self.expert_range = (0, E)
        self.w1 = nn.Parameter(torch.empty(E, I, D, device=device, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(E, D, I, device=device, dtype=dtype))
        self.w3 = nn.Parameter(torch.empty(E, I, D, device=device, dtype=dtype))
        for name in self.WEIGHTS:  # float32 block scales once FP8 resident
            self.register_buffer(f"{name}_scale_inv", None)
        self.block: int | None = None
        self.scale_fmt: str | None = None
        self.quantise_activations = True  # FP8 resident: quantise the input too (False: weight-only FP8)
        self.wide_output = False  # return the wide (float32) sum: set by model.parallel, which all-reduces it
        # [T, K, D] each chosen expert's output for its token before the routing weight, in the order of
        # hook_topk_ids (zero rows for experts another rank holds); opt-in (K times a residual stream)
        self.hook_expert_out = HookPoint()

    def forward(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
        K = ids_TK.shape[1]
        flat_ids = ids_TK.flatten()  # [T*K]
        order = flat_ids.argsort(stable=True)  # assignments grouped by expert
        counts = torch.bincount(flat_ids, minlength=self.n_experts).tolist()
        # the experts' outputs are summed in wide(dtype) (float32 for bf16; float64 with FP8 activations
        # on the CPU, see model.layers.LAYOUT_FREE_SUMS) and rounded once at the end; under expert
        # parallelism the wide partial sums are all-reduced first (model.parallel)
        fp8_in = (self.w1_scale_inv is not None or self.w3_scale_inv is not None) and self.quantise_activations
        acc = fp8_wide(x_TD.device, x_TD.dtype) if fp8_in else wide(x_TD.dtype)
        if self.hook_expert_out.active:
            return self._per_assignment(x_TD, weights_TK, order, counts, fp8_in, acc)
        tok_A = order // K  # token of each sorted assignment (A = T*K assignments)
        w_A = weights_TK.flatten()[order].to(x_TD.dtype)
        # NOTE: the weights carry a gradient of their own where x does not: a router point cached with
        # detach=False (or a hook's replacement) in a model held still, requires_grad_(False); the
        # in-place paths then failed in torch.mm(out=) (a tour)
        in_place = not grad_tracked(weights_TK)
        if not fp8_in and in_place and self._padding_pays(x_TD, counts):
            out_TD = self._onednn_padded(x_TD, w_A, tok_A, counts)
        elif in_place and self._dense_inference(x_TD):
            out_TD = self._gathered(x_TD, w_A, tok_A, counts, acc)
        else:
            out_TD = self._one_expert_at_a_time(x_TD, w_A, tok_A, counts, fp8_in, acc)
        return out_TD if self.wide_output else out_TD.to(x_TD.dtype)

    def _per_assignment(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, order: torch.Tensor, counts: list[int],
                        fp8_in: bool, acc: torch.dtype) -> torch.Tensor:
        """The weighted sum through hook_expert_out: each local expert's SwiGLU on its rows (`order`,
        `counts`: forward's assignments grouped by expert), unweighted ([T, K, D] in x's dtype, rows of
        other ranks' experts zero), the hook, then sum_k w_k out_k in `acc`. The same sum as forward's
        other paths to rounding (the weight multiplies after w2, as on the FP8 path, and the K outputs
        are added in order)."""
        T, K = weights_TK.shape
        first, end = self.expert_range
        out_AD = torch.zeros(T * K, x_TD.shape[1], dtype=x_TD.dtype, device=x_TD.device)
        start = sum(counts[:first])
        for le, n in enumerate(counts[first:end]):
            if n:
                rows = order[start : start + n]  # assignments to this expert, in (token, k) order
                xe = x_TD.index_select(0, rows // K)
                xq = act_quant(xe, self.block, self.scale_fmt) if fp8_in else None
                h = F.silu(self._linear(xe, "w1", le, xq)) * self._linear(xe, "w3", le, xq)
                out_AD.index_copy_(0, rows, self._linear(h, "w2", le, out_dtype=acc).to(x_TD.dtype))
            start += n
        out_TKD = self.hook_expert_out(out_AD.view(T, K, -1))
        out_TD = (out_TKD.to(acc) * weights_TK.to(acc)[..., None]).sum(dim=1)
        return out_TD if self.wide_output else out_TD.to(x_TD.dtype)

    def _padding_pays(self, x_TD: torch.Tensor, counts: list[int]) -> bool:
        """Whether to run _onednn_padded: float32 GEMMs that oneDNN can run (model.layers.onednn_eligible),
        experts of a shape that runs faster there (measured per shape, model/gemm.py's experts_choice,
        whichever path the model's other GEMMs take), and
        the local experts that have tokens have ONEDNN_MIN_MEAN_ROWS rows each on average. A decode step
        or an MTP verify pass gives an expert 1-3 rows: padded to 16 that was 16x the work, and the
        MTP decode of benchmarks/bench_decode.py ran 1.4x slower than on F.linear."""
        first, end = self.expert_range
        local = [n for n in counts[first:end] if n]
        if not local:
            return False
        mean = sum(local) // len(local)
        _, inter, dim = self.w1.shape
        return (mean >= ONEDNN_MIN_MEAN_ROWS and onednn_eligible(x_TD[:mean], self.w1[0])
                and experts_on_onednn(dim, inter))

    def _dense_inference(self, x_TD: torch.Tensor) -> bool:
        """Dense (not FP8-resident) weights and no gradient to record: _gathered's in-place steps apply."""
        if any(getattr(self, f"{n}_scale_inv") is not None for n in self.WEIGHTS):
            return False
        return not grad_tracked(x_TD, self.w1)

    def _gathered(self, x_TD, w_A, tok_A, counts: list[int], acc) -> torch.Tensor:
        """_one_expert_at_a_time's sum for dense weights without autograd (F.linear inference, CPU
        or GPU), bit-equal to it, in fewer and larger steps: the rows of consecutive local experts
        are gathered into one slab (at most GATHER_BYTES; one slab at the sizes we run), each
        expert's SwiGLU runs in place on its slice of the slab, its w2 GEMM writes over its own
        input rows (spent by then), and one scatter-add per slab sums the outputs. Per expert that
        is three GEMMs and three in-place multiplies, against a gather, a scatter and three fresh
        temporaries; on benchmarks/bench_prefill.py's 32-expert layers (hidden 512, float32, 2
        threads) the experts ran 1.09x faster this way."""
        first, end = self.expert_range
        out_TD = torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device)
        cap = max(1, GATHER_BYTES // (x_TD.shape[1] * x_TD.element_size()))  # rows per slab
        start, e = sum(counts[:first]), first
        while e < end:
            stop, rows = e + 1, counts[e]  # the slab: experts e..stop-1 (at least one)
            while stop < end and rows + counts[stop] <= cap:
                rows, stop = rows + counts[stop], stop + 1
            if rows:
                tok = tok_A[start : start + rows]
                x_R = x_TD.index_select(0, tok)  # [rows, D]
                r = 0
                for le in range(e - first, stop - first):
                    n = counts[first + le]
                    if n:
                        xe = x_R[r : r + n]
                        # the same products in the same order as _one_expert_at_a_time: silu(x W1^T) * (x W3^T) * w
                        h = F.silu(F.linear(xe, self.w1[le]), inplace=True)
                        h.mul_(F.linear(xe, self.w3[le])).mul_(w_A[start + r : start + r + n, None])
                        torch.mm(h, self.w2[le].t(), out=xe)
                    r += n
                out_TD.index_add_(0, tok, x_R.to(acc))
            start, e = start + rows, stop
        return out_TD

    def _one_expert_at_a_time(self, x_TD, w_A, tok_A, counts: list[int], fp8_in: bool, acc) -> torch.Tensor:
        """The experts' weighted sum [T, D] in `acc`: for each local expert, gather its rows, run its
        SwiGLU, scatter-add its outputs. The path of FP8-resident weights (each expert's input
        quantised once for w1 and w3) and of autograd (no in-place steps); dense weights without a
        gradient take _gathered, the same sum in fewer steps. Dense weights run F.linear here, not
        oneDNN: oneDNN compiles a GEMM per row count, and at a few rows F.linear is the faster
        (1.2-1.7x at 1-16 rows of these shapes)."""
        first, end = self.expert_range
        out_TD = torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device)
        start = 0
        for e, n in enumerate(counts):
            if n and first <= e < end:
                tok = tok_A[start : start + n]
                xe = x_TD.index_select(0, tok)  # [n, D]
                le = e - first
                xq = act_quant(xe, self.block, self.scale_fmt) if fp8_in else None
                h = F.silu(self._linear(xe, "w1", le, xq)) * self._linear(xe, "w3", le, xq)  # [n, I]
                w = w_A[start : start + n, None]
                if fp8_in:
                    # NOTE: with FP8 activations the weight scales the expert's output, as DeepSeek's
                    # reference does: w2's input is quantised, and (w * h) quantises to other FP8 codes
                    # than h (another bf16 rounding first, and ue8m0's power-of-two scales do not follow
                    # w): 1.2% (V3) and 3.7% (ue8m0) apart in the routed output (a review)
                    y = self._linear(h, "w2", le, out_dtype=acc).to(acc) * w.to(acc)
                else:  # the weight scales the [n, I] hidden state: w * (h W2^T) == (w * h) W2^T
                    y = self._linear(h * w, "w2", le, out_dtype=acc).to(acc)
                out_TD.index_add_(0, tok, y)
            start += n
        return out_TD

    def _onednn_padded(self, x_TD, w_A, tok_A, counts: list[int]) -> torch.Tensor:
        """The same sum for float32 on oneDNN (the CPU prefill path), arranged for its cost: oneDNN
        compiles a GEMM per row count, so each expert's rows are padded to a multiple of
        ONEDNN_ROW_BUCKET, and the rows of all local experts are laid out in one [P, D] gather (pad
        rows copy token 0 and are scattered into a row that is dropped). Per expert: two GEMMs on
        row slices of it, the first over W1 and W3 stacked ([2I, D], one pre-packed copy in a frozen
        model, per layer: model.frozen.packed_experts) followed by silu(x W1^T) * (x W3^T), the second over W2
        after one multiply by the routing weights; one scatter-add of all outputs at the end.
        Bit-equal to an expert-at-a-time loop of separate GEMMs on oneDNN (tested), ~1.1x faster
        than that on a 32-expert layer of benchmarks/bench_prefill.py, and the stacked GEMM 1.06x
        faster again (docs/performance.md). Returns [T, D] float32 (the first T rows of a [T + 1, D] sum)."""
        first, end = self.expert_range
        T, dev = x_TD.shape[0], x_TD.device
        lo, hi = sum(counts[:first]), sum(counts[:end])  # this rank's experts' assignments, in sorted order
        n_E = torch.tensor(counts[first:end], device=dev)
        m_E = (n_E + ONEDNN_ROW_BUCKET - 1) // ONEDNN_ROW_BUCKET * ONEDNN_ROW_BUCKET
        e_L = torch.repeat_interleave(torch.arange(len(n_E), device=dev), n_E)  # local expert of each
        pos_L = (m_E.cumsum(0) - m_E)[e_L] + torch.arange(hi - lo, device=dev) - (n_E.cumsum(0) - n_E)[e_L]
        P = int(m_E.sum())
        src = torch.zeros(P, dtype=torch.long, device=dev).index_copy_(0, pos_L, tok_A[lo:hi])
        dst = torch.full((P,), T, dtype=torch.long, device=dev).index_copy_(0, pos_L, tok_A[lo:hi])
        w_P = torch.zeros(P, 1, dtype=x_TD.dtype, device=dev).index_copy_(0, pos_L, w_A[lo:hi, None])
        x_P = x_TD.index_select(0, src)  # [P, D]
        y_P = torch.empty_like(x_P)
        packed = packed_experts(self.w1, self.w2, self.w3)  # None outside model.frozen's scope
        a = 0
        for le, m in enumerate(m_E.tolist()):
            if m:
                # outside the scope: the stacked W13 made, and both weights reordered, on every call
                w13, w2 = packed[le] if packed else (torch.cat([self.w1[le], self.w3[le]]), self.w2[le])
                h = onednn_swiglu(x_P[a : a + m], w13)
                y_P[a : a + m].copy_(onednn_linear(h.mul_(w_P[a : a + m]), w2))
            a += m
        return torch.zeros(T + 1, x_TD.shape[1], dtype=x_TD.dtype, device=dev).index_add_(0, dst, y_P)[:T]

    def _linear(self, x: torch.Tensor, name: str, le: int, xq=None, out_dtype=None) -> torch.Tensor:
        """x W^T for local expert `le`'s weight `name`; xq = (q, s) reuses a quantised x; the FP8 GEMM
        writes `out_dtype` (default x's dtype; dense GEMMs always give x's dtype)."""
        w, s = getattr(self, name)[le], getattr(self, f"{name}_scale_inv")
        if s is None:
            return F.linear(x, w)
        if w.dtype != torch.float8_e4m3fn:
            raise RuntimeError(f"FP8-resident experts hold a {w.dtype} {name} (was the model cast with .to(dtype)?)")
        if not self.quantise_activations:  # weight-only FP8: this expert's weight dequantised for the GEMM
            return dense_linear(x, dequant_for_gemm(w, s[le], self.block, x))
        if xq is None:
            xq = act_quant(x, self.block, self.scale_fmt)
        return fp8_matmul(x, xq, w, s[le], self.block, out_dtype or x.dtype)

    def make_fp8_(self, block: int = 128, scale_fmt: str | None = None,
                  names: tuple[str, ...] = WEIGHTS) -> "Experts":
        """Switch `names` to FP8-resident storage in place (quantised per expert; on the meta
        device only the storage changes and the loader fills it)."""
        if scale_fmt not in (None, "ue8m0"):
            raise ValueError(f"scale_fmt={scale_fmt!r} must be None or 'ue8m0'")
        for name in names:
            if getattr(self, f"{name}_scale_inv") is not None:
                raise ValueError(f"experts' {name} is already FP8 resident")
            w = getattr(self, name).detach()
            nb = (w.shape[0], -(-w.shape[1] // block), -(-w.shape[2] // block))
            if w.device.type == "meta":
                q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
                s = torch.empty(nb, dtype=torch.float32, device=w.device)
            else:
                qs = [quantize_block(we, (block, block), scale_fmt) for we in w]
                q = torch.stack([a for a, _ in qs]) if qs else w.to(torch.float8_e4m3fn)
                s = torch.stack([b for _, b in qs]) if qs else torch.empty(nb, dtype=torch.float32)
            setattr(self, name, nn.Parameter(q, requires_grad=False))
            setattr(self, f"{name}_scale_inv", s)
        self.block, self.scale_fmt = block, scale_fmt
        return self

    def reset_parameters(self, std: float = 0.02) -> None:
        for name in self.WEIGHTS:
            w, s = getattr(self, name), getattr(self, f"{name}_scale_inv")
            if s is None:
                nn.init.normal_(w, std=std)
                continue
            with torch.no_grad():  # draw dense, store quantised
                for e in range(w.shape[0]):
                    q, sc = quantize_block(torch.empty(w.shape[1:], device=w.device).normal_(std=std),
                                           (self.block, self.block), self.scale_fmt)
                    w[e].copy_(q)
                    s[e].copy_(sc)


class MoE(nn.Module):
    """out = sum_k weight_k * expert_{id_k}(x) + shared_experts(x); no capacity limit, no dropping."""

    def __init__(self, args: ModelArgs, *, device=None, dtype=None) -> None:
        super().__init__()
        self.gate = Gate(args, device=device)
        self.experts = Experts(args, device=device, dtype=dtype)
        # registered before the shared experts, so that hook_names() lists the points in forward order
        self.hook_routed_out = HookPoint()  # [B, S, D] weighted sum of the routed experts
        self.shared_experts = MLP(args.dim, args.n_shared_experts * args.moe_inter_dim,
                                  device=device, dtype=dtype) if args.n_shared_experts else None
        self.hook_shared_out = HookPoint()  # [B, S, D] shared experts' output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        weights_TK, ids_TK, _ = self.gate(x_TD)
        routed = self.hook_routed_out(self.experts(x_TD, weights_TK, ids_TK).view(shape))
        if self.shared_experts is None:
            return routed
        return routed + self.hook_shared_out(self.shared_experts(x))
