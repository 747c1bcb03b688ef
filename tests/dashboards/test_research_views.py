"""The research views under AppTest: expert paths (Co-activation & flow), token-id dependence
(Specialisation), run vs run (Compare runs), causal importance (Ablations) and the Steering page.
Each shows at least one number equal to what `analyses.metrics` (or the run's table) gives, and says
plainly what is missing when a table is absent or two runs cannot be compared."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers.apptest import app, array, chart, one_line, open_page, texts
from helpers.dashboard_runs import dashboard_runs


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    return dashboard_runs(probe_env, tmp_path_factory)


def metric(at, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, (label, [m.label for m in at.metric])
    return found[0]


def frame(at, column: str) -> pd.DataFrame:
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, (column, [list(d.value.columns) for d in at.dataframe])
    return found[0]


def chart_titles(at) -> list[str]:
    return [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_expert_paths(runs):
    from analyses.metrics import common_paths, domain_information, path_summary, routes_from_run

    r = routes_from_run(runs["demo"], [1, 2])
    summ = path_summary(r.ids, r.domain, 1).set_index("domain")
    info = domain_information(r.ids, r.domain, r.layers, 1, r.heldout(5)).set_index("unit")
    com = common_paths(r.ids, r.domain, r.token_id, 1, 10)
    at = app(runs["good"], "demo", page="coactivation")
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    assert at.multiselect(key="path_layers").value == [1, 2]  # default: every MoE layer
    assert "Top-1 expert paths through layers 1 and 2" in chart_titles(at)
    assert metric(at, "Distinct paths") == f"{int(summ.distinct_paths['all']):,}"
    assert metric(at, "Path perplexity") == f"{summ.perplexity['all']:.1f}"
    assert metric(at, "Path AMI") == f"{info.ami['path']:.3f}"
    assert metric(at, "Domain accuracy") == f"{info.heldout_accuracy['path']:.1%}"
    shown = chart(at, "path_info")
    np.testing.assert_allclose([array(t["y"]) for t in shown["data"][:2]], [info.ami, info.heldout_accuracy])
    assert shown["layout"]["yaxis"]["title"]["text"] == "AMI or accuracy (0 to 1)"  # both on one axis: named
    table = frame(at, "example tokens")
    assert table.tokens.tolist() == com["count"].tolist()
    # both tables at the page's width, their columns within it at 1024 px less a scroll bar: the common paths
    # took 740 px of its 562, and the paths per domain 341 px of the right 2/5's 216 (a tour)
    assert len(at.dataframe) == 2 and not [c for c in at.columns if c.dataframe]
    for shown in at.dataframe:
        widths = [v.get("width") for c, v in json.loads(shown.proto.columns).items() if c != "_index"]
        assert None not in widths and sum(widths) <= 562 - 15, widths
    assert table.path.iloc[0] == " → ".join(f"E{e}" for e in com.path.iloc[0])
    assert table.domain.tolist() == com.top_domain.tolist()
    at.radio(key="path_color").set_value("domain").run()
    assert not at.exception and not at.error and "Top-1 expert paths through layers 1 and 2" in chart_titles(at)
    assert any("the most common domain of each node" in m.value for m in at.markdown)
    at.multiselect(key="path_layers").set_value([2]).run()
    assert "Pick at least two MoE layers" in texts(at.info)
    assert not any("expert paths" in t for t in chart_titles(at))


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_token_dependence(runs, tmp_path):
    from analyses.metrics import token_dependence_from_run

    want = token_dependence_from_run(runs["demo"]).set_index(["layer", "target"])
    at = app(runs["good"], "demo", page="specialisation")
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    assert any("held-out accuracy<br>per predictor" in t for t in chart_titles(at))  # wrapped for 3/5 of the page
    got = frame(at, "token id").set_index(["layer", "target"])
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got["token id"], want.token_id)
    # the vocabulary specialisation, unseen ids and held-out tokens in a second table, under an expander: the
    # twelve columns took 790 px of the page's 562 at 1024 px (a tour)
    more = frame(at, "VS next").set_index(["layer", "target"])
    assert "VS next" not in got and list(more.index) == list(got.index)
    np.testing.assert_allclose(more["VS next"], want.vocab_spec_next)
    # each table's columns within its room at 1024 px: the domain-specific experts in the right 3/5 (328 px)
    # took 406, the top tokens in the right 3/4 (413 px) 453 (a tour); the two above spare a scroll bar
    assert len(at.dataframe) == 4
    for shown, room in zip(at.dataframe, (328, 413, 562 - 15, 528 - 15)):
        widths = [v.get("width") for c, v in json.loads(shown.proto.columns).items() if c != "_index"]
        assert None not in widths and sum(widths) <= room, widths
    # a run without a tokens table: a note, not a traceback (the domain views still draw). Its run.json lists
    # none: a complete run that lists one and has lost its folder is warned about (test_dashboard.py)
    run = shutil.copytree(runs["demo"], tmp_path / "notokens")
    shutil.rmtree(run / "tokens")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"tables": [t for t in info["tables"] if t != "tokens"]}))
    at = app(tmp_path, "notokens", page="specialisation")
    assert not at.error, texts(at.error)
    assert "Token-id dependence needs the per-token `tokens` and `routing` tables" in texts(at.info)
    assert "no `tokens` table" in texts(at.info) and at.get("plotly_chart")


def _shift_windows(run, by: int) -> None:
    """Move every window of a run to seq_id + by (the same tokens, other windows)."""
    for t in ("tokens", "routing"):
        for f in (run / t).glob("*.parquet"):
            tab = pq.read_table(f)
            i = tab.schema.get_field_index("seq_id")
            pq.write_table(tab.set_column(i, "seq_id", pc.add(tab.column(i), by)), f)


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_run_vs_run(runs, tmp_path):
    from analyses.metrics import route_changes_from_runs, routing_agreement_from_runs

    demo, other = runs["demo"], runs["good"] / "demo-finetuned"
    ag = routing_agreement_from_runs(demo, other)
    ch = route_changes_from_runs(demo, other, top=20)
    at = app(runs["good"], "demo", page="compare")
    assert at.selectbox(key="cmp_b").value == "demo-finetuned"
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    w = ag.tokens / ag.tokens.sum()
    assert metric(at, "Same top-1 expert") == f"{(ag.top1_same * w).sum():.1%}" != "100.0%"
    assert metric(at, "Same top-k set") == f"{(ag.set_same * w).sum():.1%}"
    assert metric(at, "Mean Jaccard (top-k)") == f"{(ag.jaccard * w).sum():.3f}"
    assert metric(at, "Run A matched") == f"{ag.share_of_a.min():.1%}"
    assert metric(at, "Run B matched") == f"{ag.share_of_b.min():.1%}"
    changed = frame(at, "top1_changed")
    assert changed[["seq_id", "pos"]].values.tolist() == ch[["seq_id", "pos"]].values.tolist()
    assert changed.token.str.len().min() > 0
    # at the page's width, its columns within it at 1024 px less a scroll bar: beside the agreement chart,
    # in the right 3/5 (328 px), its eight columns took 528 px (a tour)
    shown = next(d for d in at.dataframe if "top1_changed" in d.value.columns)
    widths = [v.get("width") for c, v in json.loads(shown.proto.columns).items() if c != "_index"]
    assert None not in widths and sum(widths) <= 562 - 15, widths
    assert not [c for c in at.columns if c.dataframe]
    # runs over other windows, or other tokens at the same positions: said in an info box
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a")
    write_run(tmp_path / "b")
    _shift_windows(tmp_path / "b", 100)
    write_run(tmp_path / "c", token_seed=7)
    write_run(tmp_path / "a-copy")  # the same routing under another name
    at = app(tmp_path, "a", page="compare")
    at.selectbox(key="cmp_b").set_value("b").run()
    assert not at.exception and not at.error, texts(at.error)
    assert "`a` and `b` share no routed (seq_id, pos, layer): they did not see the same windows" in texts(at.info)
    at.selectbox(key="cmp_b").set_value("c").run()
    assert "`a` and `c` hold different tokens at" in texts(at.info) and not at.error
    at.selectbox(key="cmp_b").set_value("a-copy").run()  # the control: a run against its copy agrees everywhere
    assert metric(at, "Same top-1 expert") == metric(at, "Same top-k set") == "100.0%"


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_run_vs_run_names_the_run_whose_table_failed(runs, tmp_path):
    """Run B's lost `tokens` (a complete run whose folder was deleted) read "run 'a': cannot read
    `routing` (`b`/tokens: ...)": run A, whose tables were whole, was named, and the table the comparison
    reads beside routing was not (a hunt). Either way round, the run whose table failed is named."""
    for name in ("a", "b", "c"):
        shutil.copytree(runs["demo"], tmp_path / name)
    shutil.rmtree(tmp_path / "b" / "tokens")
    for picked, other in (("a", "b"), ("b", "a")):
        at = app(tmp_path, picked, page="compare")
        at.selectbox(key="cmp_b").set_value(other).run()
        shown = texts(at.warning)
        assert ("run 'b': cannot read `routing`, `tokens` (`b`/tokens: listed in run.json but has no part files"
                in shown and "run 'a'" not in shown), shown
    at = app(tmp_path, "a", page="compare")  # the control: a run against a whole copy
    at.selectbox(key="cmp_b").set_value("c").run()
    assert not at.warning and metric(at, "Same top-1 expert") == "100.0%", texts(at.warning)


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_causal_importance(runs):
    from scipy.stats import spearmanr

    imp = pq.read_table(runs["demo"] / "expert_importance").to_pandas()
    at = app(runs["good"], "demo", page="ablations")
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    titles = chart_titles(at)
    for dom in ("all", "code"):
        g = imp[(imp.layer == 1) & (imp.domain == dom)]
        rho = spearmanr(g.load_share, g.delta).statistic
        assert f"layer 1 ({dom}): Spearman ρ = {rho:.3f}" in titles, titles
        gaps = frame(at, "rank_gap")
        assert gaps.rank_gap.abs().is_monotonic_decreasing and len(gaps) == 10
        top = gaps.iloc[0]
        g = imp[(imp.layer == top.layer) & (imp.domain == dom)]
        share = g[g.expert == top.expert].load_share.iloc[0]  # ties share their average rank
        assert top.load_rank == (g.load_share > share).sum() + ((g.load_share == share).sum() + 1) / 2
        at.selectbox(key="imp_domain").set_value("code").run()
        titles = chart_titles(at)
    at = app(runs["good"], "demo-running", page="ablations")
    assert "python -m analyses.importance --run" in one_line(texts(at.info)) and not at.error


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_steering_page(runs):
    tab = pq.read_table(runs["demo"] / "steering").to_pandas()
    at = app(runs["good"], "demo", page="steering")
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    assert "Loss change per domain for each steering" in chart_titles(at)
    for name in tab.steer.unique():
        at.selectbox(key="steer_pick").set_value(name).run()
        row = tab[(tab.steer == name) & (tab.kind == "loss") & (tab.domain == "all")].iloc[0]
        assert metric(at, "Δ loss (all)") == f"{row.delta:+.4f}"
        assert metric(at, "Forced share") == f"{row.forced_share:.1%}"
        shown = " ".join(m.value for m in at.markdown)
        gen = tab[(tab.steer == name) & (tab.kind == "generation")]
        assert "into the quiet town." in shown and len(gen) == 2
    assert "&#60;b&#62;bold&#60;/b&#62;" in shown and "<b>bold</b>" not in shown  # texts are escaped
    at = app(runs["good"], "demo-running", page="steering")
    assert "python -m analyses.steer --run" in one_line(texts(at.info)) and "--experts L:E" in texts(at.info)
    assert not at.error and not at.get("plotly_chart")


@pytest.mark.slow  # 1.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_steering_page_keeps_two_commands_of_one_name_apart(runs, tmp_path):
    """Two commands may write a steering of the same name with other options (two part files): the
    page offers each part on its own instead of mixing their rows; a prompt with a blank line and
    indented code is shown as text, not as a Markdown code block of HTML entities."""
    import pyarrow as pa

    from probe.schema import TABLES

    run = tmp_path / "runs" / "two"
    shutil.copytree(runs["good"] / "demo", run)
    t = pq.read_table(run / "steering" / "steer.parquet").to_pandas()
    t2 = t.assign(tokens=t.tokens * 2, delta=t.delta + 1.0)
    t2.loc[t2.kind == "generation", "prompt"] = "def f(x):\n    return x\n\n    ### Position"
    pq.write_table(pa.Table.from_pandas(t2, schema=TABLES["steering"], preserve_index=False),
                   run / "steering" / "other.parquet")
    at = app(tmp_path / "runs", "two", page="steering")
    assert not at.error
    options = at.selectbox(key="steer_pick").options
    assert len(options) == 2 * t.steer.nunique() and all("tokens]" in o for o in options)
    picked = next(o for o in options if o.startswith(t.steer.iloc[0]) and "[other," in o)
    at.selectbox(key="steer_pick").set_value(picked).run()
    want = t2[(t2.steer == t.steer.iloc[0]) & (t2.kind == "loss") & (t2.domain == "all")].iloc[0]
    assert metric(at, "Δ loss (all)") == f"{want.delta:+.4f}"  # the second part's rows only
    shown = " ".join(m.value for m in at.markdown)
    assert "&#35;&#35;&#35; Position" in shown and "<br>" in shown and "\n\n" not in shown.split("prompt:")[-1]


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_run_vs_run_lists_a_token_whose_top1_or_whose_set_alone_changed(tmp_path):
    import pyarrow as pa

    from helpers.synthetic_run import write_run
    from probe.schema import TABLES

    write_run(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def edit(ids: list, seq: int, pos: int, layer: int) -> list:
        if (seq, pos, layer) == (0, 1, 1):
            return ids[::-1]  # the same set, another first choice
        if (seq, pos, layer) == (0, 2, 2):
            return [ids[0], next(e for e in range(8) if e not in ids)]  # the same first choice, another set
        if (seq, pos, layer) == (1, 3, 1):
            return [e for e in range(8) if e not in ids][:2]  # both
        return ids

    for f in (tmp_path / "b" / "routing").glob("*.parquet"):
        t = pq.read_table(f).to_pandas()
        t["expert_ids"] = [edit(list(map(int, ids)), s, p, la) for ids, s, p, la in
                           zip(t.expert_ids, t.seq_id, t.pos, t.layer)]
        pq.write_table(pa.Table.from_pandas(t, schema=TABLES["routing"], preserve_index=False), f)
    at = app(tmp_path, "a", page="compare")
    assert at.selectbox(key="cmp_b").value == "b" and not at.error
    changed = frame(at, "top1_changed")
    assert sorted(zip(changed.seq_id, changed.pos)) == [(0, 1), (0, 2), (1, 3)]


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_run_of_one_window_a_domain_says_why_no_accuracy_is_learned(tmp_path):
    """Held-out accuracies learn on 4 of every 5 windows of each domain and score the 5th, the first
    included: a run of one window a domain (a low --max-tokens) holds them all out. The token-id
    chart was drawn empty and the path's domain accuracy read 'nan%' (a tour); both now say why."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", n_seq=2)  # two windows: one of code, one of prose
    write_run(tmp_path / "six", n_seq=12)  # the control: six a domain, five of them to learn from
    for run in ("one", "six"):  # its MoE layers 1 and 2, which the paths need to know
        info = json.loads((tmp_path / run / "run.json").read_text())
        info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}
        (tmp_path / run / "run.json").write_text(json.dumps(info))
    for run, alone in (("one", True), ("six", False)):
        at = app(tmp_path, run, page="specialisation")
        assert ("tokdep" in " ".join(c.proto.id for c in at.get("plotly_chart"))) is not alone, run
        assert ("hold one per domain, all held out" in texts(at.info)) is alone, texts(at.info)
        open_page(at, "coactivation")
        assert (metric(at, "Domain accuracy") == "n/a") is alone and "nan" not in metric(at, "Domain accuracy")
        assert ("hold one per domain, all held out" in texts(at.info)) is alone and not at.error


