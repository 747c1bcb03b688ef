"""Generation (model/generate.py): batched decoding with the static KV cache, sampling, stop
conditions, MTP speculative decoding (greedy output identical to plain greedy; both caches roll
back), the tokenizer's BOS (the command line and its codec: test_generate_cli.py).

    python -m pytest tests/generate/test_generate.py -q -s      # -s prints acceptance rates
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generate import (GenerateError, SamplingParams, generate, verify_drafts,
                      load_codec)
from generate.decode import PromptError

from helpers import random_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return random_model("tiny", seed=0)


def prompts_of(lengths, seed=0, vocab=512):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


# ------------------------------------------------------------------------------------ plain decoding
@torch.no_grad()
def test_batched_greedy_equals_each_prompt_alone_and_full_forward(tiny):
    prompts = prompts_of([9, 3, 14])
    batch = generate(tiny, prompts, max_new_tokens=8)
    for i, p in enumerate(prompts):
        alone = generate(tiny, [p], max_new_tokens=8)
        assert alone.tokens[0] == batch.tokens[i], f"row {i}"
        # every generated token is the argmax of a full (no-cache) forward over what came before
        seq = torch.tensor([p + batch.tokens[i]])
        full = tiny(seq)[0, len(p) - 1 : -1].argmax(-1).tolist()
        assert full == batch.tokens[i], f"row {i}"
    assert batch.finish_reasons == ["length"] * 3 and batch.forward_passes == [8, 8, 8]
    assert batch.tokens_per_forward == [1.0, 1.0, 1.0] and batch.acceptance_rate is None


@torch.no_grad()
def test_stop_token_ends_a_row(tiny):
    prompts = prompts_of([6, 11], seed=1)
    ref = generate(tiny, prompts, max_new_tokens=12)
    stop = ref.tokens[0][4]
    k = ref.tokens[0].index(stop)
    for mtp in (False, True):
        got = generate(tiny, prompts, max_new_tokens=12, stop_ids=[stop], mtp=mtp)
        assert got.tokens[0] == ref.tokens[0][: k + 1] and got.finish_reasons[0] == "stop"
        row1 = ref.tokens[1][: ref.tokens[1].index(stop) + 1] if stop in ref.tokens[1] else ref.tokens[1]
        assert got.tokens[1] == row1


@torch.no_grad()
def test_stop_ids_one_id_or_ids_and_nothing_else(tiny):
    """stop_ids were each int()'d: one id (stop_ids=eos) was a TypeError ('int' object is not iterable), a
    string of digits "12" stopped at ids 1 and 2, 1.5 at id 1, and [m.args.eos_token_id] of a list of ids a
    TypeError (a bug hunt). One id or integers run; anything else is one GenerateError naming stop_ids."""
    prompts = prompts_of([6, 11], seed=1)
    ref = generate(tiny, prompts, max_new_tokens=12)
    stop = ref.tokens[0][4]
    want = generate(tiny, prompts, max_new_tokens=12, stop_ids=[stop]).tokens
    assert want[0] == ref.tokens[0][: ref.tokens[0].index(stop) + 1]  # the control: it does stop
    for ids in (stop, np.int64(stop), torch.tensor([stop]), (stop,), {stop, 10**6}):
        assert generate(tiny, prompts, max_new_tokens=12, stop_ids=ids).tokens == want
    digits = str(stop)
    for ids, msg in [(digits, rf"^stop_ids='{digits}': expected an int or integers"),
                     ([stop + 0.5], rf"^stop_ids: {stop + 0.5} is not an integer"),
                     ([[stop, 1]], rf"^stop_ids: \[{stop}, 1\] is not an integer"),
                     (None, r"^stop_ids=None: expected an int or integers")]:
        with pytest.raises(GenerateError, match=msg):
            generate(tiny, prompts, max_new_tokens=12, stop_ids=ids)


@torch.no_grad()
def test_options_of_the_wrong_kind_are_named_before_the_prefill(tiny):
    """sampling={"temperature": 0.6} was an AttributeError ('dict' object has no attribute 'seed'), and an
    on_token or draft_fn that is no function a TypeError at the first token or draft, after the prefill
    (a bug hunt): each is one GenerateError naming the option, before any forward pass."""
    passes = []
    tiny.add_hook("hook_embed", lambda t, hook: passes.append(1))
    try:
        for kw, msg in [(dict(sampling={"temperature": 0.6}),
                         r"^sampling=\{'temperature': 0\.6\}: expected a SamplingParams .*, or None for greedy"),
                        (dict(on_token="print"), r"^on_token='print': expected a function, or None$"),
                        (dict(mtp=True, draft_fn=[1, 2]), r"^draft_fn=\[1, 2\]: expected a function, or None$"),
                        # a draft function without mtp drafted nothing and was ignored in silence
                        (dict(draft_fn=lambda logits, at: logits.argmax(-1)),
                         r"^draft_fn is given but mtp=False: drafts are made only with mtp=True")]:
            with pytest.raises(GenerateError, match=msg):
                generate(tiny, [[1, 2, 3]], max_new_tokens=2, **kw)
        assert passes == []  # refused before the prefill
        generate(tiny, [[1, 2, 3]], max_new_tokens=2, sampling=SamplingParams(0.6, seed=0), on_token=lambda *a: None)
        assert passes  # the control ran
    finally:
        tiny.reset_hooks()


@torch.no_grad()
def test_streaming_callback_order(tiny):
    seen = []
    res = generate(tiny, prompts_of([5, 8], seed=2), max_new_tokens=6,
                   on_token=lambda i, t, fin: seen.append((i, t, fin)), mtp=True)
    for i in range(2):
        mine = [(t, fin) for j, t, fin in seen if j == i]
        assert [t for t, _ in mine] == res.tokens[i]
        assert [fin for _, fin in mine] == [False] * 5 + [True]


@torch.no_grad()
def test_max_seq_len_and_bad_input():
    m = random_model("tiny", seed=3, max_seq_len=32)
    for mtp in (False, True):
        res = generate(m, prompts_of([29, 10], seed=3), max_new_tokens=10, mtp=mtp)
        assert len(res.tokens[0]) == 3 and res.finish_reasons[0] == "length"  # 29 + 3 = max_seq_len
        assert len(res.tokens[1]) == 10
        full = generate(m, prompts_of([32], seed=3), max_new_tokens=5, mtp=mtp)
        assert full.tokens == [[]] and full.finish_reasons == ["length"]
    with pytest.raises(GenerateError, match="prompt 1: 33 tokens, longer than max_seq_len=32"):
        generate(m, prompts_of([4, 33]))
    with pytest.raises(GenerateError, match="prompt 0: no tokens"):
        generate(m, [[]])
    # which prompt and why, apart: python -m generate names the prompt as it was given (--prompt #2)
    # from these, where it had a check of its own (empty or too long) beside this one
    with pytest.raises(PromptError) as e:
        generate(m, [[1, 2], [1, 600]])
    assert (e.value.index, e.value.why) == (1, "token ids must be in [0, 512), got [1, 600]")
    with pytest.raises(GenerateError, match="no prompts"):
        generate(m, [])
    with pytest.raises(GenerateError, match="no MTP module"):
        generate(random_model("tiny", n_mtp_layers=0), [[1, 2]], mtp=True)
    with pytest.raises(GenerateError, match=r"top_p=0 must be in \(0, 1\]"):
        SamplingParams(temperature=1.0, top_p=0)
    with pytest.raises(GenerateError, match="temperature=-1"):
        SamplingParams(temperature=-1)
    # what would fail deep inside (a float budget in the cache, a string as a prompt) or be truncated
    # silently (float token ids) is named up front
    for kw, msg in [(dict(prompts=[[1, 2]], max_new_tokens=2.5), "max_new_tokens=2.5 must be an integer >= 0"),
                    (dict(prompts="hello"), "prompts: expected a list of token-id lists .* got a string"),
                    (dict(prompts=["hello"]), "prompt 0: expected token ids, got a string"),
                    # a bytearray or memoryview of a text was read as its bytes' ids, where bytes was refused
                    (dict(prompts=[b"hi"]), r"^prompt 0: expected token ids, got bytes \(tokenise it first\)$"),
                    (dict(prompts=[[1, 2], bytearray(b"hi")]), r"^prompt 1: expected token ids, got bytearray "),
                    (dict(prompts=[memoryview(b"hi")]), r"^prompt 0: expected token ids, got memoryview "),
                    (dict(prompts=[[1, 2], [5.5, 6]]), "prompt 1: expected a flat list of integer token ids, got torch.float32"),
                    (dict(prompts=[[1, 512]]), r"prompt 0: token ids must be in \[0, 512\), got \[1, 512\]"),
                    # a text's bytes were generated from as if they were its tokens
                    (dict(prompts=[[1, 2], torch.tensor([1, 2], dtype=torch.uint8)]),
                     r"^prompt 1: got torch.uint8: uint8 holds bytes, .*: encode text with the tokenizer$")]:
        with pytest.raises(GenerateError, match=msg):
            generate(m, kw.pop("prompts"), **kw)
    with pytest.raises(GenerateError, match="top_k=2.5 must be an integer >= 0"):
        SamplingParams(temperature=0.7, top_k=2.5)
    assert generate(m, [torch.tensor([1, 2])], max_new_tokens=2).tokens[0]  # the control: a tensor prompt
    # uint16 ids (a token file's dtype) were torch's '"min_all" not implemented for 'UInt16''
    want = generate(m, [[1, 2, 3]], max_new_tokens=2).tokens
    assert generate(m, [np.array([1, 2, 3], dtype=np.uint16)], max_new_tokens=2).tokens == want
    assert generate(m, [torch.tensor([1, 2, 3], dtype=torch.uint16)], max_new_tokens=2).tokens == want
    with pytest.raises(GenerateError, match=r"^prompt 0: token ids must be in \[0, 512\), got \[600, 600\]$"):
        generate(m, [np.array([600], dtype=np.uint16)], max_new_tokens=2)


def test_prompts_that_are_not_lists_of_ids_are_named(tiny):
    """One prompt's ids given as the batch (generate(m, [1, 2, 3]), or a 1-D tensor), prompts of None, a
    generator, a ragged list or a list of strings were Python's or torch's TypeError/ValueError from
    inside the check ('object of type 'int' has no len()', 'too many dimensions 'str''): each is one
    GenerateError naming the prompt (a bug hunt)."""
    for prompts, msg in [([1, 2, 3], r"^prompt 0: a single token id \(1\), not a list of them: .*one prompt: \[ids\]"),
                         (torch.tensor([7, 2, 3]), r"^prompt 0: a single token id \(7\), not a list of them"),
                         ([[1, 2], None],
                          r"^prompt 1: expected token ids \(a list, array or tensor of them\), got NoneType$"),
                         ([[1, [2]]], r"^prompt 0: expected a flat list of integer token ids, got \[1, \[2\]\]$"),
                         ([["a", "b"]], r"^prompt 0: expected a flat list of integer token ids, got \['a', 'b'\]$"),
                         (None, r"^prompts: expected a list of token-id lists, got NoneType$"),
                         ((p for p in [[1, 2]]), r"^prompts: expected a list of token-id lists, got generator$")]:
        with pytest.raises(GenerateError, match=msg):
            generate(tiny, prompts, max_new_tokens=2)
    # the controls: a batch as a 2-D tensor or numpy array runs its rows
    want = generate(tiny, [[1, 2, 3], [4, 5, 6]], max_new_tokens=2).tokens
    assert generate(tiny, torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=2).tokens == want
    assert generate(tiny, np.array([[1, 2, 3], [4, 5, 6]]), max_new_tokens=2).tokens == want


# --------------------------------------------------------------------------------------- sampling
def test_a_temperature_that_float32_rounds_to_0_is_greedy(tiny):
    """1e-50 passed the check and divided the logits by a float32 0: NaN probabilities, a traceback
    (a review). It samples greedily, as 0 does."""
    prompts = [[0, 5, 9, 2]]
    greedy = generate(tiny, prompts, max_new_tokens=4)
    assert SamplingParams(temperature=1e-50).greedy and not SamplingParams(temperature=1e-45).greedy
    got = generate(tiny, prompts, max_new_tokens=4, sampling=SamplingParams(temperature=1e-50, seed=0))
    assert got.tokens == greedy.tokens


def test_sampling_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.allclose(SamplingParams(1.0).probs(logits), logits.exp())
    assert torch.allclose(SamplingParams(1.0, top_k=2).probs(logits), torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]))
    # top-p keeps the smallest prefix holding p: 0.5 + 0.2 >= 0.6
    assert torch.allclose(SamplingParams(1.0, top_p=0.6).probs(logits), torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]))
    assert torch.allclose(SamplingParams(1.0, top_p=0.5).probs(logits), torch.tensor([[1.0, 0, 0, 0, 0]]))
    sharp = SamplingParams(0.5).probs(logits)
    assert torch.allclose(sharp, logits.mul(2).softmax(-1))
    # a tiny temperature is greedy in the limit (it was NaN: logits / T overflowed to inf; a review),
    # ties at the top shared; an infinite one and an out-of-range seed are refused up front
    tied = torch.tensor([[3.0, 1.0, 3.0, -2.0]])
    for t in (1e-40, 1e-30):
        assert torch.equal(SamplingParams(t).probs(logits), torch.tensor([[1.0, 0, 0, 0, 0]]))
        assert torch.equal(SamplingParams(t).probs(tied), torch.tensor([[0.5, 0, 0.5, 0]]))
    for kw, msg in ((dict(temperature=float("inf")), r"temperature=inf must be >= 0 and finite"),
                    (dict(temperature=1.0, seed=10**23), r"seed=\d+ is out of range: use an integer in \[-2\^63, 2\^64\)")):
        with pytest.raises(GenerateError, match=msg):
            SamplingParams(**kw)
    SamplingParams(1.0, seed=2**64 - 1), SamplingParams(1.0, seed=-(2**63))  # the ends torch takes


@torch.no_grad()
def test_seeded_sampling(tiny):
    prompts = prompts_of([7, 4], seed=4)
    sp = dict(max_new_tokens=10)
    a = generate(tiny, prompts, sampling=SamplingParams(1.0, top_p=0.9, seed=1), **sp)
    b = generate(tiny, prompts, sampling=SamplingParams(1.0, top_p=0.9, seed=1), **sp)
    c = generate(tiny, prompts, sampling=SamplingParams(1.0, top_p=0.9, seed=2), **sp)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = generate(tiny, prompts, **sp)
    assert generate(tiny, prompts, sampling=SamplingParams(1.0, top_k=1, seed=0), **sp).tokens == greedy.tokens
    s = generate(tiny, prompts, sampling=SamplingParams(0.8, top_k=50, seed=3), mtp=True, **sp)
    assert all(len(t) == 10 and all(0 <= x < 512 for x in t) for t in s.tokens)


def test_speculative_sampling_keeps_the_target_distribution():
    """The accept/resample rule: the committed token is distributed as p whatever the draft's q."""
    n, V = 40000, 5
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    q = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])  # a poor draft distribution
    logits = torch.log(p).expand(n, 2, V).clone()
    draft = torch.multinomial(q.expand(n, V), 1, replacement=True, generator=g)[:, 0]
    acc, t1, _ = verify_drafts(logits, draft, q.expand(n, V), SamplingParams(1.0), g)
    emp = torch.bincount(t1, minlength=V).float() / n
    assert (emp - p).abs().max() < 0.01, emp
    expected_acc = torch.minimum(p, q).sum()  # P(accept) = sum_x min(p, q)
    assert abs(acc.float().mean() - expected_acc) < 0.01
    # negative control: keeping every draft would give q, not p
    assert (torch.bincount(draft, minlength=V).float() / n - p).abs().max() > 0.2
    # a deterministic draft (q = one-hot): accepted with probability p(draft)
    acc1, t1d, _ = verify_drafts(logits, torch.full((n,), 3), None, SamplingParams(1.0), g)
    assert abs(acc1.float().mean() - p[3]) < 0.01
    assert ((torch.bincount(t1d, minlength=V).float() / n) - p).abs().max() < 0.01


