"""Expert steering (analyses.steer) on random tiny checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import probe
from analyses.steer import (Prompt, Steer, SteerError, corpus_prompts, evaluate, generations, parse_token_filter,
                            steered, text_prompts)
from analyses.steer.__main__ import main
from generate import generate
from probe.windows import Window
from probe.recorders import Batch, token_nll

from helpers.analysis_runs import corpus_order_run, corpus_tokens, scored_tokens
from helpers.cli_errors import (assert_one_line_error, assert_out_under_a_file_is_refused, unwritable_msg,
                                  unwritable_out)

torch.set_num_threads(1)
G2 = "layers.2.ffn.gate."
G1 = "layers.1.ffn.gate."


def _gate(model, tokens, prefix, steer=None, row_domains=None):
    """Every hook tensor of one gate, with or without a steering."""
    if steer is None:
        _, cache = model.run_with_cache(tokens, names=prefix + "hook_*")
    else:
        with steered(model, steer, row_domains) as st:
            _, cache = model.run_with_cache(tokens, names=prefix + "hook_*")
        cache["state"] = st
    return {k.rsplit(".", 1)[-1]: v for k, v in cache.items()}


def _batches(n_windows=6, seq=20, seed=0, bs=3):
    rng = np.random.default_rng(seed)
    ws = [Window(i, f"d{i}", "code" if i % 2 else "prose", 0,
                 rng.integers(2, 512, rng.integers(5, seq + 1)).astype(np.int32)) for i in range(n_windows)]
    return [Batch(b, ws[s: s + bs]) for b, s in enumerate(range(0, len(ws), bs))]


# ------------------------------------------------------------------------------- force
def test_force_puts_the_experts_in_every_steered_top_k_and_leaves_other_rows_alone(tiny, tokens):
    forced = [5, 9]
    doms = ["code", "prose", "code"]  # rows 0 and 2 steered
    base = _gate(tiny, tokens, G2)
    got = _gate(tiny, tokens, G2, Steer(experts={2: forced}, domains=["code"]), doms)
    rows = torch.tensor([d == "code" for d in doms]).repeat_interleave(tokens.shape[1])
    holds = lambda ids: torch.stack([(ids == e).any(-1) for e in forced]).all(0)  # noqa: E731
    # negative control: without steering many steered tokens lack them, some even in an excluded group
    assert not holds(base["hook_topk_ids"][rows]).any()
    assert torch.isinf(base["hook_allowed_scores"][rows][:, forced]).any()
    assert holds(got["hook_topk_ids"][rows]).all()
    assert (got["hook_topk_ids"].sort(-1).values.diff(dim=-1) != 0).all()  # still K distinct experts
    assert torch.equal(got["hook_topk_ids"][~rows], base["hook_topk_ids"][~rows])
    assert torch.equal(got["hook_topk_weights"][~rows], base["hook_topk_weights"][~rows])
    assert got["state"].forced_share == 1.0 and got["state"].steered_tokens == int(rows.sum())


def test_token_filter_steers_only_those_ids(tiny, tokens):
    chosen = sorted(set(tokens[0, :6].tolist()))
    base = _gate(tiny, tokens, G2)
    got = _gate(tiny, tokens, G2, Steer(experts="2:5+9", token_ids=chosen))
    rows = torch.isin(tokens.reshape(-1), torch.tensor(chosen))
    assert 0 < rows.sum() < rows.numel()
    ids = got["hook_topk_ids"]
    assert ((ids[rows] == 5).any(-1) & (ids[rows] == 9).any(-1)).all()
    assert torch.equal(ids[~rows], base["hook_topk_ids"][~rows])
    assert got["state"].steered_tokens == int(rows.sum())


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_forced_weights_are_the_routers_own_rule(tiny, tokens):
    """Recomputed by hand: the unbiased scores gathered at the new ids, normalised, times route_scale."""
    gate = tiny.layers[2].ffn.gate
    got = _gate(tiny, tokens, G2, Steer(experts={2: [0, 5, 9]}))
    scores, ids = got["hook_scores"].double(), got["hook_topk_ids"]
    w = scores.gather(1, ids)
    want = w / w.sum(-1, keepdim=True) * gate.route_scale
    assert gate.norm_topk_prob
    torch.testing.assert_close(got["hook_topk_weights"].double(), want, rtol=1e-6, atol=0)
    base = _gate(tiny, tokens, G2)
    assert not torch.allclose(got["hook_topk_weights"], base["hook_topk_weights"])  # they did change


def test_too_many_forced_experts_and_bad_experts_are_refused(tiny, tokens):
    with pytest.raises(SteerError, match=r"layer 2: 5 experts forced \(0\+1\+2\+3\+4\) but a token takes only "
                                         "top-k=4"):
        with steered(tiny, Steer(experts="2:0+1+2+3+4")):
            pass
    with steered(tiny, Steer(experts="2:0+1+2+3+4", mode="bias")):  # a bias may name more
        pass
    with pytest.raises(SteerError, match="layer 0 is dense"):
        with steered(tiny, Steer(experts="0:1")):
            pass
    with pytest.raises(SteerError, match="set row_domains"):
        with steered(tiny, Steer(experts="2:1", domains=["code"])):
            tiny(tokens)
    for bad, msg in [(dict(experts="2:1", mode="push"), "mode 'push'"), (dict(experts={}), "nothing to steer"),
                     (dict(experts="2:1", mode="bias", bias=math.inf), "must be a finite number")]:
        with pytest.raises(SteerError, match=msg):
            Steer(**bad)


def test_one_selection_gets_one_name_however_it_is_written():
    """The default name keys the steering's rows: the same experts written in another order, or with
    a repeat, must not become a second steering in the table."""
    names = {Steer(experts=e).name for e in ("1:3,2:5+7", "2:7+5,1:3", "2:5+7+7,1:3", {2: [7, 5], 1: [3]})}
    assert names == {"force-1:3,2:5+7"}
    assert Steer(experts="2:5").name != Steer(experts="2:7").name  # the control


# -------------------------------------------------------------------------------- bias
def _reference_ids(logits, bias, gate, expert, add):
    """Per token in plain Python: selection = sigmoid + balancing bias (+ `add` at `expert`), groups
    ranked by the sum of their two best, top-k of the kept groups."""
    per_group, out = gate.n_experts // gate.n_groups, []
    for row in logits.double():
        sel = [1 / (1 + math.exp(-float(v))) + float(b) for v, b in zip(row, bias)]
        sel[expert] += add
        gscore = {g: sum(sorted(sel[g * per_group:(g + 1) * per_group], reverse=True)[:2])
                  for g in range(gate.n_groups)}
        groups = sorted(gscore, key=gscore.get, reverse=True)[: gate.topk_groups]
        allowed = [e for e in range(gate.n_experts) if e // per_group in groups]
        out.append(sorted(sorted(allowed, key=lambda e: sel[e], reverse=True)[: gate.topk]))
    return out


def test_bias_mode_against_a_hand_computed_router(tiny, tokens):
    gate, e = tiny.layers[1].ffn.gate, 6
    base = _gate(tiny, tokens, G1)
    logits = base["hook_logits"]
    for add, share in [(0.3, "mixed"), (10.0, 1.0), (1e-9, None)]:
        got = _gate(tiny, tokens, G1, Steer(experts={1: [e]}, mode="bias", bias=add))
        ids = got["hook_topk_ids"].sort(-1).values.tolist()
        assert ids == _reference_ids(logits, gate.bias, gate, e, add)
        f = got["state"].forced_share
        if share == "mixed":  # the router takes it for some tokens and refuses it for others
            assert 0 < f < 1 and f > (base["hook_topk_ids"] == e).any(-1).float().mean()
        elif share == 1.0:
            assert f == 1.0
        else:  # too small to matter: the baseline routing, weights included
            assert torch.equal(got["hook_topk_ids"], base["hook_topk_ids"])
            assert torch.equal(got["hook_topk_weights"], base["hook_topk_weights"])


def test_bias_mode_forced_share_counts_tokens_holding_every_steered_expert(tiny, tokens):
    """forced_share: the share of steered tokens whose top-k holds EVERY steered expert of the layer,
    counted here from the top-k ids. Counting a token that holds any one of them overstated a bias
    steering of two experts (a review)."""
    got = _gate(tiny, tokens, G1, Steer(experts={1: [2, 6]}, mode="bias", bias=0.3))
    ids = got["hook_topk_ids"]
    has2, has6 = (ids == 2).any(-1), (ids == 6).any(-1)
    both, either = int((has2 & has6).sum()) / len(ids), int((has2 | has6).sum()) / len(ids)
    assert 0 < both < either  # the control: the two counts differ on these tokens
    assert got["state"].forced_share == pytest.approx(both, rel=1e-12)
    assert got["state"].pairs == {1: ids.shape[0]}


# ---------------------------------------------------------------------------- loss rows
@torch.no_grad()
def _manual_losses(model, batches, forced, layer, domain):
    """Per domain: (baseline mean surprisal, steered mean surprisal, scored tokens), by hand."""
    sums: dict = {}
    for b in batches:
        rows = torch.tensor([w.domain == domain for w in b.windows]).repeat_interleave(b.tokens.shape[1])

        def force(t, hook):
            t = t.clone()
            t[rows[:, None] & torch.isin(torch.arange(t.shape[1]), torch.tensor(forced))[None]] = float("inf")
            return t

        base = token_nll(b, model(b.tokens, lengths=b.lengths))
        with model.hooks([(f"layers.{layer}.ffn.gate.hook_allowed_scores", force)]):
            st = token_nll(b, model(b.tokens, lengths=b.lengths))
        for i, w in enumerate(b.windows):
            s = sums.setdefault(w.domain, [0.0, 0.0, 0])
            ok = ~torch.isnan(base[i])
            s[0] += float(base[i][ok].double().sum())
            s[1] += float(st[i][ok].double().sum())
            s[2] += int(ok.sum())
    return {d: (a / n, c / n, n) for d, (a, c, n) in sums.items()}


def test_loss_rows_equal_a_manual_computation(tiny):
    batches = _batches()
    chosen = [int(t) for t in batches[0].tokens[1, 1:6]]
    steers = [Steer(name="code", experts={2: [3, 11]}, domains=["code"]),
              Steer(name="tok", experts={2: [3]}, token_ids=chosen)]
    df = evaluate(tiny, batches, steers)
    assert set(df.kind) == {"loss"} and list(df.domain.unique()) == ["all", "code", "prose"]
    want = _manual_losses(tiny, batches, [3, 11], 2, "code")
    code = df[df.steer == "code"].set_index("domain")
    for d, (bl, loss, n) in want.items():
        assert code.loc[d, "tokens"] == n
        assert code.loc[d, "baseline_loss"] == pytest.approx(bl, rel=1e-6)
        assert code.loc[d, "loss"] == pytest.approx(loss, rel=1e-6)
    assert code.loc["code", "delta"] != 0
    assert code.loc["code", "steered_tokens"] == want["code"][2] and code.loc["prose", "steered_tokens"] == 0
    assert code.loc["all", "steered_tokens"] == want["code"][2]
    assert code.loc["code", "forced_share"] == 1.0 and code.loc["all", "forced_share"] == 1.0
    assert np.isnan(code.loc["prose", "forced_share"])
    assert json.loads(code.spec.iloc[0]) == {"name": "code", "mode": "force", "experts": {"2": [3, 11]},
                                            "domains": ["code"], "token_ids": None}
    # the token filter: scored positions whose token is one of `chosen`
    tok = df[(df.steer == "tok") & (df.domain == "all")].iloc[0]
    n = sum(int(torch.isin(b.tokens[:, 1:], torch.tensor(chosen))[b.valid[:, 1:]].sum()) for b in batches)
    assert tok.steered_tokens == n and 0 < n < tok.tokens
    assert tok.baseline_loss == code.loc["all", "baseline_loss"]  # one shared baseline


# --------------------------------------------------------------------------- generation
def test_generation_rows(tiny):
    prompts = [Prompt("p0", [0, 17, 99, 250, 3], "code"), Prompt("p1", [0, 400, 12], "prose")]
    absurd = Steer(name="absurd", experts="1:0+1+2+3,2:12+13+14+15", domains=["code"])
    df = generations(tiny, [absurd], prompts, max_new_tokens=6)
    plain = [generate(tiny, [p.ids], max_new_tokens=6).tokens[0] for p in prompts]
    assert df.baseline_text.tolist() == [" ".join(map(str, t)) for t in plain]
    code, prose = df.iloc[0], df.iloc[1]
    assert code.steered_text != code.baseline_text and code.forced_share == 1.0
    assert code.steered_tokens == len(prompts[0].ids) + code.tokens - 1  # prefill, then each token fed back
    assert code.kind == "generation" and code.domain == "code" and code.prompt == "p0"
    # negative control of the domain filter: the prose prompt is not steered
    assert prose.steered_tokens == 0 and prose.steered_text == prose.baseline_text
    assert prose.forced_share is None or np.isnan(prose.forced_share)


# ---------------------------------------------------------------------------------- CLI
def _cli(env, out, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--domain-tokens", "200", "--max-new-tokens", "4", "--prompt-tokens", "8",
            "--no-progress", *extra]


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_cli_end_to_end_writes_the_steering_table(probe_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(probe_env, out, "--experts", "1:3+5,2:7", "--steer-domain", "code")) == 0
    text = capsys.readouterr().out
    assert "steering force-1:3+5,2:7@code" in text and "baseline" in text and f"wrote {out / 'steering'}" in text
    run = probe.open_run(out)
    assert run.tables == ["steering"] and run.status == "complete"
    df = run.sql("select * from steering order by kind, domain").df()
    assert df.kind.tolist() == ["generation"] * 2 + ["loss"] * 3
    loss = df[df.kind == "loss"].set_index("domain")
    assert loss.loc["prose", "steered_tokens"] == 0 and loss.loc["code", "steered_tokens"] > 0
    assert loss.loc["code", "forced_share"] == 1.0 and loss.loc["all", "tokens"] == loss.tokens.sum() / 2
    gen = df[df.kind == "generation"].set_index("domain")
    assert gen.loc["code", "steered_tokens"] > 0 and gen.loc["prose", "steered_tokens"] == 0
    parts = run.files("steering")
    assert main(_cli(probe_env, out, "--experts", "1:3+5,2:7", "--steer-domain", "code")) == 0
    assert probe.open_run(out).files("steering") == parts  # the same command replaces its part
    assert not list((out / "steering").glob(".*"))
    assert main(_cli(probe_env, out, "--experts", "2:1", "--mode", "bias", "--bias", "0.5",
                     "--prompt", "def f(x):", "--steer-tokens", "def,7")) == 0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(probe_env["ckpt"] / "tokenizer.json"))
    want = {7} | {ids[0] for ids in (tok.encode(v).ids for v in ("def", " def")) if len(ids) == 1}
    assert len(want) > 1
    df = probe.open_run(out).df("steering")
    bias = df[df.steer == f"bias-2:1-b0.5@{len(want)}tokens"]
    spec = json.loads(bias.spec.iloc[0])
    assert spec["bias"] == 0.5 and spec["token_ids"] == sorted(want)
    assert bias[bias.kind == "generation"].prompt.tolist() == ["def f(x):"]
    # no token generated (found by a review): the share the steered experts took is n/a, not a
    # TypeError after the table was written
    assert main(_cli(probe_env, out, "--experts", "2:1", "--max-new-tokens", "0")) == 0
    assert "steered (forced_share n/a (no token generated))" in capsys.readouterr().out
    # tokens generated for a prompt of a domain the steering leaves alone: none steered, not none generated
    assert main(_cli(probe_env, out, "--experts", "2:1", "--max-new-tokens", "3", "--steer-domain", "code")) == 0
    printed = capsys.readouterr().out
    assert "n/a (no token steered)" in printed and "n/a (no token generated)" not in printed


@pytest.mark.parametrize("extra,msg", [
    # the flag named: it was "layer 0 is dense ..." alone, where the job's other errors name theirs (a tour)
    (["--experts", "1:99"], "--experts 1:99: expert 1:99 out of range"),
    (["--experts", "0:1"], "--experts 0:1: layer 0 is dense"),
    (["--experts", "1:0+1+2+3+4"], "--experts 1:0+1+2+3+4: layer 1: 5 experts forced"),
    (["--experts", "1-2"], "expected layer:expert"),
    # the whole corpus read (no --max-tokens): no cap to raise (it said "a larger --max-tokens samples more")
    (["--experts", "1:2", "--steer-domain", "poetry"], "--steer-domain 'poetry': no such domain in the windows sampled "
                                                       "(domains there: code, prose); the corpus "),
    (["--experts", "1:2", "--steer-domain", "poetry", "--max-tokens", "100"],
     "--steer-domain 'poetry': no such domain in the windows sampled (domains there: code, prose); a larger "
     "--max-tokens samples more of the corpus"),
    (["--experts", "1:2", "--steer-tokens", "zzqxv"], "--steer-tokens 'zzqxv': not a single token"),
    # a digit to str.isdigit that int() refuses: was "invalid literal for int()" (a review)
    (["--experts", "1:2", "--steer-tokens", "\u00b2"], "--steer-tokens '\u00b2': not a single token"),
    (["--experts", "1:2", "--bias", "0.5"], "--bias applies to --mode bias only (this command gives --mode force)"),
    # each flag named with its value: it was "--max-new-tokens must be >= 0 and --prompt-tokens >= 1" for either
    (["--experts", "1:2", "--prompt-tokens", "0"], "error: --prompt-tokens 0: must be >= 1 (tokens of each domain's"),
    (["--experts", "1:2", "--max-new-tokens", "-1"], "error: --max-new-tokens -1: must be >= 0 (greedy tokens per"),
    ([], "nothing to steer: pass --experts"),
    (["--experts", "1:2", "--prompt", " "], "--prompt '': an empty prompt"),  # it generated from BOS alone
])
def test_cli_bad_inputs_are_one_line_errors(probe_env, tmp_path, capsys, extra, msg):
    assert_one_line_error(main(_cli(probe_env, tmp_path / "o", *extra)), capsys, msg, tmp_path / "o")


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_run_is_steered_within_its_own_windows(probe_env, tmp_path, capsys):
    """With --run and no --max-tokens, --domain-tokens samples within the run's windows: no domain gets
    more tokens than the run holds (a run's 30 tokens of prose were steered as 100, read from the whole
    corpus), and one the run's cap left out is not sampled: --steer-domain says why (a tour)."""
    rec = corpus_order_run(probe_env, tmp_path / "rec", corpus_tokens(probe_env, "code") + 30)
    held = scored_tokens(rec)
    assert main(["--run", str(rec), "--experts", "2:1", "--domain-tokens", "100", "--max-new-tokens", "0",
                 "--no-progress"]) == 0
    loss = probe.open_run(rec).df("steering").query("kind == 'loss'").set_index("domain")
    assert set(loss.index) == {"all", "code", "prose"}
    assert loss.tokens["code"] <= 100 and 0 < loss.tokens["prose"] <= held["prose"] < 30
    one = corpus_order_run(probe_env, tmp_path / "one", 150)
    assert_one_line_error(main(["--run", str(one), "--experts", "2:1", "--steer-domain", "prose"]), capsys,
                          "--steer-domain 'prose': no such domain in the windows sampled (domains there: code); they "
                          "are the run's own windows, up to its --max-tokens 150; pass --max-tokens")


