"""Per-token ablation (analyses/ablate/pertoken.py, `--token-top R`): each token's own top-R experts
masked, DeepSeekMoE's Figure 4 protocol. Against transformers' DeepseekV3 with its router masked per token
by this file's own code, against hand computations on `tiny`, the guard against a brute force of
`check_routable`, the spec file, the command and its resume (the other selections': test_ablate*.py)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import probe
from analyses.ablate import Ablation, AblationError, RouterShape, check_routable, evaluate, load_spec, resolve
from analyses.ablate import run as run_module
from analyses.ablate.__main__ import ablations_from_args, main, parser
from analyses.ablate.pertoken import max_token_top, token_top_hooks
from probe.recorders import Batch
from helpers.ablate_batches import routed_by_hand
from probe.windows import Window

torch.set_num_threads(1)
G1 = "layers.1.ffn.gate."


# ------------------------------------------------------------------------------- the reference
@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(transformers' DeepseekV3ForCausalLM, ours loaded from the same random checkpoint), float32."""
    pytest.importorskip("transformers")
    import model
    from helpers import hf_checkpoint, load_hf

    d = hf_checkpoint(tmp_path_factory.mktemp("hf_pertoken"), seed=3)
    return load_hf(d), model.load(d, dtype="fp32")


def _hf_mask_top(hf, r: int) -> list:
    """Forward pre-hooks on transformers' routers that give each token its own balancing bias with -inf
    at its top-`r` experts by sigmoid(x W^T) + bias (computed here), so transformers' own group-limited
    top-k chooses among the rest and weighs them by the unbiased scores. Returns (handle, router, its bias)."""
    handles = []
    for layer in hf.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if not isinstance(gate, torch.nn.Module):  # a dense layer's MLP
            continue
        bias = gate.e_score_correction_bias.clone()

        def pre(mod, args, bias=bias):
            x = args[0].reshape(-1, mod.hidden_dim).float()
            scores = F.linear(x, mod.weight.float()).sigmoid()
            top = (scores + bias).topk(r, dim=-1).indices
            mod.e_score_correction_bias = bias.expand_as(scores).scatter(1, top, float("-inf"))
        handles.append((gate.register_forward_pre_hook(pre), gate, bias))
    return handles


def _hf_loss(hf, batches: list[Batch], r: int) -> float:
    nll, n = 0.0, 0
    handles = _hf_mask_top(hf, r) if r else []
    try:
        with torch.no_grad():
            for b in batches:
                logits = hf(b.tokens).logits.double()
                ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b.tokens[:, 1:].reshape(-1),
                                     reduction="sum")
                nll, n = nll + float(ce), n + b.tokens[:, 1:].numel()
    finally:
        for h, gate, bias in handles:
            h.remove()
            gate.e_score_correction_bias = bias
    return nll / n


def _full_batches(vocab: int, n=4, seq=24, bs=2) -> list[Batch]:
    """Windows of one length (no padding, so transformers scores the same tokens without a mask)."""
    rng = np.random.default_rng(5)
    ws = [Window(i, f"d{i}", "code" if i % 2 else "prose", 0, rng.integers(2, vocab, seq).astype(np.int32))
          for i in range(n)]
    return [Batch(b, ws[s: s + bs]) for b, s in enumerate(range(0, n, bs))]


@pytest.mark.parametrize("r", [1, 3])
def test_token_top_loss_equals_transformers_with_each_tokens_top_r_masked(hf_pair, r):
    """`evaluate` with Ablation(token_top=R) gives transformers' loss with every token's top-R experts
    masked before its own group-limited routing; the baseline and a mask of R+1 differ from it (the
    comparison can fail)."""
    hf, ours = hf_pair
    batches = _full_batches(ours.args.vocab_size)
    df, _ = evaluate(ours, batches, [Ablation(token_top=r)])
    row = df[df.domain == "all"].iloc[0]
    ref = _hf_loss(hf, batches, r)
    assert row.loss == pytest.approx(ref, abs=1e-6)
    assert row.baseline_loss == pytest.approx(_hf_loss(hf, batches, 0), abs=1e-6)
    assert abs(row.loss - row.baseline_loss) > 1e-3 and abs(_hf_loss(hf, batches, r + 1) - ref) > 1e-3
    assert row.token_top == r and row.n_disabled == r * len(RouterShape.of(ours.args).moe_layers)