def test_a_record_without_routing_is_told_to_record_again_with_it(tmp_path):
    """A record run of `--router-logits none` was told to 'record a run with dsv3-probe record', as an
    SGLang import is (a tour): it is a record run already, and needs recording again with routing."""
    from helpers.synthetic_run import write_run

    for run, option in (("bare", "none"), ("lost", "topk")):  # the control: routing lost, not left out
        write_run(tmp_path / run, n_seq=2)
        shutil.rmtree(tmp_path / run / "routing")
        info = json.loads((tmp_path / run / "run.json").read_text())
        (tmp_path / run / "run.json").write_text(json.dumps(info | {"options": {"router_logits": option}}))
        info = texts(app(tmp_path, run, page="specialisation").info)
        assert ("recorded with `--router-logits none`; record it again without it." in info) is (option == "none")
        assert ("Record a run with `dsv3-probe record`" in info) is (option != "none"), info


def test_a_record_before_its_first_commit_is_not_told_to_record_a_run(tmp_path):
    """A record at work that has committed no batch yet has its tables' folders and no part: Specialisation
    and Co-activation told it to 'Record a run with `dsv3-probe record`' (a hunt), as an SGLang dump of
    loads is. They now say its tables fill in as it commits, or, killed first, how to continue it."""
    from helpers.synthetic_run import write_run
    from probe.writer import writer_lock

    write_run(tmp_path / "r", n_seq=2)
    for t in ("tokens", "routing"):
        for f in (tmp_path / "r" / t).glob("*.parquet"):
            f.unlink()
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"status": "running"}))
    with writer_lock(tmp_path / "r"):  # the record at work
        for page, what in (("coactivation", "Co-activation and expert paths"),
                           ("specialisation", "Token-id dependence")):
            shown = texts(app(tmp_path, "r", page=page).info)
            assert (f"{what} needs the per-token `tokens` and `routing` tables, and run `r` has no `tokens` and no "
                    "`routing` table yet (the record writes them as it goes, or as it ends)." in shown), shown
            assert "Record a run" not in shown
    shown = texts(app(tmp_path, "r", page="coactivation").info)  # killed: no job holds it
    assert "`routing` table: the record was interrupted before writing them; continue it with `dsv3-probe record " \
           "... --resume`." in shown and "Record a run" not in shown, shown
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))  # the control: a run that ended without them
    assert "Record a run with `dsv3-probe record`" in texts(app(tmp_path, "r", page="coactivation").info)


