"""Text generation: batched prompts, sampling, streaming, and MTP speculative decoding.

    # a Hugging Face checkpoint directory with tokenizer.json
    python -m model.generate --ckpt DIR --prompt "The capital of France is" --max-new-tokens 32
    python -m model.generate --ckpt DIR --prompt-file prompts.txt --temperature 0.6 --top-p 0.95 --seed 0
    python -m model.generate --ckpt DIR --prompt-file prompts.jsonl --mtp --output results.jsonl
    python -m model.generate --ckpt DIR --interactive --mtp
    python -m model.generate --ckpt DIR --gemm fp8 --device cuda --prompt "Hi"     # FP8 weights resident
    torchrun --nproc-per-node 2 -m model.generate --ckpt DIR --interactive          # rank 0 reads stdin
    torchrun --nproc-per-node 8 -m model.generate --ckpt DIR --gemm fp8 --prompt-file p.txt  # TP+EP shards

    # no checkpoint at hand: a random tiny model plus a byte-level tokenizer, written once into DIR
    python -m model.generate --demo /tmp/dsv3-demo --prompt "hello" --max-new-tokens 16 --mtp

Prompts: `--prompt TEXT` (repeatable) and/or `--prompt-file FILE`: one prompt per line (blank lines
skipped), or JSON Lines (`.jsonl`, or a first line starting with `{`) with a "prompt" field per line.
All prompts run as one right-padded batch. One prompt streams token by token; with several, each
completion is printed as soon as its row finishes. Statistics go to stderr.

Chat format: when the checkpoint's tokenizer_config.json has a `chat_template`, each prompt is sent
as one user turn in DeepSeek-V3's chat format, rendered here without running the Jinja template:

    <BOS>{system}<｜User｜>{prompt}<｜Assistant｜>

(`--system` sets the system text; `--no-chat-template` sends the raw prompt after BOS.) Multi-turn
history and V3.1's thinking markers are not rendered. Generation stops at the config's
eos_token_id(s), the tokenizer's eos_token, generation_config.json's eos_token_id, or after
`--max-new-tokens` (and never runs past max_seq_len).

Sampling: `--temperature 0` (default) is greedy; otherwise softmax(logits / T) restricted to the
`--top-k` most likely tokens (0 = all) and the smallest set holding `--top-p` of the probability,
drawn with a torch.Generator seeded by `--seed`.

MTP speculative decoding (`--mtp`, depth 1): after each step the MTP module drafts the token after
next from the main model's last hidden state and the newest token; the next step feeds
[newest, draft] as one 2-token chunk, so the main model verifies the draft and, if it is accepted,
also yields the token after it: 1 or 2 tokens per forward pass. On rejection nothing is undone
explicitly: both static KV caches (main and MTP) are overwritten in place at the rejected position
by the next step, and attention never reaches past a row's own position. Greedy drafts are
accepted iff they equal the main model's argmax, so greedy output is identical to plain greedy
decoding; with sampling the standard speculative-sampling rule (accept with min(1, p/q), else
resample from max(p - q, 0)) keeps the main model's distribution. `generate()` returns the
acceptance counts per prompt and draft position, and the tokens per forward pass.

Under torchrun, torch.distributed is initialised (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1
and the model is loaded tensor + expert parallel (`model.load(..., parallel=True)`: each rank reads
only its shard; `--replicate` loads the whole model on every rank instead). Every rank runs the same
batch; rank 0 alone reads the prompt file and stdin and prints; the prompts and each step's sampled
tokens are broadcast from rank 0 so all ranks stay in step.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .parallel import broadcast_from_first

USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
BOS_TEXT, EOS_TEXT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


class GenerateError(ValueError):
    """Bad generation input (one line naming the problem)."""


# --------------------------------------------------------------------------------------- sampling
@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerateError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise GenerateError(f"top_k={self.top_k} must be >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, V] logits -> [B, V] float32 sampling probabilities (temperature, top-k, top-p)."""
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
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


# ----------------------------------------------------------------------------------------- output
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