# ---------------------------------------------------------------------- by hand, on `tiny`
def _gate_cache(model, tokens, hooks):
    with model.hooks(hooks):
        _, cache = model.run_with_cache(tokens, names=G1 + "hook_*")
    return {k.removeprefix(G1): v for k, v in cache.items()}


def test_reroute_masks_each_tokens_own_top_r_and_routes_the_rest_as_the_gate(tiny, tokens):
    """Per token, in plain Python: its two best selection scores (unbiased + bias) removed, groups ranked
    by the sum of their two best remaining, top-k of the kept groups; weights from the unbiased scores.
    The masked experts differ between tokens (not one fixed set) and are, where the token's groups hold
    them, its first two routed experts of the baseline (those zero mode drops)."""
    r, gate = 2, tiny.layers[1].ffn.gate
    base = _gate_cache(tiny, tokens, [])
    got = _gate_cache(tiny, tokens, token_top_hooks(tiny, r, [1]))
    score, bias = got["hook_scores"].double(), gate.bias.double()
    masked, first = set(), 0
    for t in range(score.shape[0]):
        off = set(sorted(range(16), key=lambda e: -float(score[t, e] + bias[e]))[:r])
        masked |= off
        chosen = base["hook_topk_ids"][t].tolist()
        if off <= set(chosen):
            assert off == set(chosen[:r])
            first += 1
        sel = {e: float(score[t, e] + bias[e]) for e in range(16) if e not in off}
        ids = routed_by_hand(sel, gate)
        assert got["hook_topk_ids"][t].tolist() == ids
        w = np.array([float(score[t, e]) for e in ids])
        np.testing.assert_allclose(got["hook_topk_weights"][t].numpy(), w / w.sum() * gate.route_scale, rtol=1e-5)
    assert len(masked) > r and first > score.shape[0] // 2


def test_the_unbiased_ranking_would_mask_experts_the_token_is_not_routed_to(tiny, tokens):
    """Why the selection score ranks (docs/metrics.md, "Ablation"): with the balancing bias a token's
    best unbiased score can belong to an expert its router does not choose, so masking it would take
    no routed expert away; its best selection score, in a group it keeps, is always chosen."""
    base = _gate_cache(tiny, tokens, [])
    best_s = base["hook_scores"].argmax(-1)
    best_sel = base["hook_allowed_scores"].argmax(-1)
    routed = base["hook_topk_ids"]
    assert not (routed == best_s[:, None]).any(-1).all()
    assert (routed[:, 0] == best_sel).all()


@pytest.mark.parametrize("renormalise", [False, True])
def test_zero_drops_the_weights_of_the_first_r_routed_experts(tiny, tokens, renormalise):
    base = _gate_cache(tiny, tokens, [])
    got = _gate_cache(tiny, tokens, token_top_hooks(tiny, 2, [1], "zero", renormalise=renormalise))
    assert torch.equal(got["hook_topk_ids"], base["hook_topk_ids"])  # the routing is kept
    allowed = base["hook_allowed_scores"].gather(1, base["hook_topk_ids"])
    assert (allowed.diff(dim=-1) <= 0).all()  # the ids are best first: the first two are the token's top 2
    w = base["hook_topk_weights"]
    want = w.clone()
    for t in range(w.shape[0]):
        want[t, :2] = 0
        if renormalise:
            want[t] *= w[t].sum() / want[t].sum()
    torch.testing.assert_close(got["hook_topk_weights"], want)