@pytest.mark.slow  # two pages of two runs
def test_a_run_of_loads_only_gets_one_note_a_section_and_no_sample_caption(tmp_path):
    """An SGLang stat dump holds loads only: Specialisation's top tokens and the Co-activation page drew
    an expert picker, layer pickers and a caption of the '~250,000 tokens' sampled, then a 'has no
    `tokens` table' box a widget (a browser tour). Each says once what it needs; a run with the
    per-token tables draws them (the control)."""
    from helpers.synthetic_run import write_run

    for name in ("stat", "full"):
        write_run(tmp_path / name, n_seq=2)
        info = json.loads((tmp_path / name / "run.json").read_text())
        info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}  # MoE layers 1 and 2, as the tables hold
        (tmp_path / name / "run.json").write_text(json.dumps(
            info | ({"kind": "import", "source": {"name": "sglang"}} if name == "stat" else {})))
    for t in ("tokens", "routing"):
        shutil.rmtree(tmp_path / "stat" / t)
    need = ("needs the per-token `tokens` and `routing` tables, and run `stat` has no `tokens` and no `routing` "
            "table. Record a run with `dsv3-probe record`")
    for page, what, widget in (("specialisation", "An expert's top tokens", "sp_expert"),
                               ("coactivation", "Co-activation and expert paths", "co_layer")):
        at = app(tmp_path, "stat", page=page)
        assert f"{what} {need}" in texts(at.info) and not at.error, texts(at.info)
        assert "cannot show" not in texts(at.info), texts(at.info)
        assert not any("Per-token view" in c.value for c in at.caption), texts(at.caption)
        assert widget not in [w.key for w in [*at.get("number_input"), *at.selectbox]]
        at = app(tmp_path, "full", page=page)
        assert "needs the per-token" not in texts(at.info) and any("Per-token view" in c.value for c in at.caption)
        assert widget in [w.key for w in [*at.get("number_input"), *at.selectbox]]


