"""Sampling and the decode loop's edges (generate/sampling.py, generate/decode.py): top-k boundaries
and ties, the speculative verification rule with distinct positions, stops on the last allowed token,
rows without room, forward-pass counts and the input checks, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generate import GenerateError, SamplingParams, generate, propose, verify_drafts


def test_a_negative_top_k_is_refused():
    with pytest.raises(GenerateError, match=r"top_k=-1 must be an integer >= 0 \(0 = off\)"):
        SamplingParams(1.0, top_k=-1)


def test_a_temperature_or_top_p_that_is_not_a_number_is_refused():
    """temperature="0.7" (as read from a JSON or YAML config's text) or None was Python's TypeError from the
    range check ("'<=' not supported between instances of 'int' and 'str'"), and temperature=True sampled
    at 1.0 (a bug hunt): each is one GenerateError naming the field."""
    for kw, msg in [(dict(temperature="0.7"), r"^temperature='0\.7' must be a number$"),
                    (dict(temperature=None), r"^temperature=None must be a number$"),
                    (dict(temperature=True), r"^temperature=True must be a number$"),
                    (dict(temperature=1.0, top_p="0.9"), r"^top_p='0\.9' must be a number$"),
                    (dict(temperature=1.0, top_p=False), r"^top_p=False must be a number$")]:
        with pytest.raises(GenerateError, match=msg):
            SamplingParams(**kw)
    # the controls: an int, and numpy's floats, are numbers
    assert SamplingParams(1, top_p=np.float32(0.9)).probs(torch.zeros(1, 4)).shape == (1, 4)
    assert not SamplingParams(np.float64(0.5)).greedy


def test_top_k_one_below_the_vocabulary_drops_the_least_likely_token():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    got = SamplingParams(1.0, top_k=4).probs(torch.log(p)[None])
    assert torch.allclose(got, torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.0]]) / 0.95)


def test_top_k_one_on_a_long_tied_row_keeps_the_lowest_tied_id():
    # an unstable sort keeps another of the tied tokens once a row is long (from ~100 on CPU)
    logits = torch.randint(0, 3, (8, 512), generator=torch.Generator().manual_seed(0)).float()
    got = SamplingParams(1.0, top_k=1).probs(logits)
    first_max = [row.index(max(row)) for row in logits.tolist()]
    assert got.argmax(-1).tolist() == first_max and torch.equal(got.max(-1).values, torch.ones(8))


def test_sampled_drafts_verified_with_their_own_proposal_keep_the_target_distribution():
    # propose() must hand verify_drafts the q it drew from: a sampled draft taken as deterministic
    # (q = one-hot) is accepted with probability p(draft), and the committed tokens are not p
    n, V = 40000, 5
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    q = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
    sp = SamplingParams(1.0)
    draft, q_used = propose(torch.log(q).expand(n, V), torch.zeros(n, dtype=torch.long), sp, g, None, lambda x: x)
    acc, t1, _ = verify_drafts(torch.log(p).expand(n, 2, V).clone(), draft, q_used, sp, g)
    assert (torch.bincount(t1, minlength=V).float() / n - p).abs().max() < 0.01
    assert abs(acc.float().mean() - torch.minimum(p, q).sum()) < 0.01


def test_verification_judges_the_draft_at_the_first_position_and_draws_the_next_from_the_second():
    # the test above uses one distribution at both positions; here they differ
    n, V = 40000, 4
    g = torch.Generator().manual_seed(2)
    p, r, q = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.full((V,), 0.25)
    logits = torch.stack([torch.log(p), torch.log(r)]).expand(n, 2, V).clone()
    draft = torch.multinomial(q.expand(n, V), 1, replacement=True, generator=g)[:, 0]
    acc, t1, t2 = verify_drafts(logits, draft, q.expand(n, V), SamplingParams(1.0), g)
    assert abs(acc.float().mean() - torch.minimum(p, q).sum()) < 0.01  # 0.8 (0.55 judged by r)
    assert (torch.bincount(t1, minlength=V).float() / n - p).abs().max() < 0.01
    assert (torch.bincount(t2[acc], minlength=V).float() / int(acc.sum()) - r).abs().max() < 0.015


def test_a_draft_the_target_is_certain_of_is_accepted_without_a_resample():
    # p = the one-hot draft leaves no residual max(p - q, 0) to resample from (multinomial refused it)
    logits = torch.tensor([[[0.0, 5.0, 1.0], [0.0, 0.0, 0.0]]])
    acc, t1, _ = verify_drafts(logits, torch.tensor([1]), None, SamplingParams(1.0, top_k=1),
                               torch.Generator().manual_seed(0))
    assert acc.tolist() == [True] and t1.tolist() == [1]


@torch.no_grad()
def test_a_stop_token_that_is_also_the_last_allowed_token_finishes_as_stop(tiny):
    prompts = [[3, 17, 99, 250]]
    ref = generate(tiny, prompts, max_new_tokens=5)
    stop = ref.tokens[0][4]
    assert stop not in ref.tokens[0][:4] and ref.finish_reasons == ["length"]  # the control
    for mtp in (False, True):
        got = generate(tiny, prompts, max_new_tokens=5, stop_ids=[stop], mtp=mtp)
        assert got.tokens == ref.tokens and got.finish_reasons == ["stop"], mtp


@torch.no_grad()
def test_a_row_without_room_leaves_the_others_generating(tiny):
    full = [2 + i % 500 for i in range(tiny.args.max_seq_len)]
    short = [5, 6, 7]
    res = generate(tiny, [full, short], max_new_tokens=4)
    assert res.tokens == [[], generate(tiny, [short], max_new_tokens=4).tokens[0]]
    assert res.finish_reasons == ["length", "length"]
    for mtp in (False, True):  # its forward passes: none, as when it is alone
        assert generate(tiny, [full, short], max_new_tokens=4, mtp=mtp).forward_passes[0] == 0, mtp
        assert generate(tiny, [full], max_new_tokens=4, mtp=mtp).forward_passes == [0], mtp


@torch.no_grad()
def test_forward_pass_counts_are_the_model_calls(tiny, monkeypatch):
    calls = {"main": 0, "mtp": 0}
    real_mtp = tiny.mtp_logits

    def mtp_logits(*a, **kw):
        calls["mtp"] += 1
        return real_mtp(*a, **kw)

    monkeypatch.setattr(tiny, "mtp_logits", mtp_logits)
    handle = tiny.register_forward_pre_hook(lambda *a: calls.__setitem__("main", calls["main"] + 1))
    try:
        for mtp in (False, True):
            calls.update(main=0, mtp=0)
            res = generate(tiny, [[3, 17, 99], [5, 6, 7, 8, 9]], max_new_tokens=6, mtp=mtp)
            assert res.total_forward_passes == res.summary()["batch_forward_calls"] == calls["main"], mtp
            assert res.mtp_passes == calls["mtp"]
    finally:
        handle.remove()
    assert calls["main"] > 1 and calls["mtp"] > 1  # the control: both were counted


@torch.no_grad()
def test_negative_and_bool_ids_and_a_bool_budget_are_refused(tiny):
    for prompts, kw, msg in [([[-1, 2]], {}, r"prompt 0: token ids must be in \[0, 512\), got \[-1, 2\]"),
                             ([[1, 2], [True, False]], {}, "prompt 1: expected a flat list of integer token ids, "
                                                           "got torch.bool"),
                             ([[1, 2]], {"max_new_tokens": True}, "max_new_tokens=True must be an integer >= 0")]:
        with pytest.raises(GenerateError, match=msg):
            generate(tiny, prompts, **kw)
    none = generate(tiny, [[1, 2]], max_new_tokens=0)  # the control: 0 new tokens is allowed
    assert none.tokens == [[]] and none.finish_reasons == ["length"] and none.forward_passes == [0]