# ------------------------------------------------------------------------------------ the guard
def _worst_r(shape: RouterShape) -> int:
    """Brute force: the fewest experts whose removal `check_routable` refuses, minus one (it reads only
    how many each group keeps, so every split of the removals over the groups is tried)."""
    n = shape.n_experts // shape.n_groups
    fewest = shape.n_experts + 1
    for removed in itertools.product(range(n + 1), repeat=shape.n_groups):
        ids = [g * n + i for g, k in enumerate(removed) for i in range(k)]
        try:
            check_routable(shape, 1, ids)
        except AblationError:
            fewest = min(fewest, len(ids))
    return fewest - 1


@pytest.mark.parametrize("E,K,G,keep,bias", [
    (16, 4, 4, 2, True), (16, 4, 4, 2, False), (16, 8, 4, 3, True), (16, 2, 4, 1, True), (24, 7, 4, 3, True),
    (24, 5, 6, 2, False), (18, 6, 6, 4, True), (16, 4, 1, 1, True), (16, 4, 4, 4, True), (12, 9, 6, 5, True)])
def test_max_token_top_is_the_routing_guards_worst_case(E, K, G, keep, bias):
    shape = RouterShape(3, 1, E, K, G, keep, bias, 1)
    assert max_token_top(shape) == _worst_r(shape)


def test_token_top_past_the_guard_is_refused_naming_the_flag_and_numbers(tiny):
    """tiny: 16 experts in 4 groups of 4, 2 kept, group score = its two best: 9 masked experts can
    leave 3 groups one expert each (no second score), fewer than the 2 groups to keep."""
    shape = RouterShape.of(tiny.args)
    resolve(Ablation(token_top=8), shape)
    with pytest.raises(AblationError, match=r"^ablation 'token-top9': token_top \(--token-top\) 9 > 8: .*top-k=4"):
        resolve(Ablation(token_top=9), shape)
    stranded = list(range(1, 4)) + list(range(5, 8)) + list(range(9, 12))  # those 9: the guard's own rule
    with pytest.raises(AblationError, match="groups keep >= 2"):
        check_routable(shape, 1, stranded)
    with pytest.raises(AblationError, match=r"token_top \(--token-top\) 5 > top-k=4: mode zero"):
        resolve(Ablation(token_top=5, mode="zero"), shape)
    with pytest.raises(AblationError, match="9 > 8"):
        token_top_hooks(tiny, 9)


def test_the_gate_itself_fails_past_the_guard(tiny, tokens):
    """What the guard prevents: a token whose top 11 leave one expert in each of three groups and two in
    the fourth (scores forced here so it is so) keeps that group and one other: 3 experts for top-4, and
    the Gate refuses the forward."""
    from analyses.ablate.pertoken import token_reroute_hook

    up = torch.zeros(16)
    up[[1, 2, 3, 5, 6, 7, 9, 10, 11, 14, 15]] = 10.0  # left: 0 | 4 | 8 | 12, 13: one group scores, 3 < 4 kept
    mask = token_reroute_hook(11)  # a hook token_top_hooks refuses to build (11 > 8)
    forced = [(G1 + "hook_select_scores", lambda s, hook: mask(s + up.to(s.dtype), hook))]
    with pytest.raises(ValueError, match="fewer than the 4 experts"), tiny.hooks(forced):
        tiny(tokens)