@pytest.mark.slow  # two pages of two runs
def test_an_import_says_once_that_its_dumps_hold_no_latents_or_drafts(tmp_path):
    """An SGLang import's Latent KV page said 'has no `kv_spectrum` table' and 'has no `kv_stats`
    table' in a box each, its MTP page 'has no `mtp` table' above a hint to run `dsv3-probe spec` on it
    (a browser tour): one note now says a serving engine's dumps hold neither. A recorded run without
    the tables keeps the missing-table notes (the control)."""
    from helpers.synthetic_run import write_run

    for name in ("served", "recorded"):
        write_run(tmp_path / name, n_seq=2)  # routing and loads; no kv_stats, kv_spectrum or mtp
        info = json.loads((tmp_path / name / "run.json").read_text())
        if name == "served":
            info |= {"kind": "import", "source": {"name": "sglang"}}
        (tmp_path / name / "run.json").write_text(json.dumps(info))
    for page, what in (("latent_kv", "the attention's latent KV"), ("mtp", "the MTP module's drafts")):
        at = app(tmp_path, "served", page=page)
        assert texts(at.info) == (f"Run `served` is imported from SGLang's dumps, which record expert loads (and, per "
                                  f"token, routing), not {what}: record a run with `dsv3-probe record` for this page.")
        assert not at.caption or "dsv3-probe spec" not in texts(at.caption)
        at = app(tmp_path, "recorded", page=page)
        assert "has no `" in texts(at.info) and "imported" not in texts(at.info), texts(at.info)


