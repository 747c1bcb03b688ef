"""`generate()`: a batch of token-id prompts through the static KV cache, plainly or with MTP drafts.

Three steps: prefill (every prompt, right-padded, in one forward pass; the first token sampled),
then either decode (one token per row per pass) or decode with drafts (the MTP module drafts the
token after next; each pass verifies [newest, draft] and yields 1 or 2 tokens). Finished rows stay
in the batch, fed at a clamped position, and their outputs are ignored.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from model.args import InputError
from model.indices import BYTES_NOT_IDS, as_int, as_ints, bytes_not_ids, shown
from model.parallel import broadcast_from_first

from .sampling import GenerateError, SamplingParams, propose, verify_drafts

OnToken = Callable[[int, int, bool], None]  # (prompt index, token id, row finished)
DraftFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mtp logits [B, V], seq index [B]) -> [B]


@dataclass
class GenerationOutput:
    """What `generate` returns; lists are per prompt, in input order."""
    tokens: list[list[int]]  # generated ids (a stop token, when hit, is the last one)
    finish_reasons: list[str]  # "stop" (a stop token) or "length" (max_new_tokens / max_seq_len)
    forward_passes: list[int]  # main-model forward passes while the row was generating (prefill counts 1)
    total_forward_passes: int = 0  # main-model forward calls for the whole batch
    mtp_passes: int = 0  # MTP-module calls (drafting), not counted above
    # speculative decoding: [prompt][draft position] (depth 1: one position)
    drafts_proposed: list[list[int]] = field(default_factory=list)
    drafts_accepted: list[list[int]] = field(default_factory=list)
    # every verified draft: (sequence index it was proposed for, token, accepted)
    drafts: list[list[tuple[int, int, bool]]] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> list[float]:
        return [len(t) / max(f, 1) for t, f in zip(self.tokens, self.forward_passes)]

    @property
    def mean_tokens_per_forward(self) -> float:
        return sum(map(len, self.tokens)) / max(sum(self.forward_passes), 1)

    @property
    def acceptance_rate(self) -> float | None:
        proposed = sum(map(sum, self.drafts_proposed))
        return sum(map(sum, self.drafts_accepted)) / proposed if proposed else None

    def summary(self) -> dict:
        return {"prompts": len(self.tokens), "generated_tokens": sum(map(len, self.tokens)),
                "forward_passes": sum(self.forward_passes), "batch_forward_calls": self.total_forward_passes,
                "mtp_passes": self.mtp_passes, "tokens_per_forward": round(self.mean_tokens_per_forward, 4),
                "drafts_proposed": sum(map(sum, self.drafts_proposed)),
                "drafts_accepted": sum(map(sum, self.drafts_accepted)),
                "acceptance_rate": self.acceptance_rate}


@dataclass
class _Batch:
    """The rows being generated: budgets, what is done, and the output being filled."""
    model: object
    sampling: SamplingParams
    out: GenerationOutput
    budget: list[int]
    done: list[bool]
    stop: set[int]
    cache_len: int
    on_token: OnToken | None
    gen: torch.Generator | None
    sync: Callable  # the first rank's tensor on every rank of a sharded model
    pos: torch.Tensor | None = None  # [B] sequence index of each row's newest token
    newest: torch.Tensor | None = None  # [B] each row's newest token (not yet fed to the main model)

    def commit(self, i: int, tok: int) -> bool:
        """Append a token to row i; True when the row is finished."""
        self.out.tokens[i].append(tok)
        if tok in self.stop:
            self.out.finish_reasons[i] = "stop"
        elif len(self.out.tokens[i]) >= self.budget[i]:
            self.out.finish_reasons[i] = "length"
        self.done[i] = bool(self.out.finish_reasons[i])
        if self.on_token is not None:
            self.on_token(i, tok, self.done[i])
        return self.done[i]

    def starts(self, chunk: int) -> torch.Tensor:
        """Feed positions: finished rows stay in place (their outputs are ignored), within the cache."""
        done = torch.tensor(self.done, device=self.pos.device)
        return torch.where(done, self.pos.clamp(max=self.cache_len - chunk), self.pos)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             sampling: SamplingParams | None = None, stop_ids: Sequence[int] = (), mtp: bool = False,
             on_token: OnToken | None = None, draft_fn: DraftFn | None = None) -> GenerationOutput:
    """Generate for a batch of token-id prompts (different lengths allowed) with the static KV cache.

    stop_ids: the token ids that end a row (one id or a list of them; the stop token is the row's last).
    mtp: speculative decoding with MTP drafts (see the package docstring); needs MTP weights.
    on_token(i, token, finished): called as each token of prompt i is committed (streaming).
    draft_fn: replaces the MTP module's own draft choice, e.g. an oracle for upper-bound studies;
        gets the MTP logits [B, V] and the sequence index each draft is for; returns [B] token ids.
    """
    _check(model, prompts, max_new_tokens, mtp)
    _check_options(sampling, on_token, draft_fn, mtp)
    b = _start(model, prompts, max_new_tokens, sampling or SamplingParams(), _stop_set(stop_ids), mtp, on_token)
    if all(b.done):  # nothing to generate (max_new_tokens=0, or prompts filling max_seq_len)
        return b.out
    padded, lengths, h = _prefill(b, prompts)
    if mtp:
        _decode_with_drafts(b, padded, lengths, h, draft_fn)
    else:
        _decode(b)
    return b.out


class PromptError(GenerateError):
    """A prompt `generate` cannot take: `index` in the batch and `why`, which names no prompt, so that a
    caller that knows where prompt i came from (`python -m generate`: --prompt #2, a file's line) can
    name it so; the message alone says 'prompt {index}: {why}'."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"prompt {index}: {why}")
        self.index, self.why = index, why


def _check(model, prompts, max_new_tokens: int, mtp: bool) -> None:
    if isinstance(prompts, (str, bytes)):
        raise GenerateError("prompts: expected a list of token-id lists (tokenise text first, e.g. with "
                            "generate.text), got a string")
    if not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):  # None, a generator: len()'s TypeError
        raise GenerateError(f"prompts: expected a list of token-id lists, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise GenerateError("no prompts")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise GenerateError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    for i, p in enumerate(prompts):
        if why := _prompt_problem(model.args, p):
            raise PromptError(i, why)
    if mtp and not len(model.mtp):
        raise GenerateError("mtp=True but this model has no MTP module (its checkpoint has no MTP layer)")


def _check_options(sampling, on_token, draft_fn, mtp: bool) -> None:
    """The options' kinds, before the cache is sized and the prefill runs: a dict as sampling was an
    AttributeError ('dict' object has no attribute 'seed'), and an on_token or draft_fn that is no function a
    TypeError at the first token or draft, after the prefill (a bug hunt); a draft_fn without mtp=True, which
    drafts nothing, was ignored in silence (an oracle study then measured plain decoding)."""
    if sampling is not None and not isinstance(sampling, SamplingParams):
        raise GenerateError(f"sampling={shown(sampling)}: expected a SamplingParams (e.g. SamplingParams(temperature="
                            "0.6, top_p=0.95)), or None for greedy decoding")
    for name, fn in (("on_token", on_token), ("draft_fn", draft_fn)):
        if fn is not None and not callable(fn):
            raise GenerateError(f"{name}={shown(fn)}: expected a function, or None")
    if draft_fn is not None and not mtp:
        raise GenerateError("draft_fn is given but mtp=False: drafts are made only with mtp=True (speculative "
                            "decoding with the MTP module); pass mtp=True, or no draft_fn")


def _stop_set(stop_ids) -> set[int]:
    """`stop_ids` as a set of ints: one id or ids (model/indices.py's integers). Each was int()'d: stop_ids=1
    was a TypeError ('int' object is not iterable), "12" stopped at ids 1 and 2, and 1.5 at id 1 (a bug hunt)."""
    try:
        return set(as_ints(stop_ids, "stop_ids"))
    except InputError as e:
        raise GenerateError(str(e)) from None


def _prompt_problem(args, p) -> str:
    """Why the model cannot take prompt `p` ('' when it can): not token ids, none, out of the
    vocabulary, or longer than max_seq_len."""
    if isinstance(p, (str, bytes, bytearray, memoryview)):  # a bytearray's bytes were read as ids (a review)
        return f"expected token ids, got {'a string' if isinstance(p, str) else type(p).__name__} (tokenise it first)"
    if as_int(p) is not None:  # one prompt's ids given as the batch ([1, 2, 3], a 1-D tensor): len()'s TypeError
        return (f"a single token id ({as_int(p)}), not a list of them: prompts is a list of prompts, each a list "
                "of token ids (one prompt: [ids])")
    if not hasattr(p, "__len__"):  # None, a generator
        return f"expected token ids (a list, array or tensor of them), got {type(p).__name__}"
    if len(p) == 0:
        return "no tokens"
    try:  # ragged ([1, [2]]) or of strings (['a']): torch's TypeError or ValueError from the conversion
        ids = torch.as_tensor(list(p) if not isinstance(p, torch.Tensor) else p)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a flat list of integer token ids, got {shown(p)}"
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.dim() != 1:
        return f"expected a flat list of integer token ids, got {ids.dtype} of shape {tuple(ids.shape)}"
    if bytes_not_ids(ids.dtype):  # a text's bytes were generated from as if they were its tokens (a tour)
        return f"got {ids.dtype}: {BYTES_NOT_IDS}"
    ids = ids.long()  # uint16 ids (a token file's) were torch's NotImplementedError '"min_all" not implemented' (a tour)
    if int(ids.min()) < 0 or int(ids.max()) >= args.vocab_size:
        return f"token ids must be in [0, {args.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]"
    if len(p) > args.max_seq_len:
        return f"{len(p):,} tokens, longer than max_seq_len={args.max_seq_len}"
    return ""


def _start(model, prompts, max_new_tokens: int, sampling: SamplingParams, stop_ids: set[int], mtp: bool,
           on_token) -> _Batch:
    """Budgets per row, the KV cache sized for the longest row, an empty output."""
    lens, limit = [len(p) for p in prompts], model.args.max_seq_len
    budget = [min(max_new_tokens, limit - n) for n in lens]
    cache_len = max(min(max(n + k for n, k in zip(lens, budget)) + (1 if mtp else 0), limit), max(lens))
    model.setup_cache(len(prompts), cache_len)
    dev = next(model.parameters()).device
    # a row without room generates nothing, so no pass is its own, even where the others' prefill
    # runs it (it counted 1 there, 0 alone)
    out = GenerationOutput(tokens=[[] for _ in prompts], finish_reasons=["length" if k == 0 else "" for k in budget],
                           forward_passes=[int(k > 0) for k in budget],
                           drafts_proposed=[[0] for _ in prompts] if mtp else [],
                           drafts_accepted=[[0] for _ in prompts] if mtp else [],
                           drafts=[[] for _ in prompts] if mtp else [])
    gen = torch.Generator(device=dev).manual_seed(sampling.seed) if sampling.seed is not None else None
    # NOTE: the ranks holding one sharded model must pick the same tokens: the first rank's choice wins
    sync = functools.partial(broadcast_from_first, shards=getattr(model, "shards", None))
    return _Batch(model, sampling, out, budget, [k == 0 for k in budget], stop_ids, cache_len,
                  on_token, gen, sync)


def _prefill(b: _Batch, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every prompt in one right-padded pass; commits each row's first token. Returns (padded
    prompts [B, S], lengths [B], final hidden states [B, S, D])."""
    dev = next(b.model.parameters()).device
    lens = [len(p) for p in prompts]
    padded = torch.zeros(len(prompts), max(lens), dtype=torch.long, device=dev)
    for i, p in enumerate(prompts):
        padded[i, : lens[i]] = torch.as_tensor(list(p), dtype=torch.long)
    lengths = torch.tensor(lens, device=dev)
    logits, h = b.model(padded, lengths=lengths, use_cache=True, return_hidden=True, logits_at=(lengths - 1)[:, None])
    b.out.total_forward_passes = 1
    first = b.sync(b.sampling.sample(logits[:, 0], b.gen))
    for i in range(len(prompts)):
        if not b.done[i]:
            b.commit(i, int(first[i]))
    b.newest, b.pos = first.clone(), lengths.clone()
    return padded, lengths, h


def _decode(b: _Batch) -> None:
    """One token per row per forward pass until every row is done."""
    while not all(b.done):
        logits = b.model(b.newest[:, None], start_pos=b.starts(1))
        b.out.total_forward_passes += 1
        nxt = b.sync(b.sampling.sample(logits[:, 0], b.gen))
        for i in range(len(b.done)):
            if not b.done[i]:
                b.out.forward_passes[i] += 1
                b.commit(i, int(nxt[i]))
        b.newest, b.pos = nxt, b.pos + 1


def _decode_with_drafts(b: _Batch, padded: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor,
                        draft_fn: DraftFn | None) -> None:
    """MTP speculative decoding, depth 1: each pass feeds [newest, draft] and keeps the draft when
    the main model agrees (greedy) or by the speculative-sampling rule."""
    model, dev, bsz = b.model, padded.device, len(b.done)
    # MTP prefill: position i takes h_i and token i+1, for i < n (token n = the first sampled one)
    ext = torch.cat([padded, torch.zeros(bsz, 1, dtype=torch.long, device=dev)], dim=1)
    ext[torch.arange(bsz, device=dev), lengths] = b.newest
    mtp_l = model.mtp_logits(h, ext, 0, lengths=lengths + 1, use_cache=True, logits_at=(lengths - 1)[:, None])
    b.out.mtp_passes = 1
    draft, q = propose(mtp_l[:, 0], b.pos + 1, b.sampling, b.gen, draft_fn, b.sync)
    while not all(b.done):
        start = b.starts(2)
        logits, h = model(torch.stack([b.newest, draft], dim=1), start_pos=start, return_hidden=True)
        b.out.total_forward_passes += 1
        acc, t1, t2 = (b.sync(x) for x in verify_drafts(logits, draft, q, b.sampling, b.gen))
        _commit_verified(b, draft, acc, t1, t2)
        if all(b.done):
            break
        # MTP at positions P (h_P, t_{P+1}) and P+1 (h_{P+1}, t_{P+2}); a rejected row only needs
        # the first, its second entry is junk that the next step overwrites in the MTP cache
        a = acc.long()
        mtp_l = model.mtp_logits(h, torch.stack([b.newest, t1, torch.where(acc, t2, t1)], dim=1), start,
                                 use_cache=True, logits_at=a[:, None])  # the head only where needed
        b.out.mtp_passes += 1
        b.newest, b.pos = torch.where(acc, t2, t1), b.pos + 1 + a
        draft, q = propose(mtp_l[:, 0], b.pos + 1, b.sampling, b.gen, draft_fn, b.sync)


def _commit_verified(b: _Batch, draft, acc, t1, t2) -> None:
    """Count each live row's draft and commit t1, and t2 when the draft was accepted."""
    for i in range(len(b.done)):
        if b.done[i]:
            continue
        b.out.forward_passes[i] += 1
        b.out.drafts_proposed[i][0] += 1
        b.out.drafts_accepted[i][0] += int(acc[i])
        b.out.drafts[i].append((int(b.pos[i]) + 1, int(draft[i]), bool(acc[i])))
        if not b.commit(i, int(t1[i])) and acc[i]:
            b.commit(i, int(t2[i]))