def test_an_out_under_a_file_is_refused_before_the_model_loads(probe_env, tmp_path, capsys):
    assert_out_under_a_file_is_refused(main, lambda out, *a: _cli(probe_env, out, *a), tmp_path, capsys, "--experts", "1:2")


def test_an_out_the_os_refuses_is_refused_before_the_model_loads(probe_env, capsys, monkeypatch):
    out = unwritable_out(monkeypatch)  # os.access says yes; found only when the table was written (a review)
    assert_one_line_error(main(_cli(probe_env, out, "--experts", "1:2")), capsys, unwritable_msg("--out", out))


def test_each_row_key_appears_once_with_a_prompt_given_twice(probe_env, tmp_path):
    """A prompt given twice was one pass but two units of the part: its generation row was written twice,
    under one (steer, kind, domain, prompt) key."""
    out = tmp_path / "run"
    assert main(_cli(probe_env, out, "--experts", "2:7", "--prompt", "def f", "--prompt", "x", "--prompt",
                     "def f")) == 0
    df = probe.open_run(out).df("steering")
    keys = df.groupby(["steer", "spec", "kind", "domain", "prompt"], dropna=False).size()
    assert len(keys) == len(df) == 5 and keys.max() == 1, keys[keys > 1]
    assert df[df.kind == "generation"].prompt.tolist() == ["def f", "x"] and (df.kind == "loss").sum() == 3