@pytest.mark.slow  # the page on three runs
def test_latent_kv_page_says_once_why_a_record_has_no_latent_tables(tmp_path):
    """A record of --no-kv-stats, or one interrupted before its end (the record writes kv_stats and
    kv_spectrum only when the run completes), showed 'has no `kv_spectrum` table: cannot show the latent
    spectrum' and the same of kv_stats in a box each, naming neither why nor that --resume writes them
    (a tour). One note now says why, and no chart is drawn."""
    from helpers.synthetic_run import write_run

    said = {"nokv": ({"options": {"kv_stats": False}, "status": "complete"}, "the run was recorded with --no-kv-stats"),
            # run.json "running" and no job at work on it: a killed record, interrupted
            "killed": ({"options": {"kv_stats": True}, "status": "running"},
                       "the run was interrupted, and the record writes kv_stats only when the run completes: "
                       "continue it with `dsv3-probe record ... --resume`")}
    for name, (extra, _) in said.items():
        write_run(tmp_path / name, n_seq=2)  # routing and loads; no kv_stats or kv_spectrum
        info = json.loads((tmp_path / name / "run.json").read_text()) | extra
        info["tables"] = [t for t in info["tables"] if t not in ("kv_stats", "kv_spectrum", "mtp")]
        (tmp_path / name / "run.json").write_text(json.dumps(info))
    for name, (_, why) in said.items():
        at = app(tmp_path, name, page="latent_kv")
        assert [i.value for i in at.info] == [f"Run `{name}` has no `kv_stats` or `kv_spectrum` table: {why}."], \
            texts(at.info)
        assert not at.get("plotly_chart") and not at.error and not at.metric