# ------------------------------------------------------------------- MTP speculative decoding
SPEC_CASES = [([12, 5, 8], 24), ([3], 16), ([20, 1, 9, 6], 12)]


@torch.no_grad()
@pytest.mark.parametrize("lengths,new", SPEC_CASES)
def test_greedy_speculative_equals_plain_greedy(tiny, lengths, new):
    prompts = prompts_of(lengths, seed=sum(lengths))
    plain = generate(tiny, prompts, max_new_tokens=new)
    spec = generate(tiny, prompts, max_new_tokens=new, mtp=True)
    assert spec.tokens == plain.tokens
    assert spec.finish_reasons == plain.finish_reasons
    assert [len(d) for d in spec.drafts] == [p[0] for p in spec.drafts_proposed]
    assert all(sum(a for _, _, a in d) == acc[0] for d, acc in zip(spec.drafts, spec.drafts_accepted))
    print(f"\nrandom tiny model, prompts {lengths}: MTP acceptance {spec.acceptance_rate:.1%}, "
          f"tokens per forward {spec.mean_tokens_per_forward:.2f}, per prompt accepted/proposed "
          f"{[(a[0], p[0]) for a, p in zip(spec.drafts_accepted, spec.drafts_proposed)]}")


@torch.no_grad()
def test_greedy_speculative_naive_attention_and_other_weights():
    m = random_model("tiny", seed=11, attn_impl="naive")
    prompts = prompts_of([7, 15], seed=5)
    assert generate(m, prompts, max_new_tokens=20, mtp=True).tokens == generate(m, prompts, max_new_tokens=20).tokens


