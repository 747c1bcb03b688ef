"""Sampling: temperature / top-k / top-p, and the speculative-sampling rule that verifies drafts."""

from __future__ import annotations

import numbers

from dataclasses import dataclass

import torch

from .errors import GenerateError  # re-exported: the package's modules take it from here


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):  # "0.7" was a TypeError from the range check; True ran as 1.0
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise GenerateError(f"{name}={value!r} must be a number")
        if not 0 <= self.temperature < float("inf"):
            raise GenerateError(f"temperature={self.temperature} must be >= 0 and finite (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p={self.top_p} must be in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:
            raise GenerateError(f"top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise GenerateError(f"seed={self.seed!r} must be an integer (or None)")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch.Generator takes
            raise GenerateError(f"seed={self.seed} is out of range: use an integer in [-2^63, 2^64)")

    @property
    def greedy(self) -> bool:
        # a temperature that float32 rounds to 0 (below ~7e-46) is greedy too: logits / 0 were NaN (a review)
        return float(torch.tensor(self.temperature, dtype=torch.float32)) == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, V] logits -> [B, V] float32 sampling probabilities (temperature, top-k, top-p)."""
        logits = logits.float()
        # shifted so that the best logit is 0 before dividing: a tiny temperature sends the others to
        # -inf, never the best to +inf (softmax(inf) was NaN below T ~1e-37); the same distribution
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            # exactly k tokens, ties broken toward the lower id as greedy's argmax breaks them: masking
            # below the k-th value kept every token tied with it (bfloat16 logits tie often), so
            # --top-k 1 was not greedy (a review)
            order = logits.sort(dim=-1, descending=True, stable=True).indices[:, self.top_k:]
            logits = logits.scatter(1, order, float("-inf"))
        probs = logits.softmax(dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # drop a token when the tokens before it already hold top_p (the first is always kept)
            drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= self.top_p
            probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0.0))
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def sample(self, logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """[B, V] -> [B] token ids."""
        if self.greedy:
            return logits.argmax(dim=-1)
        return torch.multinomial(self.probs(logits), 1, generator=gen)[:, 0]


def propose(mtp_logits: torch.Tensor, seq_index: torch.Tensor, sampling: SamplingParams,
            gen: torch.Generator | None, draft_fn, sync):
    """A draft token per row and its proposal distribution q ([B, V], or None = deterministic);
    `sync` makes the ranks that hold one sharded model agree on it."""
    if draft_fn is not None:
        return sync(_drafts(draft_fn(mtp_logits, seq_index), *mtp_logits.shape).to(mtp_logits.device)), None
    if sampling.greedy:
        return sync(mtp_logits.argmax(dim=-1)), None
    q = sampling.probs(mtp_logits)
    return sync(torch.multinomial(q, 1, generator=gen)[:, 0]), q


def _drafts(got, rows: int, vocab: int) -> torch.Tensor:
    """A draft_fn's return, checked: `rows` integer token ids in [0, vocab), as a flat long tensor. Another
    count was torch's 'stack expects each tensor to be equal size' in the next pass, an id past the
    vocabulary that pass's 'tokens: token ids must be in [0, V)', float ids were truncated to integers, and a
    list an AttributeError (a bug hunt): each is one GenerateError naming draft_fn."""
    try:
        ids = torch.as_tensor(got)
    except (TypeError, ValueError, RuntimeError):
        ids = None
    if ids is None or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.numel() != rows:
        what = f"{ids.dtype} of shape {tuple(ids.shape)}" if ids is not None else type(got).__name__
        raise GenerateError(f"draft_fn returned {what}; it must return one integer token id per row ({rows})")
    ids = ids.reshape(-1).long()
    lo, hi = (int(v) for v in torch.aminmax(ids))
    if lo < 0 or hi >= vocab:
        raise GenerateError(f"draft_fn returned token id {lo if lo < 0 else hi}; drafts must lie in [0, {vocab})")
    return ids


def verify_drafts(logits: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None, sampling: SamplingParams,
                  gen: torch.Generator | None):
    """logits [B, 2, V] at (newest, draft). Returns (accepted [B] bool, t1 [B], t2 [B]): t1 is the
    token after the newest (the draft when accepted, else a correction), t2 the one after the draft
    (meaningful only where accepted)."""
    if sampling.greedy:
        t1 = logits[:, 0].argmax(dim=-1)
        return t1 == draft, t1, logits[:, 1].argmax(dim=-1)
    p0, p1 = sampling.probs(logits[:, 0]), sampling.probs(logits[:, 1])
    one_hot = torch.zeros_like(p0).scatter_(1, draft[:, None], 1.0)
    q = one_hot if q is None else q
    p_d, q_d = p0.gather(1, draft[:, None])[:, 0], q.gather(1, draft[:, None])[:, 0]
    u = torch.rand(p_d.shape, generator=gen, device=p_d.device)
    acc = u * q_d < p_d  # accept with probability min(1, p/q)
    resid = (p0 - q).clamp(min=0)
    resid = torch.where(resid.sum(dim=-1, keepdim=True) > 0, resid, p0)
    corr = torch.multinomial(resid, 1, generator=gen)[:, 0]
    return acc, torch.where(acc, draft, corr), torch.multinomial(p1, 1, generator=gen)[:, 0]