def _info_only_run(run, **info) -> None:
    """A run of run.json alone (a spec run, an analysis-only run, an import): what the compare page's
    default partner must look past."""
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "complete", "format": 1, **info}))


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_compare_defaults_run_b_to_a_run_it_can_compare(tmp_path):
    """Run B defaulted to the next run of A's kind: here a spec run, then an analysis-only run, then an
    import of another model, none of which holds anything to compare with A's routing. It now takes the
    next run of the same shape with routing, and the next of A's kind only when none fits. With no run of
    loads beside A, B was still the spec run, beside which the page compared nothing ("`b-spec` has no
    expert loads yet"): the runs without loads are offered as neither A nor B, and the page says so."""
    from helpers.synthetic_run import write_run

    args = {"n_routed_experts": 8, "n_activated_experts": 2, "n_expert_groups": 4}
    write_run(tmp_path / "a")
    _info_only_run(tmp_path / "b-spec", kind="spec", model_args=args, tables=["spec_decode", "spec_drafts"])
    _info_only_run(tmp_path / "c-ablate", kind="ablations", model_args=args, tables=["ablations"])
    write_run(tmp_path / "d-import", E=16)  # loads and routing, of another model
    info = json.loads((tmp_path / "d-import" / "run.json").read_text())
    (tmp_path / "d-import" / "run.json").write_text(json.dumps(info | {"kind": "import", "source": {"name": "sglang"}}))
    write_run(tmp_path / "e", seed=1, token_seed=0)  # other routing of the same tokens
    at = app(tmp_path, "a", page="compare")
    assert at.selectbox(key="cmp_b").value == "e" and not at.error, texts(at.error)
    assert metric(at, "Same top-k set")  # run vs run drawn: there was something to compare
    assert at.selectbox(key="cmp_a").options == at.selectbox(key="cmp_b").options == ["a", "d-import", "e"]
    at = app(tmp_path, "c-ablate", page="compare")  # picked in the sidebar, it is no run A
    assert "`c-ablate` holds no expert loads to compare: pick two of the runs that do." in texts(at.info)
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == ("a", "e"), texts(at.info)
    shutil.rmtree(tmp_path / "e")
    at = app(tmp_path, "a", page="compare")
    assert at.selectbox(key="cmp_b").value == "d-import"  # no run it can compare: the next run with loads
    shutil.rmtree(tmp_path / "d-import")
    at = app(tmp_path, "a", page="compare")  # a alone holds loads: no run B, and why
    assert not [b for b in at.selectbox if b.key in ("cmp_a", "cmp_b")] and not at.get("plotly_chart")
    assert not at.error, texts(at.error)
    assert ("Comparing needs two runs with expert loads (records, imports of loads, training runs); this directory "
            "holds 1 such run: `b-spec`, `c-ablate` hold none (a spec, ablation or analysis-only run, or a record "
            "with none yet).") in texts(at.info), texts(at.info)