def oracle(prompts, reference, every=1, recorded=None):
    """draft_fn giving the true next tokens (at sequence indices divisible by `every`; a wrong token
    elsewhere), recording the MTP module's own argmax for each draft position."""
    seqs = [p + t for p, t in zip(prompts, reference)]

    def fn(mtp_logits, seq_index):
        out = []
        for i, j in enumerate(seq_index.tolist()):
            if recorded is not None:
                recorded.setdefault(i, []).append((j, int(mtp_logits[i].argmax())))
            right = seqs[i][j] if j < len(seqs[i]) else 0
            out.append(right if j % every == 0 else (right + 1) % 512)
        return torch.tensor(out)
    return fn


@torch.no_grad()
def test_drafts_a_draft_fn_returns_are_checked(tiny):
    """draft_fn's drafts were used as they came: another count was torch's 'stack expects each tensor to be
    equal size', an id past the vocabulary the next pass's 'tokens: token ids must be in [0, 512)', a float
    id truncated (5.7 drafted token 5) and a list an AttributeError (a bug hunt). Each is one GenerateError
    naming draft_fn; a list or array of integers drafts as the tensor does."""
    prompts = prompts_of([10, 4], seed=6)
    ref = generate(tiny, prompts, max_new_tokens=8)
    for returned, msg in [(lambda n: torch.zeros(n + 1, dtype=torch.long),
                           r"^draft_fn returned torch.int64 of shape \(3,\); it must return one integer token id per "
                           r"row \(2\)$"),
                          (lambda n: torch.full((n,), 5.7), r"^draft_fn returned torch.float32 of shape \(2,\)"),
                          (lambda n: torch.full((n,), 512), r"^draft_fn returned token id 512; drafts must lie in "
                                                            r"\[0, 512\)$"),
                          (lambda n: [-1] * n, r"^draft_fn returned token id -1; drafts must lie in \[0, 512\)$"),
                          (lambda n: None, r"^draft_fn returned NoneType; it must return one integer token id")]:
        with pytest.raises(GenerateError, match=msg):
            generate(tiny, prompts, max_new_tokens=8, mtp=True,
                     draft_fn=lambda logits, index, returned=returned: returned(len(index)))
    right = oracle(prompts, ref.tokens)
    for kind in (lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t[:, None]):  # the controls: a list, an
        # array, and [B, 1], draft as the [B] tensor does
        spec = generate(tiny, prompts, max_new_tokens=8, mtp=True,
                        draft_fn=lambda logits, index, kind=kind: kind(right(logits, index)))
        assert spec.tokens == ref.tokens and spec.acceptance_rate == 1.0


