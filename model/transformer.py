"""The DeepSeek-V3 transformer: blocks, the MTP module, masks and positions, the KV cache.

    model = Transformer(ModelArgs.from_name("tiny"))       # random init (or model.load(ckpt))
    logits = model(tokens)                                   # [B, S, V] for every position
    logits, mtp_logits = model(tokens, mtp=True)             # mtp_logits[:, i] predicts token i+2
    stats = model(tokens, targets=next_ids)                  # TokenStats(nll, top1) [B, S], no [B, S, V]

    # prefill then decode, or chunked prefill, through the static KV cache
    model(prompt, use_cache=True); model(next_tok, start_pos=prompt.shape[1])

    # a batch of different-length texts, right-padded: same logits as each text alone
    model(padded, lengths=torch.tensor([5, 3]))

Legend: B batch, S positions in this call, T key positions, D dim, V vocab.
"""

from __future__ import annotations

import torch
from torch import nn

from .args import InputError, ModelArgs
from .head_stats import check_targets, head_stats, logit_stats
from .hooks import HookedModule, HookPoint
from .indices import BYTES_NOT_IDS, as_int, bytes_not_ids, shown
from .layers import Embedding, Linear, RMSNorm, rope_cos_sin, rope_inv_freq
from .mla import MLA
from .moe import MLP, MoE


class Block(nn.Module):
    """Pre-norm residual block: h += attn(attn_norm(h)); h += ffn(ffn_norm(h))."""

    def __init__(self, layer_id: int, args: ModelArgs, *, attn_impl: str = "absorb", device=None,
                 dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.layer_id = layer_id
        # NOTE: declared in the order forward() reaches them: that order is the hook-name order.
        self.hook_resid_pre = HookPoint()  # [B, S, D] block input
        self.attn_norm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.hook_attn_in = HookPoint()  # [B, S, D] attn_norm(h), the attention input
        self.attn = MLA(args, attn_impl=attn_impl, **kw)
        self.hook_attn_out = HookPoint()  # [B, S, D] attention output (after wo)
        self.hook_resid_mid = HookPoint()  # [B, S, D] after the attention residual add
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.hook_ffn_in = HookPoint()  # [B, S, D] ffn_norm(h)
        self.ffn = MoE(args, **kw) if args.is_moe_layer(layer_id) else MLP(args.dim, args.inter_dim, **kw)
        self.hook_ffn_out = HookPoint()  # [B, S, D] MLP or MoE output (routed + shared)
        self.hook_resid_post = HookPoint()  # [B, S, D] block output

    def forward(self, h: torch.Tensor, cos, sin, pos, mask, n_keys: int, use_cache: bool) -> torch.Tensor:
        h = self.hook_resid_pre(h)
        a = self.hook_attn_in(self.attn_norm(h))
        h = self.hook_resid_mid(h + self.hook_attn_out(self.attn(a, cos, sin, pos, mask, n_keys, use_cache)))
        f = self.hook_ffn_in(self.ffn_norm(h))
        return self.hook_resid_post(h + self.hook_ffn_out(self.ffn(f)))


class MTP(nn.Module):
    """One multi-token-prediction module (checkpoint layer index n_layers + k).

    For position i: h' = eh_proj([enorm(emb(t_{i+1})) ; hnorm(h_i)]) (embedding first, as in the
    released weights), one full block (MLA + MoE), then `norm` (the checkpoint's shared_head.norm)
    and the main model's output head. Embedding and head are shared with the main model.
    """

    def __init__(self, layer_id: int, args: ModelArgs, *, attn_impl: str = "absorb", device=None,
                 dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.enorm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.hnorm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.eh_proj = Linear(2 * args.dim, args.dim, **kw)
        self.hook_in = HookPoint()  # [B, S, D] eh_proj output, the block's input
        self.block = Block(layer_id, args, attn_impl=attn_impl, **kw)
        self.norm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.hook_hidden = HookPoint()  # [B, S, D] after the block and norm
        self.hook_logits = HookPoint()  # [B, S, V] predictions of token i+2

    def forward(self, h, emb_next, head: nn.Module, cos, sin, pos, mask, n_keys, use_cache, logits_at=None,
                targets=None, stats=None):
        """-> (hidden, logits), or (hidden, TokenStats) with `targets`: `stats(x, targets)` computes
        them from the hidden state, unless hook_logits is in use, which then sees the full logits."""
        x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h)], dim=-1))
        x = self.block(self.hook_in(x), cos, sin, pos, mask, n_keys, use_cache)
        x = self.hook_hidden(self.norm(x))
        if targets is not None and not self.hook_logits.active:
            return x, stats(x, targets)
        logits = self.hook_logits(head(_select(x, logits_at)))
        return x, logits if targets is None else logit_stats(logits, targets)