# ----------------------------------------------------------------------- spec, command, resume
def test_spec_file_round_trip(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("- {name: fig4-r2, token_top: 2}\n- {token_top: 1, mode: zero, renormalise: true, layers: [2]}\n")
    a, b = load_spec(p)
    assert (a.name, a.token_top, a.mode) == ("fig4-r2", 2, "reroute")
    assert (b.name, b.token_top, b.layers, b.renormalise) == ("token-top1-zero-renorm", 1, [2], True)
    again = tmp_path / "again.json"
    again.write_text(json.dumps([{k: v for k, v in vars(x).items() if v is not None} for x in (a, b)]))
    assert load_spec(again) == [a, b]
    p.write_text("- {token_top: 2, top: 1}\n")
    with pytest.raises(AblationError, match="choose one of experts, top, random, token_top"):
        load_spec(p)
    p.write_text("- {token_top: -1}\n")
    with pytest.raises(AblationError, match="token_top must be a non-negative integer"):
        load_spec(p)


def test_the_shipped_figure_4_sweep_runs_on_the_bundled_model():
    from pathlib import Path

    import model

    repo = Path(__file__).resolve().parents[2]
    shape = RouterShape.of(model.ModelArgs.from_dict(json.loads((repo / "data" / "model_config.json").read_text())))
    sweep = load_spec(repo / "analyses" / "sweeps" / "token_top.yaml")
    plans = [resolve(a, shape) for a in sweep]
    ratios = sorted({p.n_disabled / (shape.n_experts * len(shape.moe_layers)) for p in plans})
    assert ratios == [r / 32 for r in (1, 2, 3, 4)]


def test_command_flags():
    (a,) = ablations_from_args(parser().parse_args(["--token-top", "3", "--layers", "2", "--mode", "zero"]))
    assert (a.token_top, a.layers, a.mode, a.name) == (3, [2], "zero", "token-top3-zero")
    for argv, msg in [(["--token-top", "0"], "--token-top 0: must be >= 1"),
                      (["--token-top", "2", "--random", "2"], "choose one of --experts, --top, --random, --token-top"),
                      (["--token-top", "2", "--control"], "--control adds the random counterpart of --top")]:
        with pytest.raises(AblationError, match=msg):
            ablations_from_args(parser().parse_args(argv))


def _cli(env, out, spec):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--max-tokens", "200", "--no-progress", "--spec", str(spec)]


def test_an_interrupted_sweep_is_continued_with_its_committed_token_top(probe_env, tmp_path, monkeypatch, capsys):
    """A rerun of the same command takes the committed ablation (and the baseline) and computes the rest,
    as for the other selections (test_ablate_resume.py); the table equals the uninterrupted sweep's."""
    spec = tmp_path / "fig4.yaml"
    spec.write_text("- {token_top: 1}\n- {token_top: 2, mode: zero}\n")
    passes, stop = [], {"at": None}
    real = run_module._ablated

    def counted(*a, **k):
        if stop["at"] == len(passes):
            raise KeyboardInterrupt
        passes.append(1)
        return real(*a, **k)

    monkeypatch.setattr(run_module, "_ablated", counted)
    assert main(_cli(probe_env, tmp_path / "whole", spec)) == 0
    whole = probe.open_run(tmp_path / "whole").df("ablations")
    stop["at"] = 3  # the second ablation of the second command
    assert main(_cli(probe_env, tmp_path / "cut", spec)) == 130
    assert list(probe.open_run(tmp_path / "cut").df("ablations").ablation.unique()) == ["token-top1"]
    stop["at"] = None
    del passes[:]
    assert main(_cli(probe_env, tmp_path / "cut", spec)) == 0
    assert "1 of 2 ablations and the baseline pass taken from the earlier attempt" in capsys.readouterr().err
    assert len(passes) == 1  # token-top2-zero only
    cut = probe.open_run(tmp_path / "cut").df("ablations")
    import pandas as pd

    pd.testing.assert_frame_equal(cut, whole, check_exact=True)
    assert set(whole.token_top) == {1, 2} and set(whole["mode"]) == {"reroute", "zero"}
    assert json.loads(whole.spec[0])["token_layers"] == RouterShape.of(_args(probe_env)).moe_layers


def test_the_command_refuses_a_token_top_past_the_guard_in_one_line(probe_env, tmp_path, capsys):
    argv = ["--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out", str(tmp_path / "o"),
            "--seq-len", "32", "--max-tokens", "200", "--no-progress", "--token-top", "99"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token_top (--token-top) 99 > " in err[0] and "per token)" in err[0]


def test_the_fixed_selections_keep_their_part_names():
    """token_top (None) is left out of their sweep key: an interrupted sweep of before it still resumes."""
    from analyses.ablate.sweep import _selection

    assert "token_top" not in _selection(Ablation(top=2)) and _selection(Ablation(token_top=2))["token_top"] == 2


def _args(probe_env):
    import model

    return model.load(probe_env["ckpt"], device="meta").args