@torch.no_grad()
@pytest.mark.parametrize("every", [1, 2, 3])
def test_speculative_accept_path_with_oracle_drafts(tiny, every):
    """Random-model drafts are almost never accepted; oracle drafts exercise acceptance (all, or a
    mixed accept/reject pattern that differs between rows) and the caches after it."""
    prompts = prompts_of([10, 4, 7], seed=6)
    new = 21
    ref = generate(tiny, prompts, max_new_tokens=new)
    recorded: dict[int, list] = {}
    spec = generate(tiny, prompts, max_new_tokens=new, mtp=True, draft_fn=oracle(prompts, ref.tokens, every, recorded))
    assert spec.tokens == ref.tokens
    for i, d in enumerate(spec.drafts):
        assert all(acc == (j % every == 0) for j, _, acc in d), f"row {i}"
    if every == 1:
        assert spec.acceptance_rate == 1.0
        # 1 token from the prefill, then 2 per pass: ceil(20 / 2) more passes
        assert spec.forward_passes == [11, 11, 11] and spec.mean_tokens_per_forward == pytest.approx(21 / 11)
    else:
        assert 0 < spec.acceptance_rate < 1
    # the MTP cache stayed right through accepts and rejections: each draft-time MTP prediction
    # equals the MTP module's prediction from a full forward over the final sequence
    for i, p in enumerate(prompts):
        seq = torch.tensor([p + ref.tokens[i]])
        _, mtp_full = tiny(seq, mtp=True)  # mtp_full[0, k] predicts token k + 2
        for j, pred in recorded[i]:
            if j < seq.shape[1]:
                assert int(mtp_full[0, j - 2].argmax()) == pred, f"row {i}, draft for index {j}"
    print(f"\noracle every {every}: acceptance {spec.acceptance_rate:.2f}, "
          f"tokens per forward {spec.mean_tokens_per_forward:.2f}")


