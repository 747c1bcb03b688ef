"""Causal importance of every routed expert (analyses.importance) on random tiny checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probe
from analyses.ablate import Ablation, evaluate
from analyses.importance import (ImportanceError, ImportanceOptions, check_selection, correlation_by_domain,
                                 default_group, importance, load_vs_importance, measure, parse_ids, rank_disagreement,
                                 spearman)
from analyses.importance.__main__ import main, parser
from analyses.ablate import RouterShape
from helpers.analysis_runs import corpus_order_run, scored_tokens
from helpers.models import randomize_
from helpers.cli_errors import (assert_one_line_error, assert_out_under_a_file_is_refused, unwritable_msg,
                                  unwritable_out)
from probe.windows import Window
from probe.recorders import Batch

torch.set_num_threads(1)
KEY = ["layer", "expert", "domain"]


@pytest.fixture(scope="module")
def tiny64():
    """The tiny model in float64 (3 layers, layer 0 dense, E=16 in 4 groups, top-4 of 2 groups)."""
    from model import ModelArgs, Transformer

    m = Transformer(ModelArgs.from_name("tiny"), dtype=torch.float64)
    randomize_(m, 0)
    return m.eval()


def _batches(n_windows=6, seq=20, seed=0, bs=3):
    rng = np.random.default_rng(seed)
    ws = [Window(i, f"d{i}", "code" if i % 2 else "prose", 0,
                 rng.integers(2, 512, rng.integers(5, seq + 1)).astype(np.int32)) for i in range(n_windows)]
    return [Batch(b, ws[s: s + bs]) for b, s in enumerate(range(0, len(ws), bs))]


def _reference(model, batches, layers, experts):
    """One `analyses.ablate` reroute ablation per (layer, expert), each its own pass."""
    abls = [Ablation(name=f"{layer}:{e}", experts={layer: [e]}) for layer in layers for e in experts]
    ref, _ = evaluate(model, batches, abls)
    lab = ref.ablation.str.split(":", expand=True).astype(int)
    ref["layer"], ref["expert"] = lab[0], lab[1]
    return ref


def _shifted(ref, shift: int):
    """`ref`'s rows labelled with the wrong expert (e - shift): the negative control (the same passes,
    relabelled, not run again)."""
    return ref.assign(expert=(ref.expert - shift) % 16)


def _assert_same(got, ref):
    j = got.merge(ref, on=KEY, suffixes=("", "_ref"), validate="one_to_one")
    assert len(j) == len(got) == len(ref)
    assert (j.tokens == j.tokens_ref).all()
    for col in ("loss", "baseline_loss", "delta"):
        np.testing.assert_allclose(j[col], j[col + "_ref"], rtol=1e-9, atol=1e-12, err_msg=col)


# -------------------------------------------------------------------------- the measurement
@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_batched_removals_equal_one_ablation_per_expert(tiny64):
    batches = _batches()
    got = measure(tiny64, batches, group=5)  # 16 experts: blocks of 5, 5, 5 and 1
    assert len(got) == 2 * 16 * 3 and list(got.domain.unique()) == ["all", "code", "prose"]
    ref = _reference(tiny64, batches, [1, 2], range(16))
    _assert_same(got, ref)
    assert (got.delta.abs() > 1e-6).mean() > 0.5  # the removals change the loss (a control for the equality)
    with pytest.raises(AssertionError):  # negative control: experts shifted by one do not pass
        _assert_same(got, _shifted(ref, 1))
    # the group size changes nothing: all 16 removals in one pass, and one per pass
    for g in (16, 1):
        one = measure(tiny64, batches, layers=[2], experts=[0, 3, 9], group=g)
        _assert_same(one, got[(got.layer == 2) & got.expert.isin([0, 3, 9])])


def test_loads_of_a_later_layer_alone_are_that_layers(tiny64):
    """Measuring layer 2 alone: each row's load is expert e's assignments at layer 2 (counted here
    from the router's top-k ids, per domain) and load_share that over the layer's valid tokens x K.
    Indexing the baseline loads by the position of the layer in the selection took layer 1's loads
    (a review)."""
    batches = _batches()
    got = measure(tiny64, batches, layers=[2], experts=[0, 3, 9], group=3).set_index(["expert", "domain"])
    K, name = tiny64.args.n_activated_experts, "layers.2.ffn.gate.hook_topk_ids"
    counts = {d: torch.zeros(16, dtype=torch.long) for d in ("all", "code", "prose")}
    tokens = dict.fromkeys(counts, 0)
    for b in batches:
        _, cache = tiny64.run_with_cache(b.tokens, lengths=b.lengths, names=name)
        ids = cache[name].reshape(*b.tokens.shape, -1)
        for i, w in enumerate(b.windows):
            row = ids[i, : int(b.lengths[i])]
            for d in ("all", w.domain):
                counts[d] += torch.bincount(row.reshape(-1), minlength=16)
                tokens[d] += row.shape[0]
    for (e, d), r in got.iterrows():
        assert r.load == int(counts[d][e]), (e, d)
        assert r.load_share == pytest.approx(int(counts[d][e]) / (tokens[d] * K), rel=1e-12)
    assert got.load.sum() > 0 and sorted(got.index.get_level_values(0).unique()) == [0, 3, 9]


def test_selection_and_group_defaults():
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    assert check_selection(shape) == ([1, 2], list(range(16)))
    assert check_selection(shape, "2", "0-2,7, 5") == ([2], [0, 1, 2, 5, 7])
    assert parse_ids([3, 1, 3], "--experts") == [1, 3]
    assert parse_ids("3-3,5-6", "--experts") == [3, 5, 6]  # a range may start and end on one id
    for layers, experts, msg in [("0", None, "--layers 0 is dense"), ("3", None, "--layers 3 out of range"),
                                 (None, "16", "--experts: 16 out of range"), (None, "4-2", "empty range"),
                                 (None, "0-99", "--experts: 16..99 out of range"),
                                 ("x", None, "expected ids like 0-7,12")]:
        with pytest.raises(ImportanceError, match=msg):
            check_selection(shape, layers, experts)
    # two experts per group with the bias and every group kept: the starved group scores -inf but is
    # still kept, so expert 1 stays reachable and the row measures expert 0 alone (it was refused; a
    # review: tests/analyses/test_ablate.py routes such a model)
    assert check_selection(RouterShape(2, 1, 8, 4, 4, 4, True, 0), None, "0") == ([1], [0])
    # groups of two with the bias and 2 of 4 groups kept: every token still routes, but expert 0's
    # removal starves its group and takes expert 1 with it (accepted, and measured as expert 0 alone,
    # before; found by a review); without the bias a group scores by its best expert and stays
    with pytest.raises(ImportanceError, match=r"--experts 0: cannot be removed alone: its group \(of 2\) would "
                                              r"keep only expert\(s\) \[1\].* would measure \[0, 1\]"):
        check_selection(RouterShape(2, 1, 8, 2, 4, 2, True, 0), None, "0")
    assert check_selection(RouterShape(2, 1, 8, 2, 4, 2, False, 0), None, "0") == ([1], [0])
    assert default_group(4 * 512, 32) == 8 and default_group(8 * 512, 32) == 4 and default_group(10**6, 32) == 1
    assert default_group(100, 3) == 3


# ---------------------------------------------------------------- loads, a recorded run, the command
def _cli(env, out, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--domain-tokens", "100", "--no-progress", *extra]


@pytest.fixture(scope="module")
def recorded(probe_env, tmp_path_factory):
    from probe.record import RecordOptions, record

    return record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]),
                                out=str(tmp_path_factory.mktemp("imp") / "rec"), max_tokens=400, seq_len=32,
                                batch_size=4, kv_stats=False, mtp=False, progress=False))


def test_loads_equal_counts_from_the_recorded_routing(recorded):
    out, df = importance(ImportanceOptions(run=str(recorded), domain_tokens=None, experts="0-15", group=7,
                                           progress=False))
    assert out == recorded
    run = probe.open_run(recorded)
    assert "expert_importance" in run.info["tables"] and "expert_importance" in run.tables
    table = run.sql("select * from expert_importance order by layer, expert, domain").df()
    assert len(table) == len(df) == 2 * 16 * 3
    # by hand: every valid token's top-k at each layer, from the recorded routing, per domain
    routing = run.df("routing", columns=["seq_id", "pos", "layer", "expert_ids"])
    tokens = run.df("tokens", columns=["seq_id", "pos", "domain", "loss"])
    routing = routing.merge(tokens, on=["seq_id", "pos"], validate="many_to_one").explode("expert_ids")
    by_dom = routing.groupby(["layer", "expert_ids", "domain"]).size()
    for r in table.itertuples():
        want = by_dom.xs((r.layer, r.expert), level=(0, 1)).sum() if r.domain == "all" else \
            by_dom.get((r.layer, r.expert, r.domain), 0)
        assert r.load == want, r
    assert table.load.sum() > 0
    shares = table.groupby(["layer", "domain"]).load_share.sum()
    np.testing.assert_allclose(shares, 1.0, rtol=1e-12)  # all 16 experts: the whole layer's assignments
    all_rows = table[table.domain == "all"]
    assert (all_rows.tokens == tokens.loss.notna().sum()).all()
    np.testing.assert_allclose(all_rows.baseline_loss, tokens.loss.astype("float64").mean(), rtol=1e-6)


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_command_end_to_end_and_rerun_replaces_its_part(probe_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(probe_env, out, "--layers", "1", "--experts", "0-3,9")) == 0
    text = capsys.readouterr().out
    assert "layer 1: 5 experts" in text and "Spearman rho" in text and f"wrote {out / 'expert_importance'}" in text
    run = probe.open_run(out)
    assert run.tables == ["expert_importance"] and run.status == "complete"
    df = run.sql("select * from expert_importance").df()
    assert sorted(df.expert.unique()) == [0, 1, 2, 3, 9] and set(df.domain) == {"all", "code", "prose"}
    assert (df[df.domain != "all"].groupby("domain").tokens.first() <= 100).all()  # --domain-tokens 100 each
    parts = run.files("expert_importance")
    assert main(_cli(probe_env, out, "--layers", "1", "--experts", "0-3,9", "--group", "2")) == 0  # same command
    assert probe.open_run(out).files("expert_importance") == parts
    assert not list((out / "expert_importance").glob(".*"))  # no temporary left behind
    assert main(_cli(probe_env, out, "--layers", "2", "--experts", "4")) == 0  # another part alongside
    run = probe.open_run(out)
    assert len(run.files("expert_importance")) == 2 and len(run.info["importance_parts"]) == 2
    assert sorted(load_vs_importance(run).layer) == [1, 2]


@pytest.mark.parametrize("extra,msg", [
    (["--layers", "0"], "--layers 0 is dense"),
    (["--layers", "5"], "--layers 5 out of range"),
    (["--experts", "99"], "--experts: 99 out of range"),
    (["--experts", "1-x"], "--experts '1-x': expected ids like 0-7,12"),
    (["--group", "0"], "--group 0: must be >= 1"),
    (["--domain-tokens", "-1"], "--domain-tokens -1: must be >= 0"),
])
def test_command_bad_input_is_one_line(probe_env, tmp_path, capsys, extra, msg):
    assert_one_line_error(main(_cli(probe_env, tmp_path / "o", *extra)), capsys, msg, tmp_path / "o")


def test_an_out_under_a_file_is_refused_before_the_model_loads(probe_env, tmp_path, capsys):
    assert_out_under_a_file_is_refused(main, lambda out, *a: _cli(probe_env, out, *a), tmp_path, capsys, "--layers", "1", "--experts", "0-1")


def test_an_out_the_os_refuses_is_refused_before_the_model_loads(probe_env, capsys, monkeypatch):
    """An --out os.access calls writable (procfs, for root) where nothing can be created was found only
    when the table was written, minutes later (a review): one line naming --out, before any model."""
    out = unwritable_out(monkeypatch)
    assert_one_line_error(main(_cli(probe_env, out, "--layers", "1", "--experts", "0")), capsys,
                          unwritable_msg("--out", out))


def test_command_without_a_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: not a run directory (no run.json)"
    assert "--layers" in parser().format_help() and "torchrun" in parser().format_help()


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_run_is_scored_within_its_own_windows_unless_max_tokens_is_given(probe_env, tmp_path):
    """With --run and no --max-tokens, --domain-tokens samples within the run's windows: a run whose cap
    (order corpus) held code alone had code and prose scored, the report saying it had one domain (a
    tour). --max-tokens given: a balanced sample of every domain of the corpus, up to that many tokens."""
    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    held = scored_tokens(rec)
    assert set(held) == {"code"}
    cli = ["--layers", "1", "--experts", "0-1", "--domain-tokens", "100", "--no-progress"]
    assert main(["--run", str(rec), *cli]) == 0
    df = probe.open_run(rec).df("expert_importance")
    assert set(df.domain) == {"all", "code"} and (df.tokens <= held["code"]).all()
    assert [e["sample"] for e in probe.open_run(rec).info["importance_parts"].values()] == ["run"]
    assert main(["--run", str(rec), "--out", str(tmp_path / "o"), "--max-tokens", "150", *cli]) == 0
    tokens = probe.open_run(tmp_path / "o").df("expert_importance").groupby("domain").tokens.max()
    assert set(tokens.index) == {"all", "code", "prose"} and tokens["prose"] > 0  # 100 of code, then 50 of prose


# ------------------------------------------------------------------------------ the analysis
def _table(load_share, delta, layer=1, domain="all"):
    return pd.DataFrame({"layer": layer, "expert": range(len(delta)), "domain": domain, "tokens": 100,
                         "load": 0, "load_share": load_share, "baseline_loss": 1.0, "loss": 1.0, "delta": delta})


def test_spearman_known_answers_ties_and_degenerate_cases():
    from scipy.stats import spearmanr

    df = pd.concat([_table([0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.2, 0.9], layer=1),  # monotone: +1
                    _table([0.1, 0.2, 0.3, 0.4], [0.9, 0.2, 0.1, 0.0], layer=2),  # reversed: -1
                    _table([0.1, 0.2, 0.2, 0.3], [0.1, 0.3, 0.2, 0.4], layer=3),  # a tie in the loads
                    _table([0.5], [0.2], layer=4),  # one expert
                    _table([0.1, 0.2, 0.3], [0.2, 0.2, 0.2], layer=5),  # constant delta
                    _table([0.2, 0.2, 0.2], [0.1, 0.3, 0.3], layer=6)])  # constant load, tied top delta
    got = load_vs_importance(df).set_index("layer")
    assert got.spearman[1] == pytest.approx(1.0) and got.spearman[2] == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert got.spearman[3] == pytest.approx(4.5 / np.sqrt(22.5)) == spearmanr([.1, .2, .2, .3], [.1, .3, .2, .4])[0]
    assert got.spearman[[4, 5, 6]].isna().all() and got.pearson[[4, 5, 6]].isna().all()
    assert got.spearman_p[3] == pytest.approx(spearmanr([.1, .2, .2, .3], [.1, .3, .2, .4]).pvalue)
    assert got.spearman_p[[4, 5, 6]].isna().all()
    assert got.pearson[1] == pytest.approx(np.corrcoef([.1, .2, .3, .4], [0, .1, .2, .9])[0, 1])
    assert (got.top_expert[1], got.top_delta[1], got.top_expert[6]) == (3, 0.9, 1)  # tie: the lower id
    assert got.experts.tolist() == [4, 4, 4, 1, 3, 3]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30) / 10, rng.integers(0, 4, 30) / 10  # many ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def test_rank_disagreement_known_answer():
    df = pd.concat([_table([0.4, 0.3, 0.2, 0.1], [0.0, 0.1, 0.2, 0.3], layer=1),
                    _table([0.4, 0.3, 0.2, 0.1], [0.3, 0.3, 0.1, 0.0], layer=2)])
    got = rank_disagreement(df, top=2)
    assert got.columns.tolist() == ["layer", "expert", "load_share", "delta", "load_rank", "causal_rank", "rank_gap"]
    one = got[got.layer == 1]
    # load ranks 1..4, causal ranks 4..1: gaps -3, -1, 1, 3; the two largest |gap| are experts 0 and 3
    assert one.expert.tolist() == [0, 3] and one.rank_gap.tolist() == [-3.0, 3.0]
    assert one.load_rank.tolist() == [1.0, 4.0] and one.causal_rank.tolist() == [4.0, 1.0]
    # layer 2: tied deltas share rank 1.5; gaps 1-1.5, 2-1.5, 3-3, 4-4: experts 0 and 1 (|0.5|, lower id first)
    two = rank_disagreement(df, layer=2, top=5)
    assert two.expert.tolist() == [0, 1, 2, 3] and two.rank_gap.tolist() == [-0.5, 0.5, 0.0, 0.0]
    assert len(rank_disagreement(_table([0.5], [0.2]), top=3)) == 1  # one expert: gap 0
    with pytest.raises(ImportanceError, match=r"^layer 9: not in the table; layers are \[1, 2\]$"):  # not np.int64(1)
        rank_disagreement(df, layer=9)


def test_domains_duplicates_and_a_run_without_the_table(recorded, tmp_path):
    df = pd.concat([_table([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], domain="all"),
                    _table([0.1, 0.2, 0.3], [0.3, 0.2, 0.1], domain="code")])
    assert load_vs_importance(df, domain="code").spearman[0] == pytest.approx(-1.0)
    by = correlation_by_domain(df)
    assert by.domain.tolist() == ["all", "code"] and by.spearman.tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(ImportanceError, match="domain 'math': not in the table; domains are"):
        load_vs_importance(df, domain="math")
    with pytest.raises(ImportanceError, match="layer 1 expert 0 domain 'all' was measured more than once"):
        load_vs_importance(pd.concat([df, df.head(1)]))
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(ImportanceError, match=f"{empty}: no expert_importance table: measure it with "
                                              f"`python -m analyses.importance --run {empty}`"):
        rank_disagreement(str(empty))


def test_also_removed_names_what_rerouting_really_removes():
    """`also_removed` against the model itself: removing expert 0 of a group of two routes exactly as
    removing both; in groups of four the partner stays, and the logits differ."""
    from analyses.ablate.select import ablated, also_removed

    from helpers import random_model

    tok = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    for per_group, more in ((2, [1]), (4, [])):
        m = random_model("tiny", n_routed_experts=4 * per_group, n_expert_groups=4, n_limited_groups=2,
                         n_activated_experts=2)
        shape = RouterShape.of(m.args)
        layer = shape.moe_layers[0]
        assert also_removed(shape, [0]) == more
        with torch.no_grad(), ablated(m, {layer: [0]}):
            one = m(tok)
        with torch.no_grad(), ablated(m, {layer: [0, 1]}):
            both = m(tok)
        assert torch.equal(one, both) == bool(more), per_group


def test_a_new_measurement_of_an_expert_replaces_the_older_one(tmp_path):
    """Two commands measuring one expert in one domain with different options (the README's
    `analyses.importance` with its defaults, then `analyses.report`'s own) left two parts whose
    rows every reader refused as measured twice (found by a review). The newer one now replaces the
    older rows; an older part with nothing left goes."""
    import probe
    from analyses.importance.analysis import TABLE, importance_table
    from analyses.importance.run import write_importance

    out = tmp_path / "run"

    def meta(tokens):
        return {"layers": [1], "experts": None, "checkpoint": {"path": "c"}, "corpus": {"path": "t"},
                "options": {"domain_tokens": tokens}}

    first = _table([0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.1, 0.1])  # experts 0-3
    write_importance(out, first, meta(2000))
    second = _table([0.5, 0.5], [0.9, 0.8])  # experts 0-1 again, other options: another part
    write_importance(out, second, meta(1000))
    got = importance_table(probe.open_run(out)).sort_values("expert")
    assert got.expert.tolist() == [0, 1, 2, 3] and got.delta.tolist() == [0.9, 0.8, 0.1, 0.1]
    parts = probe.open_run(out).info["importance_parts"]
    assert sorted(v["rows"] for v in parts.values()) == [2, 2] and len(list((out / TABLE).glob("*.parquet"))) == 2
    write_importance(out, _table([0.1] * 4, [0.5] * 4), meta(500))  # covers all: both older parts go
    assert len(list((out / TABLE).glob("*.parquet"))) == 1 and len(probe.open_run(out).info["importance_parts"]) == 1
    assert importance_table(probe.open_run(out)).delta.tolist() == [0.5] * 4
    assert not list((out / TABLE).glob(".*tmp*"))


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_two_jobs_superseding_each_other_at_once_keep_one_measurement(tmp_path):
    """Two importance jobs on the same experts finishing together deleted each other's parts: the
    table was left empty and run.json listed a part that was gone (a review). Their writes now take
    turns (a lock on the table); every key keeps exactly one measurement and run.json lists the
    parts on disk."""
    import multiprocessing

    import probe
    from analyses.importance.analysis import TABLE, importance_table
    from analyses.importance.run import write_importance

    out = tmp_path / "run"

    def meta(tokens):
        return {"layers": [1], "experts": None, "checkpoint": {"path": "c"}, "corpus": {"path": "t"},
                "options": {"domain_tokens": tokens}}

    def job(tokens):  # in a process of its own, as two commands are
        for _ in range(20):
            write_importance(out, _table([0.1, 0.2, 0.3, 0.4], [tokens / 1e4] * 4), meta(tokens))

    write_importance(out, _table([0.1, 0.2, 0.3, 0.4], [0.0] * 4), meta(500))  # an older measurement
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=job, args=(t,)) for t in (1000, 2000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    run = probe.open_run(out)
    got = importance_table(run)
    assert sorted(got.expert) == [0, 1, 2, 3] and got.delta.nunique() == 1  # one job's whole measurement
    on_disk = {f.stem for f in (out / TABLE).glob("*.parquet")}
    assert on_disk == set(run.info["importance_parts"]) and len(on_disk) == 1


def test_a_reader_lists_the_parts_again_when_one_goes_while_it_reads(tmp_path, monkeypatch):
    import probe
    from analyses.importance.run import write_importance
    from probe import run as run_module

    out = tmp_path / "run"
    write_importance(out, _table([0.1, 0.2], [0.3, 0.4]), {"layers": [1], "experts": None, "checkpoint": {},
                                                            "corpus": {}, "options": {}})
    real = run_module.table_files
    calls = []

    def stale_once(path, table):  # the first listing names a part that a job has just removed
        files = real(path, table)
        calls.append(table)
        return files + [files[0].with_name("gone.parquet")] if len(calls) == 1 else files

    monkeypatch.setattr(run_module, "table_files", stale_once)
    assert len(probe.open_run(out).df("expert_importance")) == 2 and len(calls) == 2


def test_a_layer_measured_on_mixed_token_budgets_says_so():
    """A notebook's quick look (a few experts on fewer tokens) replaces those experts' rows in the
    run's table; load_vs_importance then reported the largest budget as the layer's and mixed the
    two silently (a review). `tokens` is now the fewest, `token_budgets` counts them, with a warning."""
    one = _table([0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.2, 0.9], layer=1).assign(tokens=9958)
    mixed = one.copy()
    mixed.loc[mixed.expert < 2, "tokens"] = 995
    with pytest.warns(UserWarning, match=r"layer 1 \(all\): its experts were measured on 2 token budgets "
                                         r"\(995 to 9,958 tokens\)"):
        got = load_vs_importance(mixed)
    assert (int(got.tokens[0]), int(got.token_budgets[0])) == (995, 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the control: one budget, no warning
        got = load_vs_importance(one)
    assert (int(got.tokens[0]), int(got.token_budgets[0])) == (9958, 1)


def test_the_all_domain_comes_first_and_row_order_changes_nothing():
    # "academic" sorts before "all": the pooled rows still come first
    df = pd.concat([_table([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], domain="academic"),
                    _table([0.1, 0.2, 0.3], [0.3, 0.2, 0.1], domain="all")])
    assert correlation_by_domain(df).domain.tolist() == ["all", "academic"]
    # the top expert of a tie is the lowest id however the rows are stored
    tied = _table([0.2, 0.2, 0.2], [0.1, 0.3, 0.3]).iloc[::-1]
    assert load_vs_importance(tied).top_expert.tolist() == [1]


def test_rank_disagreement_needs_a_whole_number_of_experts_of_at_least_one():
    # top=2.5, '3' or True were pandas' and Python's TypeErrors ('cannot do positional indexing ...')
    for bad in (0, -1, 2.5, "3", True, float("nan")):
        with pytest.raises(ImportanceError, match=rf"^top={re.escape(repr(bad))}: expected a whole number >= 1 "
                                                  r"\(experts listed per layer\)$"):
            rank_disagreement(_table([0.1, 0.2], [0.2, 0.1]), top=bad)
    assert len(rank_disagreement(_table([0.1, 0.2], [0.2, 0.1]), top=np.int64(1))) == 1


def test_rank_disagreement_refuses_a_layer_that_is_not_a_whole_number_by_name():
    """layer='1' said "layer 1: not in the table; layers are [1]", 1.5 the same of 1.5, and True was
    taken for layer 1 (a tour): refused as the metrics refuse a layer, with this package's error."""
    df = pd.concat([_table([0.4, 0.3], [0.0, 0.1], layer=1), _table([0.4, 0.3], [0.1, 0.0], layer=2)])
    for bad in ("1", 1.5, True, float("nan"), [1]):
        with pytest.raises(ImportanceError) as e:
            rank_disagreement(df, layer=bad)
        assert str(e.value) == f"layer={bad!r}: expected a whole layer number"
    for good in (1, 1.0, np.int64(1)):
        assert rank_disagreement(df, layer=good).layer.tolist() == [1, 1]


def test_commands_measuring_other_experts_write_parts_of_their_own(tmp_path):
    # the part's name hashes the experts measured: `--experts 0-1` then `--experts 2-3` with the same
    # options are two parts, the second not replacing the first
    import probe
    from analyses.importance.analysis import importance_table
    from analyses.importance.run import write_importance

    out = tmp_path / "run"

    def meta(experts):
        return {"layers": [1], "experts": experts, "checkpoint": {"path": "c"}, "corpus": {"path": "t"},
                "options": {"domain_tokens": 2000}}

    write_importance(out, _table([0.1, 0.2], [0.3, 0.4]), meta([0, 1]))
    write_importance(out, _table([0.5, 0.6], [0.7, 0.8]).assign(expert=[2, 3]), meta([2, 3]))
    got = importance_table(probe.open_run(out)).sort_values("expert")
    assert got.expert.tolist() == [0, 1, 2, 3] and got.delta.tolist() == [0.3, 0.4, 0.7, 0.8]


def test_the_summary_lists_the_top_experts_only_when_asked(tmp_path):
    """`--show 0` printed 'top by delta: ' with nothing after it (an ablation tour)."""
    from analyses.importance.__main__ import summary

    df = _table([0.1, 0.2, 0.3, 0.4], [0.04, 0.01, 0.03, 0.02])
    assert "; top by delta: 0 +0.0400 (load 10.0%), 2 +0.0300 (load 30.0%)" in summary(df, tmp_path, 2)
    text = summary(df, tmp_path, 0)
    assert "top by delta" not in text and "Pearson r = " in text.splitlines()[0]


def test_a_huge_id_range_is_refused_without_listing_its_ids():
    # --experts 0-1000000000000 (or --layers) built a list of every id and hung
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    for layers, experts, msg in [(None, f"0-{10**12}", f"--experts: 16..{10**12} out of range"),
                                 (f"1-{10**12}", None, "--layers 3 out of range"),
                                 (None, "20-30,17,40-41", "--experts: 17,20,21,22,23,... out of range"),
                                 (None, "16-20,18-25", "--experts: 16..25 out of range")]:
        with pytest.raises(ImportanceError, match=msg):
            check_selection(shape, layers, experts)
    assert parse_ids(f"2-{10**12}", "--layers", 3) == [2, 3]


def test_an_undefined_rho_says_why_in_the_summary_the_report_and_the_dashboard(tmp_path):
    """A selection of one expert printed 'rho = +nan' without a word why (a review): the summary, the
    report's sentence and the dashboard's scatter title say it (a rank correlation needs two experts)."""
    from analyses.importance import undefined_why
    from analyses.importance.__main__ import summary
    from analyses.report.research import _importance_sentence
    from dashboards.views.ablations import importance_scatter

    one = _table([1.0], [0.02])
    text = summary(one, tmp_path, 3).splitlines()[0]
    assert text.startswith("layer 1: 1 expert, 100 tokens: Spearman rho(load share, delta) = nan, Pearson r = nan "
                           "(a rank correlation needs at least two experts, and 1 was measured)"), text
    assert "same load share" in undefined_why([0.5, 0.5], [0.1, 0.2])
    assert "same delta" in undefined_why([0.4, 0.6], [0.1, 0.1])
    two = _table([0.4, 0.6], [0.01, 0.03])
    assert undefined_why(two.load_share, two.delta) is None  # the control: defined, no reason given
    assert "= +1.000, Pearson r = +1.000 (over 2 experts" in summary(two, tmp_path, 3)
    assert "needs" not in summary(two, tmp_path, 3)
    both = pd.concat([one, two.assign(layer=2)], ignore_index=True)
    sentence = _importance_sentence({"correlation": load_vs_importance(both), "tokens": 100, "table": both})
    assert "per layer L1 nan (a rank correlation needs at least two experts, and 1 was measured), L2 +1.00 (p " \
        in sentence, sentence
    title = importance_scatter(one, "layer 1", float("nan"), "all").layout.title.text
    assert title == "layer 1 (all): Spearman ρ = nan<br><sup>a rank correlation needs at least two experts, and 1 was " \
                    "measured</sup>", title
    assert importance_scatter(two, "layer 1", 1.0, "all").layout.title.text == "layer 1 (all): Spearman ρ = 1.000"


def test_a_rho_over_a_few_experts_says_how_little_it_can_say():
    """`--experts 3-5` printed "rho = -1.000" as if it were a finding (a tour): over 2 experts a rank
    correlation is always +1 or -1, over 3 one of four values. Below 5 experts the summary says so."""
    from analyses.importance.__main__ import summary

    for n, words in [(2, "always +1 or -1"), (3, "one of -1, -0.5, +0.5, +1"), (4, "a multiple of 0.2")]:
        df = _table([0.1 * (i + 1) for i in range(n)], [0.01 * (n - i) for i in range(n)])
        line = summary(df, Path("out"), 0).splitlines()[0]
        assert line.endswith(f"= -1.000 (over {n} experts a rank correlation is {words}: select at least 5 "
                             "for a trend)"), line
    five = _table([0.1, 0.2, 0.3, 0.4, 0.5], [0.05, 0.04, 0.03, 0.02, 0.01])  # the control: enough experts
    assert summary(five, Path("out"), 0).splitlines()[0].endswith("Pearson r = -1.000")