# ------------------------------------------------------------------------------------- generation
OnToken = Callable[[int, int, bool], None]  # (prompt index, token id, row finished)
DraftFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mtp logits [B, V], seq index [B]) -> [B]


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             sampling: SamplingParams | None = None, stop_ids: Sequence[int] = (), mtp: bool = False,
             on_token: OnToken | None = None, draft_fn: DraftFn | None = None) -> GenerationOutput:
    """Generate for a batch of token-id prompts (different lengths allowed) with the static KV cache.

    mtp: speculative decoding with MTP drafts (see the module docstring); needs MTP weights.
    on_token(i, token, finished): called as each token of prompt i is committed (streaming).
    draft_fn: replaces the MTP module's own draft choice, e.g. an oracle for upper-bound studies;
        gets the MTP logits [B, V] and the sequence index each draft is for; returns [B] token ids.
    """
    sampling = sampling or SamplingParams()
    args = model.args
    if len(prompts) == 0:
        raise GenerateError("no prompts")
    if max_new_tokens < 0:
        raise GenerateError(f"max_new_tokens={max_new_tokens} must be >= 0")
    lens = [len(p) for p in prompts]
    for i, n in enumerate(lens):
        if n == 0:
            raise GenerateError(f"prompt {i} is empty (no tokens)")
        if n > args.max_seq_len:
            raise GenerateError(f"prompt {i} has {n} tokens, longer than max_seq_len={args.max_seq_len}")
    if mtp and not len(model.mtp):
        raise GenerateError("mtp=True but this model has no MTP module (its checkpoint has no MTP layer)")
    dev = next(model.parameters()).device
    bsz, smax = len(prompts), max(lens)
    budget = [min(max_new_tokens, args.max_seq_len - n) for n in lens]
    cache_len = max(n + b for n, b in zip(lens, budget)) + (1 if mtp else 0)
    cache_len = max(min(cache_len, args.max_seq_len), smax)
    model.setup_cache(bsz, cache_len)
    # NOTE: the ranks holding one sharded model must pick the same tokens: the first rank's choice wins
    sync = functools.partial(broadcast_from_first, shards=getattr(model, "shards", None))
    gen = None
    if sampling.seed is not None:
        gen = torch.Generator(device=dev).manual_seed(sampling.seed)
    stop = set(int(s) for s in stop_ids)

    out = GenerationOutput(tokens=[[] for _ in prompts], finish_reasons=[""] * bsz, forward_passes=[1] * bsz,
                           drafts_proposed=[[0] for _ in prompts] if mtp else [],
                           drafts_accepted=[[0] for _ in prompts] if mtp else [],
                           drafts=[[] for _ in prompts] if mtp else [])
    done = [b == 0 for b in budget]
    for i, d in enumerate(done):
        if d:
            out.finish_reasons[i] = "length"
    if all(done):  # nothing to generate (max_new_tokens=0, or prompts filling max_seq_len)
        out.forward_passes = [0] * bsz
        return out

    def commit(i: int, tok: int) -> bool:
        """Append a token to row i; True when the row is finished."""
        out.tokens[i].append(tok)
        if tok in stop:
            out.finish_reasons[i] = "stop"
        elif len(out.tokens[i]) >= budget[i]:
            out.finish_reasons[i] = "length"
        done[i] = bool(out.finish_reasons[i])
        if on_token is not None:
            on_token(i, tok, done[i])
        return done[i]

    padded = torch.zeros(bsz, smax, dtype=torch.long, device=dev)
    for i, p in enumerate(prompts):
        padded[i, : lens[i]] = torch.as_tensor(list(p), dtype=torch.long)
    lengths = torch.tensor(lens, device=dev)
    last_idx = (lengths - 1)[:, None]
    logits, h = model(padded, lengths=lengths, use_cache=True, return_hidden=True, logits_at=last_idx)
    out.total_forward_passes = 1
    first = sync(sampling.sample(logits[:, 0], gen))
    for i in range(bsz):
        if not done[i]:
            commit(i, int(first[i]))
    newest = first.clone()  # each row's newest token (not yet fed to the main model)
    pos = lengths.clone()  # its sequence index

    def starts(chunk: int) -> torch.Tensor:
        """Feed positions: finished rows stay in place (their outputs are ignored), within the cache."""
        return torch.where(torch.tensor(done, device=dev), pos.clamp(max=cache_len - chunk), pos)

    if not mtp:
        while not all(done):
            logits = model(newest[:, None], start_pos=starts(1))
            out.total_forward_passes += 1
            nxt = sync(sampling.sample(logits[:, 0], gen))
            for i in range(bsz):
                if not done[i]:
                    out.forward_passes[i] += 1
                    commit(i, int(nxt[i]))
            newest, pos = nxt, pos + 1
        return out

    # ---- MTP speculative decoding (depth 1)
    # MTP prefill: position i takes h_i and token i+1, for i < n (token n = the first sampled one).
    ext = torch.cat([padded, torch.zeros(bsz, 1, dtype=torch.long, device=dev)], dim=1)
    ext[torch.arange(bsz, device=dev), lengths] = first
    mtp_l = model.mtp_logits(h, ext, 0, lengths=lengths + 1, use_cache=True, logits_at=last_idx)
    out.mtp_passes = 1
    draft, q = _propose(mtp_l[:, 0], pos + 1, sampling, gen, draft_fn, sync)
    while not all(done):
        start = starts(2)
        # verify: positions P (newest) and P+1 (the draft) in one chunk
        logits, h = model(torch.stack([newest, draft], dim=1), start_pos=start, return_hidden=True)
        out.total_forward_passes += 1
        acc, t1, t2 = _verify(logits, draft, q, sampling, gen)
        acc, t1, t2 = (sync(x) for x in (acc, t1, t2))
        for i in range(bsz):
            if done[i]:
                continue
            out.forward_passes[i] += 1
            out.drafts_proposed[i][0] += 1
            out.drafts_accepted[i][0] += int(acc[i])
            out.drafts[i].append((int(pos[i]) + 1, int(draft[i]), bool(acc[i])))
            if not commit(i, int(t1[i])) and acc[i]:
                commit(i, int(t2[i]))
        if all(done):
            break
        # MTP at positions P (h_P, t_{P+1}) and P+1 (h_{P+1}, t_{P+2}); a rejected row only needs
        # the first, its second entry is junk that the next step overwrites in the MTP cache.
        a = acc.long()
        mtp_l = model.mtp_logits(h, torch.stack([newest, t1, torch.where(acc, t2, t1)], dim=1), start,
                                 use_cache=True, logits_at=a[:, None])  # the head only where needed
        out.mtp_passes += 1
        newest = torch.where(acc, t2, t1)
        pos = pos + 1 + a
        draft, q = _propose(mtp_l[:, 0], pos + 1, sampling, gen, draft_fn, sync)
    return out