@torch.no_grad()
def test_speculative_mtp_drafts_match_full_forward(tiny):
    """With the MTP module's own (rejected) drafts: each draft is the argmax of the MTP logits a
    full forward computes at that position, so the MTP KV cache rolled back correctly."""
    prompts = prompts_of([8, 13], seed=7)
    spec = generate(tiny, prompts, max_new_tokens=16, mtp=True)
    for i, p in enumerate(prompts):
        seq = torch.tensor([p + spec.tokens[i]])
        _, mtp_full = tiny(seq, mtp=True)
        for j, tok, _ in spec.drafts[i]:
            assert int(mtp_full[0, j - 2].argmax()) == tok, f"row {i}, draft for index {j}"


# ------------------------------------------------------------------ tokenizer, prompt files, CLI
def test_the_bundled_models_prompts_start_with_bos_as_in_training():
    """The bundled model was trained on <|bos|> document <|eos|> (train/data.py) and record and spec
    prepend BOS; its tokenizer_config said add_bos_token false, so generate alone left it out and
    measured other MTP acceptance for the same prompts (75.7% against spec's 91.9%)."""
    from model import ModelArgs

    from helpers.models import REPO

    ckpt = REPO / "data" / "model"
    args = ModelArgs.from_hf_config(ckpt)
    codec = load_codec(ckpt, args)
    assert codec.bos_id == args.bos_token_id == codec.tokenizer.token_to_id("<|bos|>")
    assert codec.encode("def f():", chat=False)[0] == args.bos_token_id