def test_two_runs_without_routing_are_named_in_one_sentence(tmp_path):
    """Both runs lacking routing read "`a`, `b` has no `routing` table" (a tour)."""
    from helpers.synthetic_run import write_run

    for name in ("a", "b"):
        write_run(tmp_path / name)
        shutil.rmtree(tmp_path / name / "routing")
    at = app(tmp_path, "a", page="compare")
    assert "and `a` and `b` have no `routing` table." in texts(at.info), texts(at.info)


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_compare_takes_a_run_of_another_model_as_no_partner_and_an_unstated_count_as_no_difference(tmp_path):
    """The page's partner test and the report's --compare ask probe.model_shape alike: 16 routed experts
    against 8 is another model; a run.json that does not state its layers (or experts) is not held
    against it (a missing n_layers read as a different shape, so such a run was never run B). Picked by
    hand, the other model's run is refused by run vs run (analyses.metrics), which said nothing of it."""
    from dashboards.data import RunRef
    from dashboards.views import compare
    from helpers.synthetic_run import write_run

    refs = {}
    for name, E, drop in (("a", 8, None), ("b-other", 16, None), ("c-unstated", 8, "n_routed_experts"),
                          ("d-same", 8, None)):
        write_run(tmp_path / name, E=E)
        info = json.loads((tmp_path / name / "run.json").read_text())
        info["model_args"] = {k: v for k, v in (info["model_args"] | {"n_layers": 3}).items() if k != drop}
        if name == "c-unstated":
            info["model_args"].pop("n_layers")
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        refs[name] = RunRef(name, str(tmp_path / name), "probe", "complete", info)
    a = refs["a"]
    assert not compare.comparable(a, refs["b-other"]) and not compare.comparable(refs["b-other"], a)
    assert compare.comparable(a, refs["c-unstated"]) and compare.comparable(refs["c-unstated"], a)
    assert compare.comparable(a, refs["d-same"])
    write_run(tmp_path / "e-top3", K=3)  # top-3 of the same 8 experts: run vs run refuses it, so no partner
    info = json.loads((tmp_path / "e-top3" / "run.json").read_text())
    e = RunRef("e-top3", str(tmp_path / "e-top3"), "probe", "complete", info)
    assert not compare.comparable(a, e) and compare.comparable(a, refs["c-unstated"])
    runs = list(refs.values())
    assert runs[compare.default_partner(a, runs)].name == "c-unstated"  # past b-other, the next it can compare
    at = app(tmp_path, "a", page="compare")  # picked by hand, run vs run says why it compares nothing
    at.selectbox(key="cmp_b").set_value("b-other").run()
    assert not at.exception and not at.error, texts(at.error)
    assert ("`a` and `b-other` are runs of two models (routed experts a layer: 8 in `a`, 16 in `b-other`): run vs "
            "run compares expert ids by index") in texts(at.info), texts(at.info)
    assert "Same top-k set" not in [m.label for m in at.metric]