def test_two_steerings_of_one_name_are_refused(tiny):
    """The same selection twice (however written) wrote two identical sets of loss rows under one key."""
    with pytest.raises(SteerError, match="two steerings are named 'force-2:3': names must be unique"):
        evaluate(tiny, _batches(), [Steer(experts={2: [3]}), Steer(experts="2:3")])
    with pytest.raises(SteerError, match="two steerings are named 'x'"):
        generations(tiny, [Steer(name="x", experts="2:3"), Steer(name="x", experts="2:4")], [Prompt("p", [0, 5])])


def test_cli_missing_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--experts", "1:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a run directory" in err and "\n" not in err


def test_generations_stop_where_python_m_generate_stops(probe_env, tmp_path, capsys):
    # config.json's eos_token_id (one id or a list) and generation_config.json's, as `python -m generate`
    # takes them (the job read config.json's alone); a generation_config.json that names no ids is one line
    import shutil

    from tokenizers import Tokenizer

    from analyses.steer.run import _stops
    from probe.job import checkpoint_args

    ck = shutil.copytree(probe_env["ckpt"], tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(cfg | {"eos_token_id": [1, 2]}))
    (ck / "generation_config.json").write_text(json.dumps({"eos_token_id": 5}))
    tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
    assert _stops(ck, checkpoint_args(ck), tok) == [1, 2, 5]
    (ck / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    env = probe_env | {"ckpt": ck}
    assert_one_line_error(main(_cli(env, tmp_path / "o", "--experts", "1:2")), capsys,
                          "generation_config.json: eos_token_id='</s>' must be a token id", tmp_path / "o")


# ------------------------------------------------------------------- the edges (mutation tests)
def test_the_domains_of_a_steering_are_sorted_and_deduplicated():
    a, b = Steer(experts="2:5", domains=["prose", "code", "code"]), Steer(experts="2:5", domains=["code", "prose"])
    assert a.domains == ["code", "prose"] and a.name == b.name == "force-2:5@code+prose" and a.spec() == b.spec()


def test_a_negative_token_id_is_refused():
    with pytest.raises(SteerError, match=r"token ids \[3, -1\]: must be non-negative integers"):
        Steer(experts="2:5", token_ids=[3, -1])


def test_padding_is_neither_steered_nor_counted(tiny, tokens):
    lengths = torch.tensor([24, 10, 3])
    with steered(tiny, Steer(experts={2: [5]})) as st:
        tiny(tokens, lengths=lengths)
    n = 24 + 10 + 3  # every real token, no padding slot
    assert st.steered_tokens == st.pairs[2] == st.hits[2] == n and st.forced_share == 1.0


def test_a_row_of_no_domain_is_steered_under_a_domain_filter(tiny, tokens):
    # a --prompt has no domain: "a domain filter does not exclude them" (the package docstring)
    got = _gate(tiny, tokens, G2, Steer(experts={2: [5]}, domains=["code"]), [None, "prose", "code"])
    rows = torch.tensor([True, False, True]).repeat_interleave(tokens.shape[1])
    assert (got["hook_topk_ids"][rows] == 5).any(-1).all()
    assert got["state"].steered_tokens == int(rows.sum())


def test_row_domains_of_another_length_than_the_batch_are_refused(tiny, tokens):
    # one domain for a batch of three rows was broadcast to every row
    with pytest.raises(SteerError, match="set row_domains to the domain of each of the batch's 3 rows"):
        with steered(tiny, Steer(experts="2:1", domains=["code"]), row_domains=["code"]):
            tiny(tokens)


def test_forced_share_counts_only_steered_tokens_and_delta_is_steered_minus_baseline(tiny):
    batches = _batches(n_windows=4, seq=12, bs=2)
    # the expert that prose tokens take most often unsteered: counting their hits passed a share of 1
    taken = []
    for b in batches:
        _, cache = tiny.run_with_cache(b.tokens, lengths=b.lengths, names=G2 + "hook_topk_ids")
        prose = torch.tensor([w.domain == "prose" for w in b.windows])[:, None] & b.valid
        taken.append(cache[G2 + "hook_topk_ids"].reshape(*b.tokens.shape, -1)[prose].reshape(-1))
    e = int(torch.bincount(torch.cat(taken)).argmax())
    df = evaluate(tiny, batches, [Steer(experts={2: [e]}, domains=["code"])]).set_index("domain")
    assert df.loc["code", "forced_share"] == 1.0 and df.loc["all", "forced_share"] == 1.0
    assert np.isnan(df.loc["prose", "forced_share"])
    for d in ("all", "code", "prose"):
        assert df.loc[d, "delta"] == pytest.approx(df.loc[d, "loss"] - df.loc[d, "baseline_loss"], abs=0)
    assert df.loc["code", "delta"] != 0


def test_corpus_prompts_take_the_start_of_each_domains_first_window():
    ws = [Window(i, f"d{i}", dom, 0, np.arange(10 * i, 10 * i + 6, dtype=np.int32))
          for i, dom in enumerate(["prose", "code", "prose", "code"])]
    got = corpus_prompts(ws, 4, lambda ids: ",".join(map(str, ids)))
    assert [(p.domain, p.ids, p.text) for p in got] == [("code", [10, 11, 12, 13], "10,11,12,13"),
                                                         ("prose", [0, 1, 2, 3], "0,1,2,3")]


def test_text_prompts_start_with_bos_when_given_one():
    enc = lambda t: [ord(c) for c in t]  # noqa: E731
    assert [p.ids for p in text_prompts(["ab", "c"], enc, 0)] == [[0, 97, 98], [0, 99]]
    assert [p.ids for p in text_prompts(["ab"], enc, None)] == [[97, 98]]


def test_generation_rows_stop_the_baseline_too_and_count_the_steered_tokens(tiny):
    prompt = Prompt("p0", [0, 17, 99, 250, 3], "code")
    plain = generate(tiny, [prompt.ids], max_new_tokens=6).tokens[0]
    stop = plain[2]
    assert stop not in plain[:2]
    absurd = Steer(name="absurd", experts="1:0+1+2+3,2:12+13+14+15")
    row = generations(tiny, [absurd], [prompt], max_new_tokens=6, stop_ids=[stop]).iloc[0]
    assert row.baseline_text == " ".join(map(str, plain[:3]))
    steered_ids = row.steered_text.split()
    assert row.tokens == len(steered_ids) and len(steered_ids) != 3  # the control: the lengths differ


def test_a_token_filter_id_equal_to_the_vocabulary_size_is_refused():
    with pytest.raises(SteerError, match="--steer-tokens 512: token id out of range"):
        parse_token_filter("7,512", None, 512)
    assert parse_token_filter("511, 7,7", None, 512) == [7, 511]


def test_given_prompts_start_with_bos_as_the_windows_do(probe_env, tmp_path, monkeypatch):
    import analyses.steer.run as run
    from analyses.steer import SteerOptions
    from tokenizers import Tokenizer

    seen, real = [], run.text_prompts

    def stop(*a, **kw):
        raise SteerError("stopped before the model loads")

    monkeypatch.setattr(run, "text_prompts", lambda *a: seen.append(real(*a)) or seen[-1])
    monkeypatch.setattr(run, "start_job", stop)
    opts = SteerOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "o"),
                        seq_len=32, domain_tokens=200, progress=False, prompts=["def f(x):"])
    with pytest.raises(SteerError, match="stopped"):
        run.steer(opts, Steer(experts="1:2"))
    tok = Tokenizer.from_file(str(probe_env["ckpt"] / "tokenizer.json"))
    bos = json.loads((probe_env["ckpt"] / "config.json").read_text())["bos_token_id"]
    assert [p.ids for p in seen[0]] == [[bos] + tok.encode("def f(x):", add_special_tokens=False).ids]


def test_cli_bias_defaults_to_1_and_domain_tokens_0_is_no_cap(tmp_path, capsys, monkeypatch):
    import analyses.steer.run as run

    seen = []

    def spy(opts, steering, token_filter=None):
        seen.append((opts, steering))
        raise SteerError("stopped")

    monkeypatch.setattr(run, "steer", spy)
    argv = ["--out", str(tmp_path / "o"), "--ckpt", "c", "--corpus", "c", "--experts", "1:2", "--mode", "bias",
            "--domain-tokens", "0"]
    assert_one_line_error(main(argv), capsys, "stopped")
    opts, s = seen[0]
    assert s.bias == 1.0 and s.name == "bias-1:2-b1" and opts.domain_tokens is None


def test_cli_negative_domain_tokens_names_the_bound_steer_takes(tmp_path, capsys):
    # it said "must be >= 1" (the ablation job's bound), while steer takes 0 as no per-domain cap
    argv = ["--out", str(tmp_path / "o"), "--ckpt", "c", "--corpus", "c", "--experts", "1:2", "--domain-tokens", "-1"]
    assert_one_line_error(main(argv), capsys, "--domain-tokens -1: must be >= 0 (0 = no per-domain cap)")