def _propose(mtp_logits: torch.Tensor, seq_index: torch.Tensor, sampling: SamplingParams,
             gen: torch.Generator | None, draft_fn: DraftFn | None, sync):
    """A draft token per row and its proposal distribution q ([B, V], or None = deterministic)."""
    if draft_fn is not None:
        return sync(draft_fn(mtp_logits, seq_index).to(mtp_logits.device, torch.long).reshape(-1)), None
    if sampling.greedy:
        return sync(mtp_logits.argmax(dim=-1)), None
    q = sampling.probs(mtp_logits)
    return sync(torch.multinomial(q, 1, generator=gen)[:, 0]), q


def _verify(logits: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None, sampling: SamplingParams,
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


# ------------------------------------------------------------------------------ tokenizer, prompts
@dataclass
class TextCodec:
    """The checkpoint's tokenizer plus what generation needs from its configs."""
    tokenizer: object
    bos_id: int | None
    stop_ids: list[int]
    chat: bool  # the tokenizer config has a chat template

    def encode(self, text: str, *, chat: bool | None = None, system: str | None = None) -> list[int]:
        if self.chat if chat is None else chat:
            text = (system or "") + USER + text + ASSISTANT
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _token_text(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _read_json(p: Path) -> dict:
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenerateError(f"{p}: not valid JSON ({e})") from None


def load_codec(ckpt: str | os.PathLike, args=None) -> TextCodec:
    """tokenizer.json (required) + tokenizer_config.json / generation_config.json (optional)."""
    from tokenizers import Tokenizer

    ckpt = Path(ckpt)
    path = ckpt / "tokenizer.json"
    if not path.exists():
        raise GenerateError(f"{ckpt}: no tokenizer.json (generation needs the checkpoint's tokenizer)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception type
        raise GenerateError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0]})") from None
    cfg = _read_json(ckpt / "tokenizer_config.json")
    gen_cfg = _read_json(ckpt / "generation_config.json")
    bos = None
    if cfg.get("add_bos_token", True):
        bos_text = _token_text(cfg.get("bos_token"))
        bos = tok.token_to_id(bos_text) if bos_text else None
        if bos is None and args is not None:
            bos = args.bos_token_id
    stops: list[int] = []
    for v in (getattr(args, "eos_token_id", None), gen_cfg.get("eos_token_id")):
        stops += [v] if isinstance(v, int) else list(v or [])
    eos_text = _token_text(cfg.get("eos_token"))
    if eos_text and tok.token_to_id(eos_text) is not None:
        stops.append(tok.token_to_id(eos_text))
    return TextCodec(tok, bos, sorted(set(stops)), bool(cfg.get("chat_template")))


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-blank line, or JSON Lines with a "prompt" field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenerateError(f"{path}: cannot read prompt file ({e})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise GenerateError(f"{path}: no prompts (the file is empty)")
    if path.suffix != ".jsonl" and not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenerateError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        p = obj.get("prompt") if isinstance(obj, dict) else None
        if not isinstance(p, str) or not p:
            raise GenerateError(f"{path}:{n}: each JSON line needs a non-empty string field \"prompt\"")
        prompts.append(p)
    return prompts


# ------------------------------------------------------------------------------------ demo weights
def write_demo_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random tiny DeepSeek-V3 (with MTP) and a byte-level tokenizer with DeepSeek's special
    tokens and a chat template, in `path` (kept if already there). Its text is noise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from .args import ModelArgs
    from .checkpoint import save
    from .transformer import Transformer

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    specials = [BOS_TEXT, EOS_TEXT, USER, ASSISTANT]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS_TEXT, "eos_token": EOS_TEXT, "add_bos_token": True,
        # stored for tools that run it; generate.py renders the same format itself
        "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}" + USER +
                         "{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}" + ASSISTANT +
                         "{% endif %}",
    }, ensure_ascii=False, indent=1))
    args = ModelArgs.from_name("tiny")
    args.vocab_size = len(vocab)
    torch.manual_seed(seed)
    save(Transformer(args, dtype=torch.float32).eval(), path)
    return path


if __name__ == "__main__":  # the command line lives in generate_cli.py
    from model.generate_cli import main

    main()