@pytest.mark.slow  # a dashboard session over two pages and two runs
def test_a_domain_of_one_window_is_named_and_left_out_of_the_held_out_scores(tmp_path):
    """A capped run where one domain has one window: the split holds it out whole and nothing ever
    trained on it, so the probe, the token-id predictors and the path's domain accuracy counted its
    tokens as misses (a 2,000-token run over five domains read 58.5%, a tour). Each page draws the
    score of the other domains and says in one line which domain it left out and why."""
    from analyses.metrics import domain_information, domain_probe_from_run, left_out_note, routes_from_run
    from dashboards.research import PROBE_ROWS
    from helpers.apptest import array, chart
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "thin", n_seq=11, seq_len=12, domains=("code", "prose", "web", "chat", "math", "wiki"))
    write_run(tmp_path / "both", n_seq=12, seq_len=12, domains=("code", "prose", "web", "chat", "math", "wiki"))
    for run in ("thin", "both"):  # its MoE layers 1 and 2, which the paths need to know
        info = json.loads((tmp_path / run / "run.json").read_text())
        info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}
        (tmp_path / run / "run.json").write_text(json.dumps(info))
    note = left_out_note(["wiki"])  # window 5 only
    r = routes_from_run(tmp_path / "thin", [1, 2])
    keep = r.domain != "wiki"
    want = domain_information(r.ids[keep], r.domain[keep], r.layers, 1, r.heldout(5)[keep]).set_index("unit")
    at = app(tmp_path, "thin", page="specialisation")
    at.toggle(key="probe_on").set_value(True).run()
    assert not at.error, texts(at.error)
    probe = domain_probe_from_run(tmp_path / "thin", max_rows=PROBE_ROWS)
    np.testing.assert_allclose(array(chart(at, "probe")["data"][0]["y"]), probe.accuracy, rtol=1e-9)
    assert texts(at.info).count(note) == 2, texts(at.info)  # the probe and the token-id predictors
    open_page(at, "coactivation")
    assert metric(at, "Domain accuracy") == f"{want.heldout_accuracy['path']:.1%}"  # code..math, wiki left out
    assert note in texts(at.info) and not at.error
    at = app(tmp_path, "both", page="specialisation")  # the control: two windows of every domain
    at.toggle(key="probe_on").set_value(True).run()
    assert "Left out of the held-out scores" not in texts(at.info) and not at.error
    open_page(at, "coactivation")
    assert "Left out of the held-out scores" not in texts(at.info)
