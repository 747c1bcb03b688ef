"""A NaN the model itself gives at a scored token, in the ablate, importance and steer jobs: it is summed
as given, so its domain's mean (and `all`'s) is NaN, and the job warns once, naming the pass and the
count. Telling scored tokens by isnan (as the jobs did) dropped it: that row's mean then covered one
token fewer than the baseline's and read as a normal number. The positions that are not scored
(position 0, a window's last prediction, padding: `Batch.scored`) still do not count, NaN or not."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from analyses.ablate import Ablation, add_loss, evaluate
from analyses.ablate import run as ablate_run
from analyses.importance import measure
from analyses.importance import run as importance_run
from analyses.steer import Steer
from analyses.steer import evaluate as steer_evaluate
from analyses.steer import run as steer_run
from helpers.ablate_batches import random_batches
from probe.recorders import Batch, model_token_nll
from probe.windows import Window

torch.set_num_threads(1)
# hook_final's row 0, position 2: the prediction of token 3 of window 0 (a prose window, 5..20 tokens: scored)
ROW, POS = 0, 2


def nan_at(row: int, pos: int, calls=(0,)):
    """hook_final (the head's input [B, S, D]): NaN at (row, pos) in the hook's first call (`calls`),
    the batch the job runs first: the model's own NaN at one scored token, the prediction of pos + 1."""
    seen = [0]

    def fn(h: torch.Tensor, hook) -> torch.Tensor:
        hit = seen[0] in calls
        seen[0] += 1
        if not hit:
            return h
        h = h.clone()
        h[row, pos] = float("nan")
        return h
    return fn


def _one_scored_nan(model, batch: Batch) -> None:
    """The injection is what the test means: one NaN among the scored tokens, in window 0 (prose)."""
    with model.hooks([("hook_final", nan_at(ROW, POS))]):
        nll = model_token_nll(model, batch)
    bad = torch.isnan(nll) & batch.scored
    assert bad.sum() == 1 and bad[ROW, POS + 1] and batch.windows[ROW].domain == "prose"


def _tokens(batches, domain: str) -> int:
    return sum(int(len(w.ids)) - 1 for b in batches for w in b.windows if domain in ("all", w.domain))


def _warned(err: str, what: str, n: int, of: int, where: str) -> None:
    lines = [x for x in err.splitlines() if x.startswith("warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warning: {what}: {n:,} of {of:,} scored tokens got a NaN or infinite surprisal"), \
        lines[0]
    assert f"(domain {where})" in lines[0]


# --------------------------------------------------------------------------------- add_loss
def test_add_loss_sums_scored_tokens_as_given_and_counts_the_nonfinite_ones():
    ws = [Window(0, "a", "code", 0, np.arange(2, 8, dtype=np.int32)),
          Window(1, "b", "prose", 0, np.arange(2, 5, dtype=np.int32))]
    b = Batch(0, ws)  # [2, 6]: window 1 padded from position 3
    nll = torch.full((2, 6), 0.5)
    nll[0, 2], nll[1, 1] = float("nan"), float("inf")  # the model's, at scored tokens
    nll[1, 4], nll[0, 0] = float("nan"), 7.0  # padding and position 0: never scored, whatever they hold
    acc = np.zeros((2, 3))
    add_loss(acc, nll, np.repeat([0, 1], 6), b.scored)
    assert np.isnan(acc[0, 0]) and acc[1, 0] == np.inf
    assert acc[:, 1].tolist() == [5, 2] and acc[:, 2].tolist() == [1, 1]
    nll[0, 2], nll[1, 1] = 0.25, 0.25
    acc = np.zeros((2, 3))
    add_loss(acc, nll, np.repeat([0, 1], 6), b.scored)
    assert acc.tolist() == [[2.25, 5, 0], [0.75, 2, 0]]  # 7.0 at position 0 and the padding's NaN left out


# ----------------------------------------------------------------------------------- ablate
@pytest.fixture(scope="module")
def base_ablation(tiny):
    batches = random_batches()
    _one_scored_nan(tiny, batches[0])
    ref, _ = evaluate(tiny, batches, [Ablation(name="x", experts={1: [0, 3]})])
    return batches, ref.set_index("domain")


def test_ablate_keeps_a_nan_of_the_model_in_its_domain_and_warns(tiny, base_ablation, monkeypatch, capsys):
    batches, ref = base_ablation
    real = ablate_run.plan_hooks
    monkeypatch.setattr(ablate_run, "plan_hooks", lambda m, p: real(m, p) + [("hook_final", nan_at(ROW, POS))])
    capsys.readouterr()
    df, _ = evaluate(tiny, batches, [Ablation(name="x", experts={1: [0, 3]})])
    got = df.set_index("domain")
    assert np.isnan(got.loss["prose"]) and np.isnan(got.delta["prose"])
    assert np.isnan(got.loss["all"]) and np.isnan(got.delta["all"])
    assert got.loss["code"] == ref.loss["code"]  # the other domain as without the NaN
    assert (got.baseline_loss == ref.baseline_loss).all() and np.isfinite(got.baseline_loss).all()
    # every scored token counted, the NaN one too: as many as the baseline's (isnan counted one fewer)
    assert (got.tokens == ref.tokens).all() and got.tokens["prose"] == _tokens(batches, "prose")
    _warned(capsys.readouterr().err, "ablation 'x'", 1, _tokens(batches, "all"), "prose")


def test_ablate_baseline_nan_is_said_as_the_baseline_pass(tiny, base_ablation, monkeypatch, capsys):
    batches, ref = base_ablation
    real = ablate_run.forward_batch
    hook = nan_at(ROW, POS)

    def forward(model, batch, moe, hooks):  # the baseline pass is the one without ablation hooks
        return real(model, batch, moe, hooks + ([("hook_final", hook)] if not hooks else []))
    monkeypatch.setattr(ablate_run, "forward_batch", forward)
    capsys.readouterr()
    got = evaluate(tiny, batches, [Ablation(name="x", experts={1: [0, 3]})])[0].set_index("domain")
    assert np.isnan(got.baseline_loss["prose"]) and np.isnan(got.delta["all"]) and got.loss["all"] == ref.loss["all"]
    _warned(capsys.readouterr().err, "the baseline pass (nothing ablated)", 1, _tokens(batches, "all"), "prose")


def test_nan_at_positions_that_are_not_scored_does_not_count(tiny, base_ablation, monkeypatch, capsys):
    """NaN written at every position whose prediction no token is scored by (a window's last
    position and the padding): the rows are those without it, and nothing is warned."""
    batches, ref = base_ablation
    lengths = {}

    def unscored(h: torch.Tensor, hook) -> torch.Tensor:
        keep = torch.arange(h.shape[1])[None] < lengths["now"][:, None] - 1  # predicts a scored token
        assert (~keep).any()  # there is something to write into
        return h.masked_fill(~keep[..., None], float("nan"))

    handle = tiny.register_forward_pre_hook(lambda m, a, kw: lengths.update(now=kw["lengths"].cpu()),
                                            with_kwargs=True)
    real = ablate_run.plan_hooks
    monkeypatch.setattr(ablate_run, "plan_hooks", lambda m, p: real(m, p) + [("hook_final", unscored)])
    capsys.readouterr()
    try:
        got = evaluate(tiny, batches, [Ablation(name="x", experts={1: [0, 3]})])[0].set_index("domain")
    finally:
        handle.remove()
    assert (got.loss == ref.loss).all() and (got.tokens == ref.tokens).all() and np.isfinite(got.loss).all()
    assert "warning" not in capsys.readouterr().err


# ------------------------------------------------------------------------------- importance
def test_importance_keeps_a_nan_of_one_removal_and_names_its_expert(tiny, monkeypatch, capsys):
    """Expert 4 is the second of its pass's three removals (group 3): the NaN goes into its block of
    the repeated batch, batch 0 only; its prose and all rows are NaN, every other row as without it."""
    batches = random_batches()
    ref = measure(tiny, batches, layers=[1], experts=list(range(6)), group=3).set_index(["expert", "domain"])
    now: dict = {}
    real_hook, real_suffix = importance_run.rows_reroute_hook, importance_run.suffix_nll

    def hook(experts_G, rows):
        now["experts"] = experts_G
        return real_hook(experts_G, rows)

    def suffix(model, big, layer, resid, hooks):
        if 4 in now["experts"] and big.index == 0:
            block = big.tokens.shape[0] // len(now["experts"])
            hooks = hooks + [("hook_final", nan_at(now["experts"].index(4) * block + ROW, POS))]
        return real_suffix(model, big, layer, resid, hooks)
    monkeypatch.setattr(importance_run, "rows_reroute_hook", hook)
    monkeypatch.setattr(importance_run, "suffix_nll", suffix)
    capsys.readouterr()
    got = measure(tiny, batches, layers=[1], experts=list(range(6)), group=3).set_index(["expert", "domain"])
    bad = [(4, "prose"), (4, "all")]
    assert got.loc[bad].loss.isna().all() and got.loc[bad].delta.isna().all()
    rest = got.drop(index=bad)
    assert (rest.loss == ref.drop(index=bad).loss).all() and np.isfinite(rest.loss).all()
    assert (got.tokens == ref.tokens).all() and (got.baseline_loss == ref.baseline_loss).all()
    _warned(capsys.readouterr().err, "importance, layer 1, expert 4 removed", 1, _tokens(batches, "all"), "prose")


# ------------------------------------------------------------------------------------ steer
def test_steer_keeps_a_nan_of_the_steered_pass_and_warns(tiny, monkeypatch, capsys):
    batches = random_batches()
    steer = Steer(name="s", experts={1: [5]})
    ref = steer_evaluate(tiny, batches, [steer]).set_index("domain")
    real = steer_run.steered

    @contextlib.contextmanager
    def steered(model, s, row_domains=None):  # the steering's pass, and only it, gives the NaN
        with real(model, s, row_domains) as st, model.hooks([("hook_final", nan_at(ROW, POS))]):
            yield st
    monkeypatch.setattr(steer_run, "steered", steered)
    capsys.readouterr()
    got = steer_evaluate(tiny, batches, [steer]).set_index("domain")
    assert np.isnan(got.loss["prose"]) and np.isnan(got.delta["all"]) and got.loss["code"] == ref.loss["code"]
    assert (got.tokens == ref.tokens).all() and (got.steered_tokens == ref.steered_tokens).all()
    assert (got.forced_share == ref.forced_share).all() and np.isfinite(got.baseline_loss).all()
    _warned(capsys.readouterr().err, "steering 's'", 1, _tokens(batches, "all"), "prose")


# ------------------------------------------------------------------ the readers of the tables
def _importance_rows() -> "pd.DataFrame":  # noqa: F821 (pandas, imported where used)
    """expert_importance rows of two layers: layer 1's every delta NaN (a broken baseline), layer 2's
    expert 2 alone (a NaN of its removal)."""
    import pandas as pd

    rows = []
    for layer in (1, 2):
        for e in range(4):
            delta = np.nan if layer == 1 or e == 2 else 0.01 * (e + 1)
            rows.append({"layer": layer, "expert": e, "domain": "all", "tokens": 100, "load": 10 * (e + 1),
                         "load_share": (e + 1) / 10, "baseline_loss": 5.0, "loss": 5.0 + delta, "delta": delta})
    return pd.DataFrame(rows)


@pytest.mark.slow  # 0.56 s (the summaries' first imports)
def test_importance_summaries_say_a_nan_delta_and_do_not_crash():
    """load_vs_importance took a layer's top expert by idxmax, which raised on a layer whose every
    delta is NaN and skipped a NaN one (the top could be that expert): the top is None there, and the
    report's sentence says n/a."""
    from analyses.importance import load_vs_importance, rank_disagreement
    from analyses.report import research

    df = _importance_rows()
    corr = load_vs_importance(df).set_index("layer")
    assert corr.top_expert.isna().all() and corr.top_delta.isna().all() and corr.spearman.isna().all()
    assert len(rank_disagreement(df, top=2)) == 4  # NaN ranks sort last, no error
    s = research._importance_sentence({"correlation": corr.reset_index(), "tokens": 100, "table": df})
    assert "L1 nan (some expert's load share or loss delta is not a number)" in s
    assert "Most important: L1 n/a (a loss delta is NaN), L2 n/a (a loss delta is NaN)." in s
    good = df.assign(delta=df.delta.fillna(0.0))  # the control: numbers give the top expert
    assert load_vs_importance(good).top_expert.tolist() == [0, 3]


def test_the_reports_sweep_curve_keeps_a_nan_seed_and_says_so():
    """The report's masking curve averaged the random seeds' losses less every non-finite one: a seed
    the model gave a NaN vanished from the mean like a refused one (absent from the table). A seed in
    the table now makes its fraction's mean NaN, and the summary names the fraction."""
    from types import SimpleNamespace

    import pandas as pd

    from analyses.report.data import _curve
    from analyses.report.render import _sweep_summary

    loss = {"top0": 5.0, "top2": 5.3, "random2-s0": 5.1, "random2-s1": np.nan, "top4": 5.6, "random4-s0": 5.2}
    rows = pd.DataFrame({"ablation": list(loss), "domain": "all", "loss": list(loss.values()), "baseline_loss": 5.0})
    curve = _curve(rows, [0, 2, 4], [0, 1], 16).set_index("masked")
    assert np.isnan(curve.random_delta[2]) and curve.random_seeds[2] == 2
    assert curve.random_delta[4] == pytest.approx(0.2) and curve.random_seeds[4] == 1  # seed 1 refused: absent
    sw = SimpleNamespace(curve=curve.reset_index(), skipped={"random4-s1": "refused"},
                         options={"rank_by": "eval", "tokens": 1000, "domain_tokens": 200, "n_experts": 16,
                                  "domain_top": 2},
                         domain_summary=pd.DataFrame(columns=["domain", "own", "on_others", "by_others",
                                                              "own_above_on_others_mean"]))
    s = _sweep_summary(sw)
    assert "4/16 -> +0.6000 (random +0.2000, 1 seed)" in s[0] and "2/16 ->" not in s[0]
    assert s[1] == ("Not compared at 2/16: a loss there is NaN or infinite, the model's own output (the ablate job "
                    "warned of it).")


def test_the_reports_per_domain_sentence_says_a_nan_delta_not_a_refusal():
    """A NaN delta of one domain's own-experts ablation leaves that domain out of the per-domain sentence
    (its means are NaN, `_domain_table`) and says why; where every domain is left out, the sentence said
    the routing guard refused every selection, which it had not."""
    from types import SimpleNamespace

    import pandas as pd

    from analyses.report.data import _domain_table
    from analyses.report.render import _sweep_summary

    doms = ["code", "math", "prose"]

    def summary(nan_at: list[tuple[str, str]]) -> str:
        rows = pd.DataFrame([{"ablation": f"own2-{m}", "domain": d,
                              "delta": np.nan if (d, m) in nan_at else 0.1 + 0.2 * (d == m)}
                             for d in doms for m in doms])
        _, ds = _domain_table(rows, doms, 2)
        sw = SimpleNamespace(curve=pd.DataFrame({"masked": [0, 4], "top_delta": [0.0, 0.3], "random_delta": [0.0, 0.1],
                                                 "random_delta_std": [np.nan, 0.01], "random_seeds": [0, 2]}), skipped={}, rows=rows,
                             domain_summary=ds, options={"rank_by": "eval", "tokens": 900, "domain_tokens": 300,
                                                         "n_experts": 16, "domain_top": 2})
        return _sweep_summary(sw)[-1]

    assert "for 3 of 3 domains" in summary([]) and "Left out" not in summary([])  # the control
    one = summary([("code", "math")])  # math's own experts on code: math's on_others is NaN
    # math left out (its experts' mean on the others is NaN); code's by_others is NaN: not counted either way
    assert "for 2 of 2 domains, and more than the other domains' experts hurt it (mean) for 1 of 1;" in one
    assert "math" not in one.split("own deltas")[1].split("Left out")[0]
    assert one.endswith("Left out: 1 domain(s) where a selection was refused or a loss there is NaN or infinite, "
                        "the model's own output (the ablate job warned of it).")
    every = summary([(d, m) for d in doms for m in doms])
    assert every == ("Per-domain ablation: not measured (a selection was refused or a loss there is NaN or "
                     "infinite, the model's own output (the ablate job warned of it)).")