def test_top_k_keeps_exactly_k_tokens_ties_to_the_lower_id():
    """Masking below the k-th value kept every token tied with it (bfloat16 logits tie often), so
    --top-k 1 sampled among tied tokens and was not greedy (a review)."""
    tied = torch.tensor([[2.0, 5.0, 5.0, 1.0, 5.0]])
    p = SamplingParams(1.0, top_k=1).probs(tied)
    assert p.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]] and int(p.argmax()) == int(tied.argmax())
    p2 = SamplingParams(1.0, top_k=2).probs(tied)
    assert (p2 > 0).sum() == 2 and p2[0, 1] == p2[0, 2] == 0.5


def test_hooks_attached_around_generate_see_each_pass_as_the_readme_says():
    """README, "Hook points": hooks around generate() see the padded prefill, then [B, 1] steps, or
    [B, 2] verify passes and one-position MTP logits with mtp=True; an edit applies to every pass.
    Pinned since a researcher records per-step activations this way (a tour found it unwritten)."""
    m = random_model("tiny")
    prompts, D, V = [[0, 5, 9], [0, 7, 8, 11, 3]], m.args.dim, m.args.vocab_size
    for mtp, chunk in [(False, 1), (True, 2)]:
        seen: dict[str, list] = {}
        rec = lambda t, hook: seen.setdefault(hook.name, []).append(tuple(t.shape))  # noqa: E731
        with m.hooks([(n, rec) for n in ("layers.1.hook_resid_post", "layers.1.ffn.gate.hook_topk_ids",
                                         "layers.1.attn.hook_pattern", "mtp.0.hook_logits")]):
            out = generate(m, prompts, max_new_tokens=4, mtp=mtp)
        resid = seen["layers.1.hook_resid_post"]
        assert resid[0] == (2, 5, D) and resid[1:] and set(resid[1:]) == {(2, chunk, D)}
        assert seen["layers.1.ffn.gate.hook_topk_ids"][0] == (10, m.args.n_activated_experts)
        pattern = seen["layers.1.attn.hook_pattern"]
        assert pattern[0] == (2, m.args.n_heads, 5, 5) and all(p[2] == chunk for p in pattern[1:])
        assert [p[3] for p in pattern[1:]] == sorted(p[3] for p in pattern[1:]) and pattern[1][3] > 5
        assert set(seen.get("mtp.0.hook_logits", [])) == ({(2, 1, V)} if mtp else set())
        assert len(seen.get("mtp.0.hook_logits", [])) == out.mtp_passes
        with m.hooks([("layers.*.hook_resid_post", lambda t, hook: -3 * t)]):  # an edit changes the tokens
            assert generate(m, prompts, max_new_tokens=4, mtp=mtp).tokens != out.tokens