def _check_positions(index, bsz: int, n: int) -> None:
    """`logits_at` ([B, K] positions, or [B]: one a row) fits a batch of `bsz` rows of `n` positions."""
    if index is None:
        return
    if (not isinstance(index, torch.Tensor) or index.is_floating_point() or index.dtype == torch.bool
            or index.dim() not in (1, 2) or index.shape[0] != bsz):
        got = f"shape {tuple(index.shape)} of {index.dtype}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise InputError(f"logits_at: expected integer positions of shape [{bsz}, K] (or [{bsz}]), "
                         f"got {got}")
    if index.numel():
        lo, hi = torch.stack([index.min(), index.max()]).tolist()
        if lo < 0 or hi >= n:
            raise InputError(f"logits_at: positions must be in [0, {n}) (this chunk's), got [{lo}, {hi}]")


def _select(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """x [B, S, D] -> x at positions `index` [B, K] of each row ([B, K, D]); all of x when None."""
    if index is None:
        return x
    index = index.to(device=x.device, dtype=torch.long).reshape(x.shape[0], -1)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class Transformer(HookedModule):
    """DeepSeek-V3 (and V2-style configs): token embedding, `n_layers` blocks of MLA attention and a
    dense MLP (the first `n_dense_layers`) or DeepSeekMoE, the final norm and the output head, plus
    the MTP modules in `mtp` where the checkpoint has them. Made by `model.load(path)` from a
    checkpoint (or from `ModelArgs` for random weights). Its forward takes token ids [B, S] and
    returns logits [B, S, V] (see `forward` for the KV cache, padding, MTP and `targets`); every
    internal tensor passes a named hook point (`hook_names()`, `hooks`, `run_with_cache`)."""

    def __init__(self, args: ModelArgs, *, attn_impl: str = "absorb", device=None, dtype=None,
                 init: bool = True) -> None:
        """Build the model. `dtype` defaults to `args.dtype`; the router stays float32.
        On the meta device nothing is allocated (`init` is then ignored)."""
        super().__init__()
        if dtype is None:
            dtype = getattr(torch, args.dtype)
        kw = dict(device=device, dtype=dtype)
        self.args = args
        self.embed = Embedding(args.vocab_size, args.dim, **kw)
        self.hook_embed = HookPoint()  # [B, S, D]
        self.layers = nn.ModuleList(Block(i, args, attn_impl=attn_impl, **kw) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, **kw)
        self.hook_final = HookPoint()  # [B, S, D] after the final norm (the head's input; MTP's h)
        self.head = Linear(args.dim, args.vocab_size, **kw)
        self.mtp = nn.ModuleList(MTP(args.n_layers + k, args, attn_impl=attn_impl, **kw)
                                 for k in range(args.n_mtp_layers))
        self.register_buffer("rope_inv_freq", rope_inv_freq(args).to(device or torch.get_default_device()),
                             persistent=False)
        self.setup_hooks()
        self._filled: torch.Tensor | None = None  # per row, the positions the main KV cache holds
        self._mtp_filled: dict[int, torch.Tensor | None] = {}  # the same for each MTP block's own cache
        if init and torch.device(device or torch.get_default_device()).type != "meta":
            self.reset_parameters()

    # ------------------------------------------------------------------------- utilities
    def reset_parameters(self, std: float = 0.02, seed: int | None = None) -> None:
        """Random init (normal(0, std) weights, unit norms, zero bias), for tests and training. Also
        recomputes the RoPE frequencies, a buffer that `to_empty()` leaves unset, so that a model
        built on the meta device, moved with `to_empty(device=...)` and reset is whole."""
        with torch.no_grad():
            self.rope_inv_freq.copy_(rope_inv_freq(self.args))
        gen_state = None
        if seed is not None:
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                if isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, std=std)
                else:
                    m.reset_parameters()
        if gen_state is not None:
            torch.random.set_rng_state(gen_state)

    @property
    def attn_impl(self) -> str:
        return self.layers[0].attn.attn_impl

    @attn_impl.setter
    def attn_impl(self, impl: str) -> None:
        """Switch every layer between 'absorb' and 'naive' (drops the KV cache)."""
        for m in self.modules():
            if isinstance(m, MLA):
                m.attn_impl = impl
        self._filled, self._mtp_filled = None, {}

    def attention_modules(self) -> list[MLA]:
        return [m for m in self.modules() if isinstance(m, MLA)]

    def setup_cache(self, batch: int, length: int) -> None:
        """Preallocate the static KV cache for `batch` rows and `length` positions."""
        if length > self.args.max_seq_len:
            raise InputError(f"length={length}: a KV cache longer than max_seq_len={self.args.max_seq_len}")
        for m in self.attention_modules():
            m.alloc_cache(batch, length)

    def reset_cache(self) -> None:
        for m in self.attention_modules():
            m.cache = {}
        self._filled, self._mtp_filled = None, {}

    @staticmethod
    def _filled_after(filled: torch.Tensor | None, start: torch.Tensor, lengths, seqlen: int, bsz: int,
                      fresh: bool) -> torch.Tensor | None:
        """After a pass that wrote a KV cache: how far each row of that cache now holds (`_check_rows`
        refuses a later start past it). A prefill from position 0 sets it; a later chunk extends its
        rows; a later chunk over more rows than are known makes it unknown (None)."""
        end = start + (lengths.to(start.device) if lengths is not None else seqlen)
        if fresh:
            return end.clone()
        if filled is not None and filled.shape[0] >= bsz:
            filled[:bsz] = torch.maximum(filled[:bsz].to(end.device), end)
            return filled
        return None

    def _ensure_cache(self, batch: int, end: int, fresh: bool) -> None:
        rows, length = self.layers[0].attn.cache_shape
        if not fresh and rows < batch:
            raise InputError(f"start_pos > 0 over {batch} rows of tokens, but the KV cache holds {rows} rows: "
                             "prefill with use_cache=True first")
        if rows >= batch and length >= end:
            return
        # grow by doubling, capped at max_seq_len: a static buffer, reallocated only when outgrown
        new_len = min(self.args.max_seq_len, max(end, 2 * length, 256))
        self.setup_cache(max(rows, batch), new_len)

    # ---------------------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0, *,
                lengths: torch.Tensor | None = None, use_cache: bool = False, mtp: bool = False,
                return_hidden: bool = False, logits_at: torch.Tensor | None = None,
                start_at_layer: int = 0, resid: torch.Tensor | None = None, stop_at_layer: int | None = None,
                targets: torch.Tensor | None = None, mtp_targets: torch.Tensor | None = None):
        """tokens [B, S] -> logits [B, S, V] for every position.

        start_pos: where this chunk starts (an int, or a [B] tensor of per-row starts). Above 0 the
            earlier positions are read from the KV cache, which is then required, and a row may not
            start past the positions its cache holds (a gap would be read unwritten).
        lengths: [B] valid tokens of each row in this chunk (right padding). No real token attends
            to padding, so each row's logits equal that row alone; logits at padding are junk.
        use_cache: write this chunk's keys into the static KV cache (for decode / chunked prefill).
        mtp: also run the MTP module (depth 1; configs say 0 or 1): returns (logits, mtp_logits [B, S-1, V]) where
            mtp_logits[:, i] predicts token i+2 from the hidden state at i and token i+1. Only from
            start_pos=0 (a later chunk raises: see `mtp_logits` for decoding).
        return_hidden: also return the final-normed hidden state [B, S, D] (last element).
        logits_at: [B, K] positions within this chunk: apply the output head only there and return
            logits [B, K, V] (generation needs one position per row, not a [B, S, V] prefill tensor).
            Not combinable with mtp=True.
        start_at_layer, resid: run only blocks start_at_layer.. on `resid` [B, S, D], the input of that
            block (what its hook_resid_pre saw in a full pass over the same tokens): the embedding
            and earlier blocks are skipped, so the logits equal the full pass's when resid does (for
            analyses that change a late layer many times, e.g. analyses.importance). No KV cache.
        stop_at_layer: run only the blocks before it and return the residual stream [B, S, D] there, the
            input of block stop_at_layer (0: the embedding; n_layers: the last block's output, before the
            final norm; negative counts from the end), as TransformerLens's stop_at_layer: so
            `forward(tokens, start_at_layer=L, resid=forward(tokens, stop_at_layer=L))` is the whole pass.
            No KV cache, and nothing else to return (no mtp, return_hidden, logits_at or targets).
        targets: [B, S] token ids: return model.head_stats.TokenStats (nll [B, S] float32: the loss of
            targets[:, p] under the prediction at p, NaN where the target is -100, e.g. padding;
            top1 [B, S]: the argmax) in place of the logits. The head then runs a block of rows at a time and no [B, S, V] logits exist, on any rank
            (model/head_stats.py); no gradient. Not combinable with logits_at.
        mtp_targets: [B, S-1] the same for the MTP predictions (mtp=True): row i against token i+2.
        """
        tokens = self._check_tokens(tokens)
        bsz, seqlen = tokens.shape
        dev = tokens.device
        self._check_outputs(bsz, seqlen, mtp, logits_at, targets, mtp_targets)
        start, max_start = self._check_start(start_pos, lengths, bsz, seqlen, dev, mtp)
        if max_start > 0:
            use_cache = True
        end = self._check_end(max_start, seqlen)
        stop = self._check_stop(stop_at_layer, start_at_layer, use_cache, mtp=mtp, return_hidden=return_hidden,
                                logits_at=logits_at is not None, targets=targets is not None)
        pos = start[:, None] + torch.arange(seqlen, device=dev)  # [B, S]
        if use_cache:
            self._ensure_cache(bsz, end, fresh=max_start == 0)
        mask, n_keys = self._mask(pos, start, lengths, seqlen, end, use_cache, max_start)
        cos, sin = rope_cos_sin(pos, self.rope_inv_freq, self.args.rope_attention_factor)

        h, first = self._residual_in(tokens, resid, start_at_layer, use_cache)
        for layer in self.layers[first:stop]:
            h = layer(h, cos, sin, pos, mask, n_keys, use_cache)
        if stop is not None:
            return h
        if use_cache:
            self._note_filled(start, lengths, seqlen, bsz, fresh=max_start == 0)
        return self._outputs(self.hook_final(self.norm(h)), tokens, start, lengths, use_cache, logits_at=logits_at,
                             targets=targets, mtp=mtp, mtp_targets=mtp_targets, return_hidden=return_hidden)

    def _outputs(self, h, tokens, start, lengths, use_cache: bool, *, logits_at, targets, mtp: bool, mtp_targets,
                 return_hidden: bool):
        """What forward returns from the final norm's output h: the logits (or the targets' TokenStats),
        then the MTP module's if asked, then h if asked; a tuple when more than one."""
        out = [self.head(_select(h, logits_at)) if targets is None else self.head_stats(h, targets)]
        if mtp:
            out.append(self.mtp_logits(h, tokens, start, lengths, use_cache, targets=mtp_targets))
        if return_hidden:
            out.append(h)
        return out[0] if len(out) == 1 else tuple(out)

    def _check_start(self, start_pos, lengths, bsz: int, seqlen: int, dev, mtp: bool) -> tuple[torch.Tensor, int]:
        """forward's `_check_rows` against the main KV cache, and mtp=True refused past position 0."""
        start, max_start = self._check_rows(start_pos, lengths, bsz, seqlen, dev, self._filled)
        if mtp and max_start > 0:
            # MTP position i needs token i+1: a chunk's last position waits for the next chunk, so a
            # later chunk's MTP pass would read a cache slot nothing wrote
            raise InputError(f"mtp=True needs start_pos=0, got start_pos up to {max_start} (the MTP pass covers one "
                             "chunk from position 0); to "
                             "draft while decoding, call mtp_logits with the tokens each position needs, as "
                             "generate/decode.py does")
        return start, max_start

    def _residual_in(self, tokens: torch.Tensor, resid, start_at_layer, use_cache: bool) -> tuple[torch.Tensor, int]:
        """(the residual stream the first block run sees, that block's index as an int): the embedded
        tokens from block 0, or `resid` (checked) when forward starts at block `start_at_layer`."""
        start = as_int(start_at_layer)  # numpy's and 0-d tensors' ints too, once for the checks and the slice
        if start is None:
            # NOTE: a float or bool 0 was 'from the embedding' below: 0.0 then torch's bare 'slice indices must
            # be integers' at the layers' slice, False a whole forward (a review)
            raise InputError(f"start_at_layer={shown(start_at_layer)}: must be an integer between 1 and "
                             f"{len(self.layers) - 1} (0, the default, runs every block)")
        if resid is not None and not start:
            raise InputError(f"resid with start_at_layer={start_at_layer!r}: resid is the input of block "
                             "start_at_layer: pass start_at_layer >= 1 with it")
        if not start:
            return self.hook_embed(self.embed(tokens)), 0
        return self._check_resid(resid, tokens, start, use_cache), start

    def _note_filled(self, start: torch.Tensor, lengths, seqlen: int, bsz: int, fresh: bool) -> None:
        """After forward wrote the main KV cache: how far each row now holds; a pass from position 0
        (`fresh`) also empties the MTP blocks' fills."""
        self._filled = self._filled_after(self._filled, start, lengths, seqlen, bsz, fresh=fresh)
        if fresh:  # the MTP blocks' caches hold an earlier prompt's keys until an MTP pass from 0
            self._mtp_filled = {d: torch.zeros_like(start) for d in range(len(self.mtp))}

    def mtp_logits(self, h: torch.Tensor, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0,
                   lengths: torch.Tensor | None = None, use_cache: bool = False,
                   depth: int = 0, logits_at: torch.Tensor | None = None,
                   targets: torch.Tensor | None = None):
        """MTP module `depth` on final-normed hidden states h [B, S, D] of `tokens` [B, S]:
        position i uses h_i and token i+1, so the result is [B, S-1, V], row i predicting token i+2.
        With use_cache the MTP block's own KV cache is written at positions start_pos + i, and a
        start_pos > 0 may not lie past what that cache holds (an MTP pass with use_cache from 0 fills
        it; a main prefill from 0 empties it, since it held the previous prompt's keys).
        logits_at: [B, K] indices into those S-1 positions: the head runs only there -> [B, K, V].
        targets: [B, S-1] token ids: TokenStats against them instead of logits (see forward)."""
        if not len(self.mtp):
            raise InputError("mtp: this model has no MTP module (the checkpoint carried no MTP weights)")
        if logits_at is not None and targets is not None:
            raise InputError("targets with logits_at: targets asks for statistics at every position; logits_at for "
                             "logits at some")
        tokens = self._check_tokens(tokens)  # an id past the vocabulary was an IndexError of the embedding
        bsz, seqlen = tokens.shape
        self._check_mtp_hidden(h, bsz, seqlen - 1)
        if (d := as_int(depth)) is None or not 0 <= d < len(self.mtp):  # an int: a tensor would key _mtp_filled apart
            raise InputError(f"depth={shown(depth)}: this model has {len(self.mtp)} MTP module(s), "
                             f"depth 0 to {len(self.mtp) - 1}")
        depth = d
        start, max_start = self._check_rows(start_pos, lengths, bsz, seqlen, tokens.device,
                                            self._mtp_filled.get(depth), cache=f"MTP block {depth}'s KV cache")
        n = seqlen - 1
        _check_positions(logits_at, bsz, n)
        # the MTP positions (one per token but the last: forward's, when h came from a forward over tokens)
        end = self._check_end(max_start, n, "MTP positions")
        pos = start[:, None] + torch.arange(n, device=tokens.device)
        lens = None if lengths is None else (lengths.to(tokens.device) - 1).clamp(min=0)
        if use_cache:
            self._ensure_cache(bsz, end, fresh=max_start == 0)
        mask, n_keys = self._mask(pos, start, lens, n, end, use_cache, max_start)
        cos, sin = rope_cos_sin(pos, self.rope_inv_freq, self.args.rope_attention_factor)
        _, logits = self.mtp[depth](h[:, :n], self.embed(tokens[:, 1:]), self.head,
                                    cos, sin, pos, mask, n_keys, use_cache, logits_at, targets, self.head_stats)
        if use_cache:
            self._mtp_filled[depth] = self._filled_after(self._mtp_filled.get(depth), start, lens, n, bsz,
                                                         fresh=max_start == 0)
        return logits

    def _check_mtp_hidden(self, h, bsz: int, n: int) -> None:
        """h for mtp_logits: final-normed hidden states [B, >= n, dim] (a shorter or narrower h was a
        RuntimeError of a concatenation deep in the MTP block)."""
        want = f"[{bsz}, at least {n}, {self.args.dim}]"
        if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[0] != bsz or h.shape[1] < n \
                or h.shape[2] != self.args.dim:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise InputError(f"h: expected the hidden states of the tokens' positions, shape {want}, got {got}")

    def _check_end(self, max_start: int, n: int, what: str = "positions") -> int:
        """The end (one past the last position) of `n` positions from `max_start`, the latest row's
        start; positions past max_seq_len (beyond the RoPE scaling and the KV cache's length) are
        refused, naming the tokens and the start (forward and mtp_logits)."""
        end = max_start + n
        if end > self.args.max_seq_len:
            raise InputError(f"tokens: {n} {what} from start_pos={max_start} reach position {end - 1}, past "
                             f"max_seq_len={self.args.max_seq_len}")
        return end

    def head_stats(self, h: torch.Tensor, targets: torch.Tensor):
        """TokenStats of the output head on final-normed hidden states h [B, N, D] against targets
        [B, N] (model/head_stats.py; collective under model parallelism)."""
        return head_stats(self.head, h, targets, self.args.vocab_size, getattr(self, "shards", None))

    def _mask(self, pos, start, lengths, seqlen, end, use_cache, max_start: int):
        """Boolean attention mask [B, 1, S, T] (True = attend) and T, or None for plain causal.

        Key t is visible to the query at absolute position p when t <= p and t lies before the
        row's end (start + length); a padding query also sees itself, so no row is all-masked.

        NOTE: a prefill from position 0 without the cache needs no mask even with `lengths`: under
        right padding a real token at p < length attends keys <= p, all real, so causal attention
        already keeps padding out of every real position (padding queries then see earlier padding
        too; their outputs are junk either way). The fused kernel runs faster without a mask, and
        no [B, 1, S, S] mask is built per forward (the recorder's batches always carry lengths).
        Keys written to the cache are read by later calls, so there the mask is needed."""
        if not use_cache and max_start == 0:
            return None, seqlen
        n_keys = end if use_cache else seqlen
        key = torch.arange(n_keys, device=pos.device)
        row_end = start + (lengths.to(pos.device) if lengths is not None else seqlen)
        q = pos[:, :, None]  # [B, S, 1]
        visible = (key <= q) & ((key < row_end[:, None, None]) | (key == q))
        return visible[:, None], n_keys

    def _check_outputs(self, bsz: int, seqlen: int, mtp: bool, logits_at, targets, mtp_targets) -> None:
        """What forward is asked to return (logits_at, targets, mtp_targets, mtp) fits together and the batch."""
        if logits_at is not None and mtp:
            raise InputError("logits_at with mtp=True: logits_at selects main-model logits; call "
                             "mtp_logits(..., logits_at=) for MTP")
        if logits_at is not None and targets is not None:
            raise InputError("targets with logits_at: targets asks for statistics at every position; logits_at for "
                             "logits at some")
        _check_positions(logits_at, bsz, seqlen)
        if mtp_targets is not None and not mtp:
            raise InputError("mtp_targets with mtp=False: mtp_targets is for the MTP predictions: pass mtp=True "
                             "with it")
        if mtp_targets is not None:  # checked here so that a wrong one is named as the caller named it
            check_targets(mtp_targets, (bsz, max(seqlen - 1, 0)), self.args.vocab_size, "mtp_targets")

    def _check_stop(self, stop_at_layer, start_at_layer, use_cache: bool, **asked: bool) -> int | None:
        """stop_at_layer as the index of the first block forward does not run (None: it runs them all),
        checked against start_at_layer, the KV cache and what else forward is `asked` to return."""
        if stop_at_layer is None:
            return None
        n = len(self.layers)
        stop = as_int(stop_at_layer)
        if stop is None or not -n <= stop <= n:
            raise InputError(f"stop_at_layer={shown(stop_at_layer)}: must be an integer between 0 and {n} (the "
                             f"residual stream into that block; {n}: out of the last) or -{n} to -1 from the end")
        stop += n if stop < 0 else 0
        if stop < (first := as_int(start_at_layer) or 0):
            raise InputError(f"stop_at_layer={shown(stop_at_layer)} is before start_at_layer={first}: no block "
                             "would run")
        if other := next((k for k, v in asked.items() if v), None):
            raise InputError(f"stop_at_layer with {other}: a forward that stops at a block returns the residual "
                             "stream there, and nothing else")
        if use_cache:
            raise InputError("stop_at_layer needs use_cache=False and start_pos=0 (the KV cache of the blocks after "
                             "it would be stale)")
        return stop

    def _check_resid(self, resid, tokens: torch.Tensor, start: int, use_cache: bool) -> torch.Tensor:
        """The residual stream a forward from block `start` (an int, `_residual_in`'s) begins with, checked."""
        if not 0 < start < len(self.layers):
            raise InputError(f"start_at_layer={shown(start)}: must be an integer between 1 and {len(self.layers) - 1}")
        if use_cache:
            raise InputError(f"start_at_layer={start} needs use_cache=False (the skipped blocks' KV cache would be "
                             "stale)")
        want = (*tokens.shape, self.args.dim)
        if not isinstance(resid, torch.Tensor) or tuple(resid.shape) != want:
            got = tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__
            raise InputError(f"resid: expected the input of block {start}, shape {want}, got {got}")
        if resid.dtype != self.embed.weight.dtype:
            raise InputError(f"resid: expected the model's dtype {self.embed.weight.dtype}, got {resid.dtype}")
        return resid

    @staticmethod
    def _check_rows(start_pos, lengths, bsz: int, seqlen: int, dev, filled=None,
                    cache: str = "KV cache") -> tuple[torch.Tensor, int]:
        """start_pos as a [B] long tensor on `dev`, and its largest value, after checking it and
        `lengths` against the batch and, with `filled` (how far each row's cache holds; not known for
        rows past its length), that no row starts past its cache: a gap would be read unwritten
        (zeros, or an earlier prompt's keys).
        One read back from the device for all of it."""
        if isinstance(start_pos, torch.Tensor):
            if start_pos.numel() not in (1, bsz) or start_pos.is_floating_point() or start_pos.dtype == torch.bool:
                raise InputError(f"start_pos: expected an int or {bsz} integer starts (one per row), got "
                                 f"shape {tuple(start_pos.shape)} of {start_pos.dtype}")
            start = start_pos.to(device=dev, dtype=torch.long).reshape(-1).expand(bsz)
        elif as_int(start_pos) is None:
            raise InputError(f"start_pos: expected an int or {bsz} integer starts (one per row), got "
                             f"{shown(start_pos)}")
        else:
            if int(start_pos) < 0:
                raise InputError(f"start_pos must be >= 0, got {int(start_pos)}")
            start = torch.full((bsz,), int(start_pos), device=dev, dtype=torch.long)
        if lengths is not None and (not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (bsz,)
                                    or lengths.is_floating_point() or lengths.dtype == torch.bool):
            got = f"shape {tuple(lengths.shape)} of {lengths.dtype}" if isinstance(lengths, torch.Tensor) \
                else type(lengths).__name__
            raise InputError(f"lengths: expected {bsz} integer lengths (one per row), got {got}")
        if filled is not None and filled.shape[0] < bsz:  # more rows than the cache's fill is known for
            filled = None
        gap = None if filled is None else start - filled[:bsz].to(dev)
        if not bsz or (lengths is None and not isinstance(start_pos, torch.Tensor) and (gap is None or not start_pos)):
            return start, int(start_pos) if bsz else 0  # nothing to read back from the device
        ends = [start.min(), start.max(), gap.max() if gap is not None else start.new_zeros(())]
        ends += [] if lengths is None else [lengths.min().to(dev), lengths.max().to(dev)]
        lo, hi, past, *lens = torch.stack(ends).tolist()
        if lo < 0:
            raise InputError(f"start_pos must be >= 0, got {start.tolist()}")
        if lens and (lens[0] < 0 or lens[1] > seqlen):
            raise InputError(f"lengths must be in [0, {seqlen}] (the tokens of each row in this chunk), "
                             f"got [{lens[0]}, {lens[1]}]")
        if hi > 0 and past > 0:
            rows = (gap > 0).nonzero().flatten().tolist()
            raise InputError(f"start_pos: row(s) {rows[:8]} start past the positions their {cache} holds "
                             f"({[int(filled[r]) for r in rows[:8]]}): the positions between were never written")
        return start, hi

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embed.weight.is_meta:
            raise InputError("this model is on the meta device: it has shapes but no weights to run "
                             "(model.load(..., device='meta') only checks a checkpoint)")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise InputError(f"tokens must be a 2-D [batch, seq] tensor of token ids, got {shape}")
        if tokens.dtype not in (torch.long, torch.int32):
            if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
                raise InputError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
            # NOTE: an int16 or uint16 tensor (ids read from a file of them) was told 'must be integer token
            # ids', which it is (a tour); uint8 is more likely bytes than ids (the forward never took it)
            why = BYTES_NOT_IDS if bytes_not_ids(tokens.dtype) else ".long() converts integer ids"
            raise InputError(f"tokens must be token ids of dtype torch.long or torch.int32, got {tokens.dtype} ({why})")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.args.vocab_size):
            raise InputError(f"tokens: token ids must be in [0, {self.args.vocab_size}); got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens.long()

    # ---------------------------------------------------------------------------- counting
    def param_counts(self) -> dict[str, int]:
        """Parameter counts (works on meta): total main model, activated per token, MTP module.
        Activated leaves out the routed experts a token does not use and, as DeepSeek count it (V3
        36.6B "including 0.9B for the output head", V2 21B, V2-Lite 2.4B), the input embedding table,
        of which a token reads one row (it counted the whole table: 37.55B; a review)."""
        a = self.args
        main = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("mtp."))
        mtp = sum(p.numel() for n, p in self.named_parameters() if n.startswith("mtp."))
        per_expert = 3 * a.dim * a.moe_inter_dim
        inactive = a.n_moe_layers * (a.n_routed_experts - a.n_activated_experts) * per_expert
        return {"main": main, "activated": main - inactive - self.embed.weight.numel(), "mtp": mtp,
                "mtp_activated": mtp - len(self.mtp) * (a.n_routed_experts - a.n_activated_experts) * per_expert}
