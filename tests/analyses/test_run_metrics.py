"""The metrics' Run versions (DuckDB over a run's tables) against their array versions on a synthetic
run, and their errors on runs that lack what they read. (The array versions: test_metrics.py.)"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from analyses import metrics as M

from helpers.cli_errors import one_line
from helpers.synthetic_run import write_run


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    import probe

    d = tmp_path_factory.mktemp("runs") / "synth"
    arrays = write_run(d)
    return probe.open_run(d), arrays


def test_run_loads_and_balance_table_equal_array_versions(synth):
    run, a = synth
    loads = M.layer_loads_from_run(run)
    assert sorted(loads) == a["layers"]
    for layer in a["layers"]:
        ids = a["ids"][layer]
        want = np.bincount(ids.reshape(-1), minlength=a["E"])
        np.testing.assert_array_equal(loads[layer], want)
        steps, b = M.batch_loads_from_run(run, layer)
        wb = np.stack([np.bincount(ids[a["step"] == s].reshape(-1), minlength=a["E"]) for s in (0, 1)])
        np.testing.assert_array_equal(b, wb)
        mv = M.maxvio_batch_from_run(run)
        np.testing.assert_allclose(mv[mv.layer == layer].maxvio, M.maxvio_batch(wb))
        # Switch from the scored rows only
        sc = a["scores"][layer]
        keep = ~np.isnan(sc[:, 0])
        load_s = np.bincount(ids[keep].reshape(-1), minlength=a["E"])
        P = M.normalised_scores(sc[keep]).mean(0)
        sw = M.switch_inputs_from_run(run)[layer]
        np.testing.assert_allclose(sw[0], load_s)
        np.testing.assert_allclose(sw[1], P, rtol=1e-6)
        row = M.balance_table(run, n_gpus=2).set_index("layer").loc[layer]
        want_row = M.balance_summary(want, wb, n_gpus=2)
        for k, v in want_row.items():
            if k != "switch":
                assert row[k] == pytest.approx(v, nan_ok=True), k
        assert row["switch"] == pytest.approx(M.switch_balance(load_s, P), rel=1e-6)


def test_run_specialisation_equals_array_versions(synth):
    run, a = synth
    for layer in a["layers"]:
        names, c = M.contingency_from_run(run, layer)
        wn, wc = M.contingency(a["domain"], a["ids"][layer], a["E"])
        assert names == wn
        np.testing.assert_array_equal(c, wc)
        assert M.domain_contingency_from_run(run)[layer][0] == wn
        np.testing.assert_allclose(M.lift_from_run(run, layer)[1], M.lift(wc))
    t = M.specialisation_table(run).set_index("layer")
    for layer in a["layers"]:
        c = M.contingency(a["domain"], a["ids"][layer], a["E"])[1]
        assert t.loc[layer, "domain_nmi"] == pytest.approx(M.domain_nmi(c))
        assert t.loc[layer, "mutual_information"] == pytest.approx(M.mutual_information(c))
        assert t.loc[layer, "max_lift"] == pytest.approx(np.nanmax(M.lift(c)))
    # the domain-routed layer specialises by domain more than the token-routed one
    assert t.loc[2, "domain_nmi"] > t.loc[1, "domain_nmi"]


def test_specialisation_table_nmi_and_max_lift_domain_hand_case(tmp_path):
    """specialisation_table's `nmi` column was compared with nothing (its arithmetic normalisation,
    scikit-learn's default, could become another), and the max-lift domain was only checked for
    being set: a wrong index into the domain list went unseen (a review)."""
    from sklearn.metrics import normalized_mutual_info_score

    from helpers.synthetic_run import _write

    write_run(tmp_path / "r", E=4, layers=(1,), empty=True)  # run.json only (E = 4)
    # domain x expert counts, domains sorted a, b, c; rows written c first, b split over two steps
    want = {"a": [2, 0, 0, 0], "b": [1, 2, 1, 0], "c": [1, 1, 2, 4]}
    rows = [(0, "c", want["c"]), (0, "a", want["a"]), (0, "b", [1, 1, 0, 0]), (1, "b", [0, 1, 1, 0])]
    cols = {k: [] for k in ("step", "layer", "expert", "domain", "count", "weight_sum", "tokens")}
    for step, dom, counts in rows:
        for e, n in enumerate(counts):
            for k, v in (("step", step), ("layer", 1), ("expert", e), ("domain", dom), ("count", n),
                         ("weight_sum", float(n)), ("tokens", 1)):
                cols[k].append(v)
    _write(tmp_path / "r", "expert_load", cols, [np.ones(len(cols["step"]), bool)])
    t = M.specialisation_table(tmp_path / "r").set_index("layer")
    # one (domain, expert) label pair per assignment, for scikit-learn
    dom_lab = [d for d, c in want.items() for e, n in enumerate(c) for _ in range(n)]
    exp_lab = [e for d, c in want.items() for e, n in enumerate(c) for _ in range(n)]
    ref = normalized_mutual_info_score(dom_lab, exp_lab)  # average_method="arithmetic"
    assert t.loc[1, "domains"] == 3
    assert t.loc[1, "nmi"] == pytest.approx(ref, rel=1e-9)
    assert ref != pytest.approx(normalized_mutual_info_score(dom_lab, exp_lab, average_method="geometric"), rel=1e-3)
    # lift = n(d, e) * N / (n(d) n(e)), N = 14: (a, 0) = 2*14/(2*4) = 3.5; the next, (b, 1) = 2*14/(4*3) = 7/3
    assert t.loc[1, "max_lift"] == pytest.approx(3.5)
    assert t.loc[1, "max_lift_domain"] == "a" and t.loc[1, "max_lift_expert"] == 0


def test_an_unreadable_table_breaks_only_the_queries_that_read_it(tmp_path):
    """A half-written part of one table made every query of the run fail (DuckDB opened each table's
    files when the connection made its views), so the dashboard's path and token views, which read
    routing and tokens only, blamed those tables for expert_load's file."""
    import duckdb

    import probe

    write_run(tmp_path / "r")
    part = sorted((tmp_path / "r" / "expert_load").glob("*.parquet"))[-1]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    run = probe.open_run(tmp_path / "r")
    assert run.sql("select count(*) from routing").fetchall()[0][0] > 0
    assert run.sql("select count(*) from routing join tokens using (seq_id, pos)").fetchall()[0][0] > 0
    with pytest.raises(duckdb.Error, match=rf"{tmp_path / 'r' / 'expert_load'}: .*{part.name}"):
        run.sql("select count(*) from expert_load").fetchall()
    with pytest.raises(duckdb.Error, match="expert_load"):
        run.sql("select layer from expert_load group by layer").fetchall()


def test_one_domain_specialisation_is_not_measured_rather_than_zero(tmp_path):
    """With one domain there is nothing to tell apart: NaN, as domain_information says, not a 0
    that reads as 'experts ignore domains'; two domains give numbers (the control)."""
    write_run(tmp_path / "one", domains=("code",))
    t = M.specialisation_table(tmp_path / "one")
    assert (t.domains == 1).all() and len(t) == 2
    assert t[["mutual_information", "domain_nmi", "nmi", "max_lift"]].isna().all().all()
    assert t.max_lift_domain.isna().all()
    write_run(tmp_path / "two")
    assert M.specialisation_table(tmp_path / "two")[["domain_nmi", "nmi", "max_lift"]].notna().all().all()


def test_run_vocabulary_equals_array_versions(synth):
    run, a = synth
    cur = M.vocabulary_specialisation_from_run(run).set_index("layer")
    nxt = M.vocabulary_specialisation_from_run(run, against="next", min_count=2).set_index("layer")
    same_seq = a["seq"][1:] == a["seq"][:-1]
    for layer in a["layers"]:
        top1 = a["ids"][layer][:, 0]
        assert cur.loc[layer, "vocabulary_specialisation"] == pytest.approx(
            M.vocabulary_specialisation(a["token_id"], top1))
        assert nxt.loc[layer, "vocabulary_specialisation"] == pytest.approx(
            M.vocabulary_specialisation(a["token_id"][1:][same_seq], top1[:-1][same_seq], min_count=2))
        ev = M.expert_vocabulary_from_run(run, layer, top=3)
        wv = M.expert_vocabulary(a["token_id"], top1, a["E"], top=3)
        assert ev.drop(columns=["top_shares", "top_share", "vocab_entropy"]).equals(
            wv.drop(columns=["top_shares", "top_share", "vocab_entropy"]))
        np.testing.assert_allclose(ev.top_share, wv.top_share)
        np.testing.assert_allclose(ev.vocab_entropy, wv.vocab_entropy)
    assert cur.loc[1, "vocabulary_specialisation"] == 1.0  # layer 1 routes by token id


def test_run_margins_keep_a_layer_without_any_finite_margin(tmp_path):
    """A layer whose every margin is null (the kept groups held no (K+1)-th expert) is a row of count 0
    with NaN statistics, as margin_summary reports it; it was left out of the table (a review)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import probe

    write_run(tmp_path / "r")
    for part in (tmp_path / "r" / "routing").glob("*.parquet"):
        t = pq.read_table(part)
        on2 = pc.equal(t["layer"], 2)
        for col in ("margin_1", "margin_k"):
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pc.if_else(on2, pa.scalar(None, t[col].type), t[col]))
        pq.write_table(t, part)
    mg = M.margins_from_run(probe.open_run(tmp_path / "r")).set_index(["layer", "margin"])
    assert sorted(set(mg.index.get_level_values("layer"))) == [1, 2]
    for col in ("margin_1", "margin_k"):
        assert mg.loc[(2, col), "count"] == 0 and mg.loc[(1, col), "count"] > 0
        assert all(math.isnan(mg.loc[(2, col), k]) for k in ("mean", "std", "min", "p50", "max", "near"))
    assert M.margin_summary([float("nan")])["count"] == 0  # the array version's answer for the same layer

def test_run_repetition_coactivation_agreement_margins(synth):
    run, a = synth
    rep = M.repetition_from_run(run).set_index("layer")
    for layer in a["layers"]:
        ids = a["ids"][layer]
        want = M.repetition(ids, seq_id=a["seq"], pos=a["pos"], n_experts=a["E"])
        for k, v in want.items():
            assert rep.loc[layer, k] == pytest.approx(v), k
        np.testing.assert_allclose(M.coactivation_from_run(run, layer), M.coactivation(ids, a["E"]))
        np.testing.assert_array_equal(M.coactivation_from_run(run, layer, normalise=False),
                                      M.coactivation(ids, a["E"], normalise=False))
        mg = M.margins_from_run(run, near=0.02)
        for col in ("margin_1", "margin_k"):
            got = mg[(mg.layer == layer) & (mg.margin == col)].iloc[0]
            for k, v in M.margin_summary(a[col][layer], near=0.02).items():
                assert got[k] == pytest.approx(v, rel=1e-6), (col, k)
        se = M.score_entropy_from_run(run).set_index("layer")
        sc = a["scores"][layer]
        assert se.loc[layer, "score_entropy"] == pytest.approx(
            np.nanmean(M.score_entropy(sc[~np.isnan(sc[:, 0])])), rel=1e-6)
    la = M.layer_agreement_from_run(run).iloc[0]
    want = M.routing_agreement(a["ids"][1], a["ids"][2])
    assert (la.layer_a, la.layer_b) == (1, 2)
    for k, v in want.items():
        assert la[k] == pytest.approx(v), k


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_two_runs_are_joined_on_a_catalog_of_the_call_s_own_in_the_process_s_database(synth, tmp_path):
    """Run vs run opened a DuckDB database per call (15 ms of CPU); it is a cursor of probe.run's one
    database with a catalog of its own: its views ra, rb and ta are seen by no run and no other call,
    and the catalog goes with the connection."""
    import gc

    import probe
    from analyses.metrics.routing import _joined_runs
    from probe import run as run_module

    def catalogs():
        gc.collect()
        return run_module._database().sql("select count(*) from duckdb_databases()").fetchall()[0][0]

    run, a = synth
    write_run(tmp_path / "other", seed=5, token_seed=0, n_seq=3)
    other = probe.open_run(tmp_path / "other")
    run.con, other.con  # the runs' own catalogs, made before the count  # noqa: B018
    before = catalogs()
    one, two = _joined_runs(run, run), _joined_runs(run, other)
    assert catalogs() == before + 2
    count = "select count(*) from rb"
    assert one.sql(count).fetchall()[0][0] == len(run.df("routing")) > two.sql(count).fetchall()[0][0] > 0
    for con in (run.con, run_module._database()):
        assert con.sql("select count(*) from duckdb_views() where view_name in ('ra', 'rb', 'ta') "
                       "and database_name = current_database()").fetchall()[0][0] == 0
    del one, two
    assert catalogs() == before


def test_cross_run_agreement_and_negative_control(synth, tmp_path):
    import probe

    run, a = synth
    same = M.routing_agreement_from_runs(run, run.path)
    assert (same.top1_same == 1).all() and (same.jaccard == 1).all()
    other = write_run(tmp_path / "other", seed=5, token_seed=0)  # same tokens, different routing
    got = M.routing_agreement_from_runs(run, probe.open_run(tmp_path / "other")).set_index("layer")
    for layer in a["layers"]:
        want = M.routing_agreement(a["ids"][layer], other["ids"][layer])
        for k, v in want.items():
            assert got.loc[layer, k] == pytest.approx(v), k
    # the in-memory twin (no DuckDB) gives the run version's table, column for column
    mem = M.routing_agreement_by_layer(run.df("routing"), probe.open_run(tmp_path / "other").arrow("routing"))
    assert list(mem.columns) == ["layer"] + list(got.columns)
    for col in got.columns:
        np.testing.assert_allclose(mem.set_index("layer")[col], got[col], rtol=1e-9, err_msg=col)
    half = run.df("routing").iloc[::2]
    assert (M.routing_agreement_by_layer(half, run.df("routing")).share_of_b.between(0.4, 0.6)).all()
    with pytest.raises(M.MetricsError, match="no column expert_ids"):
        M.routing_agreement_by_layer(run.df("routing").drop(columns="expert_ids"), half)
    with pytest.raises(M.MetricsError, match="share no"):
        M.routing_agreement_by_layer(half.assign(seq_id=half.seq_id + 1000), half)
    # negative control: the run versions do see the difference between the two runs
    assert got.loc[2, "top1_same"] < 1 and got.loc[2, "set_same"] < 1
    assert not np.array_equal(M.contingency_from_run(tmp_path / "other", 2)[1], M.contingency_from_run(run, 2)[1])
    # the same top-k sets in another order: set_same 1, top1_same not (in SQL and in memory)
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(run.path, tmp_path / "reordered")
    for f in sorted((tmp_path / "reordered" / "routing").glob("*.parquet")):
        t = pq.read_table(f)
        flipped = [ids[::-1] if i % 2 else ids for i, ids in enumerate(t.column("expert_ids").to_pylist())]
        pq.write_table(t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids",
                                    pa.array(flipped, t.schema.field("expert_ids").type)), f)
    for ag in (M.routing_agreement_from_runs(run, tmp_path / "reordered"),
               M.routing_agreement_by_layer(run.df("routing"), probe.open_run(tmp_path / "reordered").df("routing"))):
        assert (ag.set_same == 1).all() and (ag.overlap == 1).all() and (ag.top1_same < 0.6).all()
    write_run(tmp_path / "diff", seed=0, token_seed=9)  # different tokens
    with pytest.raises(M.MetricsError, match="different tokens") as e:
        M.routing_agreement_from_runs(run, tmp_path / "diff")
    one_line(e)


def test_runs_of_different_tokens_are_told_what_differs(tmp_path):
    """Two runs of one corpus with other windows (another --max-tokens or --seq-len) were told "(not the
    same corpus and windows)", as if the corpus differed (a tour): the refusal says which differs, as
    their run.json say it."""
    import json

    opts = {"seq_len": 7, "order": "domains", "max_tokens": None, "add_bos": True}
    corpus = {"path": "/data/c.jsonl", "fingerprint": "f1"}

    def run(name, token_seed, **edit):
        write_run(tmp_path / name, seed=0, token_seed=token_seed)
        info = json.loads((tmp_path / name / "run.json").read_text())
        info |= {"corpus": corpus, "tokenizer": {"path": "/m/tokenizer.json", "fingerprint": "t1"},
                 "options": opts} | edit
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        return tmp_path / name

    a = run("a", 0)
    for name, edit, why in [
        ("cap", {"options": opts | {"max_tokens": 40}}, "the same corpus cut into other windows: no --max-tokens "
                                                        f"in {a}, --max-tokens 40 in {tmp_path / 'cap'}"),
        ("seq", {"options": opts | {"seq_len": 9, "order": "corpus"}},
         f"the same corpus cut into other windows: --seq-len 7 in {a}, --seq-len 9 in {tmp_path / 'seq'}; "
         f"--order domains in {a}, --order corpus in {tmp_path / 'seq'}"),
        ("other", {"corpus": {"path": "/data/d.jsonl", "fingerprint": "f2"}},
         f"not the same corpus: /data/c.jsonl in {a}, /data/d.jsonl in {tmp_path / 'other'}"),
        ("edited", {"corpus": corpus | {"fingerprint": "f3"}},
         "not the same corpus: the corpus at /data/c.jsonl changed between them"),
        ("tok", {"tokenizer": {"path": "/n/tokenizer.json", "fingerprint": "t2"}},
         f"not the same tokenizer: /m/tokenizer.json in {a}, /n/tokenizer.json in {tmp_path / 'tok'}"),
        ("same", {}, "not the same corpus and windows")]:  # run.json name nothing apart: no cause to name
        with pytest.raises(M.MetricsError) as e:
            M.routing_agreement_from_runs(a, run(name, 9, **edit))
        assert re.fullmatch(rf"{re.escape(str(a))} and {re.escape(str(tmp_path / name))} hold different tokens at "
                            rf"\d+ matched positions \({re.escape(why)}\)", str(e.value)), str(e.value)


def test_run_vs_run_counts_the_positions_of_other_tokens_as_the_other_figures_are_written(tmp_path):
    """Two runs of other tokens over the same windows were told apart 'at 18822 matched positions', beside the
    dashboard's '20,000 tokens' and the report's counts, all written with thousands separators (a browser tour
    of the Compare page). The count is written as they are."""
    write_run(tmp_path / "a", n_seq=200, seq_len=10, vocab=50)
    write_run(tmp_path / "b", n_seq=200, seq_len=10, vocab=50, token_seed=7)
    with pytest.raises(M.MetricsError) as e:
        M.routing_agreement_from_runs(tmp_path / "a", tmp_path / "b")
    assert re.search(r"hold different tokens at \d{1,3}(,\d{3})+ matched positions", str(e.value)), str(e.value)


def test_run_vs_run_refuses_runs_of_models_with_other_expert_counts(synth, tmp_path):
    """Expert ids are compared by index: a run of 16 experts against one of 8 (the same windows and tokens)
    gave an agreement that read as a measurement, where only the report's --compare refused it. Each run
    vs run metric refuses it, naming both runs and both values; a count run.json leaves out is unknown."""
    import json

    run, _ = synth
    write_run(tmp_path / "e16", E=16, token_seed=0)
    write_run(tmp_path / "k3", K=3, token_seed=0)
    write_run(tmp_path / "same", seed=5, token_seed=0)  # the control: another checkpoint of one model
    calls = (M.routing_agreement_from_runs, M.route_changes_from_runs, M.check_comparable)
    a = run.path
    for other, said in (("e16", f"routed experts a layer: 8 in {a}, 16 in {tmp_path / 'e16'}"),
                        ("k3", f"experts a token: 2 in {a}, 3 in {tmp_path / 'k3'}")):
        for fn in calls:
            with pytest.raises(M.MetricsError) as e:
                fn(run, tmp_path / other)
            assert str(e.value) == (f"{a} and {tmp_path / other} are runs of two models ({said}): run vs run "
                                    "compares expert ids by index, which name the same experts only in checkpoints "
                                    "of one model")
    for fn in calls:
        fn(run, tmp_path / "same")
    info = json.loads((tmp_path / "e16" / "run.json").read_text())
    del info["model_args"]["n_routed_experts"]  # unknown: its ids are not held against it
    (tmp_path / "e16" / "run.json").write_text(json.dumps(info))
    M.check_comparable(run, tmp_path / "e16")


def test_run_bad_input_errors(synth, tmp_path):
    run, _ = synth
    write_run(tmp_path / "empty", empty=True)
    for fn in (M.layer_loads_from_run, M.balance_table, M.contingency_from_run, M.repetition_from_run,
               M.margins_from_run, M.specialisation_table, M.vocabulary_specialisation_from_run):
        with pytest.raises(M.MetricsError, match="no (expert_load|routing) table") as e:
            fn(tmp_path / "empty")
        one_line(e)
    with pytest.raises(M.MetricsError, match="layer 0 has no routing rows") as e:
        M.coactivation_from_run(run, 0)
    one_line(e)
    with pytest.raises(M.MetricsError, match="against"):
        M.vocabulary_specialisation_from_run(run, against="prev")
    with pytest.raises(ValueError, match="not a run directory"):
        M.balance_table(tmp_path / "nothing")


def test_a_layer_that_is_not_a_whole_number_is_refused_by_name(synth):
    """int() took layer 2.5 for layer 2 and '2' for a number, without a word; layers=2 was "'int' object is
    not iterable" from deep in the paths; batch_loads_from_run said a missing layer had no rows without
    naming the layers recorded, as the others do."""
    run, a = synth
    layer = a["layers"][0]
    for fn in (M.lift_from_run, M.coactivation_from_run, M.batch_loads_from_run, M.expert_vocabulary_from_run):
        for bad in (layer + 0.5, str(layer), True, float("nan")):
            with pytest.raises(M.MetricsError, match=rf"^layer={bad!r}: expected a whole layer number$"):
                fn(run, bad)
    np.testing.assert_array_equal(M.batch_loads_from_run(run, float(layer))[1], M.batch_loads_from_run(run, layer)[1])
    with pytest.raises(M.MetricsError, match=rf"^layer 0 has no expert_load rows \(MoE layers recorded: "
                                             rf"\[{', '.join(map(str, a['layers']))}\]\)$"):
        M.batch_loads_from_run(run, 0)
    for fn in (M.routes_from_run, M.path_summary_from_run, M.layer_agreement_from_run, M.domain_probe_from_run):
        with pytest.raises(M.MetricsError, match=rf"^layers={layer}: expected a list of layer numbers, e\.g\. "
                                                 r"\[1, 3\]$"):
            fn(run, layer)
        with pytest.raises(M.MetricsError, match=r"^layers=2\.5: expected a whole layer number$"):
            fn(run, [layer, 2.5])
    assert M.routes_from_run(run, (layer,)).layers == [layer]  # any sequence of numbers is a list of layers


def test_layer_agreement_refuses_a_layer_named_twice_or_not_recorded_by_name(synth):
    """layers=[1, 1] compared layer 1 with itself (agreement 1 on every measure, never measured), and [1, 2, 1]
    measured 1 and 2 twice; a layer not recorded is named with the layers that were."""
    run, a = synth
    one, two = a["layers"][:2]
    for layers in ([one, one], [one, two, one]):
        with pytest.raises(M.MetricsError, match=rf"^layers \[{', '.join(map(str, layers))}\]: layer {one} named "
                                                 r"twice; agreement is between two different layers$") as e:
            M.layer_agreement_from_run(run, layers)
        one_line(e)
    recorded = ", ".join(map(str, a["layers"]))
    with pytest.raises(M.MetricsError, match=rf"^layers \[{one}, 0, 99\]: layer 0, 99 has no routing rows "
                                             rf"\(MoE layers recorded: \[{recorded}\]\)$"):
        M.layer_agreement_from_run(run, [one, 0, 99])
    got = M.layer_agreement_from_run(run, [two, one])  # any order of distinct layers is still measured
    assert (got.layer_a.tolist(), got.layer_b.tolist()) == ([two], [one])


def test_the_run_versions_refuse_counts_and_thresholds_outside_their_meaning_by_name(synth):
    """expert_vocabulary_from_run(top=0) gave every expert an empty list of ids, margins_from_run(near=-1)
    a share of 0 in every layer, min_count=0 counted every id and 2.5 read as 2 (3 in the array version);
    route_changes_from_runs(top=0) blamed the runs' windows, top=-1 and near=nan were DuckDB errors."""
    run, a = synth
    layer = a["layers"][0]
    calls = [(lambda v: M.expert_vocabulary_from_run(run, layer, top=v), "top", (0, -1, 2.5)),
             (lambda v: M.margins_from_run(run, near=v), "near", (-1, 0, float("nan"), "x")),
             (lambda v: M.vocabulary_specialisation_from_run(run, min_count=v), "min_count", (0, -3, 2.5)),
             (lambda v: M.route_changes_from_runs(run, run, top=v), "top", (0, -1)),
             (lambda v: M.common_paths_from_run(run, top=v), "top", (0, -1)),
             (lambda v: M.domain_information_from_run(run, every=v), "every", (1, 2.5)),
             (lambda v: M.token_dependence_from_run(run, k=v), "k", (0, 1.5)),
             (lambda v: M.domain_probe_from_run(run, max_rows=v), "max_rows", (0, -1))]
    for call, name, values in calls:
        for bad in values:
            with pytest.raises(M.MetricsError, match=rf"^{name}={re.escape(repr(bad))}: expected a ") as e:
                call(bad)
            one_line(e)
    assert len(M.expert_vocabulary_from_run(run, layer, top=2.0).top_ids[0]) <= 2


def test_record_agreement_by_hand():
    import pandas as pd

    # two MoE layers, K = 2; layer 1: 3 pairs (sets equal, equal, differ by one), layer 2: 1 pair (differ)
    ref = pd.DataFrame({"seq_id": [0, 0, 1, 0], "pos": [0, 1, 0, 0], "layer": [1, 1, 1, 2],
                        "expert_ids": [np.array(v) for v in ([1, 2], [3, 4], [5, 6], [0, 1])]})
    got = ref.assign(expert_ids=[np.array(v) for v in ([2, 1], [3, 4], [5, 7], [2, 3])])
    toks = pd.DataFrame({"seq_id": [0, 0, 1], "pos": [0, 1, 0], "domain": ["a", "a", "b"], "loss": [1.0, 3.0, 2.0]})
    c = M.record_agreement(toks, ref, toks.assign(loss=[1.5, 3.0, 2.25]), got)
    assert (c["pairs"], c["of"], c["K"]) == (4, 4, 2)
    assert c["same_set"] == pytest.approx(2 / 4)  # pairs weigh equally: layer 1 2/3 over 3 pairs, layer 2 0 over 1
    assert c["top1"] == pytest.approx(2 / 4)  # [2, 1] vs [1, 2] keeps the set, not the top-1
    assert c["differ"] == pytest.approx(2 * (1 - (1 + 1 + 0.5 + 0) / 4))  # 0.75 experts of 2
    assert c["per_layer"].to_dict() == pytest.approx({1: 2 / 3, 2: 0.0})
    assert c["loss"].loc["a"].tolist() == [2.0, 2.25] and c["loss"].loc["b"].tolist() == [2.0, 2.25]
    assert c["loss_move"] == pytest.approx(0.25)
    with pytest.raises(M.MetricsError, match="share no"):
        M.record_agreement(toks, ref, toks, got.assign(seq_id=got.seq_id + 9))


def test_run_repetition_with_one_expert_per_token_has_no_top2_measure(tmp_path):
    # K = 1: there is no second choice, so top2_any is NaN (as the array version says), not same_top1
    a = write_run(tmp_path / "k1", K=1)
    rep = M.repetition_from_run(tmp_path / "k1").set_index("layer")
    for layer in a["layers"]:
        e = a["ids"][layer][:, 0]
        pair = a["seq"][1:] == a["seq"][:-1]
        assert rep.loc[layer, "same_top1"] == pytest.approx((e[1:] == e[:-1])[pair].mean())
        assert math.isnan(rep.loc[layer, "top2_any"])
        assert math.isnan(M.repetition(a["ids"][layer], seq_id=a["seq"], n_experts=a["E"])["top2_any"])


def _rewrite_routing(run, change) -> None:
    """Each routing part of `run` replaced by `change(table)`."""
    import pyarrow.parquet as pq

    for f in sorted((run / "routing").glob("*.parquet")):
        pq.write_table(change(pq.read_table(f)), f)


def test_run_repetition_puts_each_layers_rows_in_window_order_first(tmp_path):
    # the run version reads a layer's rows and pairs neighbours, so rows stored out of window order
    # (several ranks' parts, a part written in another order) must be sorted first; reversed and
    # shuffled parts give the same table as the stored order
    import shutil

    import pyarrow as pa

    a = write_run(tmp_path / "sorted", n_seq=8)
    want = M.repetition_from_run(tmp_path / "sorted")
    assert (want.pairs == 8 * 6).all() and len(want) == len(a["layers"])
    rng = np.random.default_rng(1)
    for name, order in (("reversed", lambda n: np.arange(n)[::-1]), ("shuffled", rng.permutation)):
        shutil.copytree(tmp_path / "sorted", tmp_path / name)
        _rewrite_routing(tmp_path / name, lambda t: t.take(pa.array(order(t.num_rows))))
        got = M.repetition_from_run(tmp_path / name)
        assert got.equals(want), name
    # control: the array version on the reversed rows, unsorted, finds no adjacent pair at all
    layer = a["layers"][0]
    assert M.repetition(a["ids"][layer][::-1], seq_id=a["seq"][::-1], pos=a["pos"][::-1])["pairs"] == 0


def test_run_repetition_names_the_layer_of_a_routing_row_that_is_short_or_missing(tmp_path):
    import pyarrow as pa

    a = write_run(tmp_path / "r")
    layer = a["layers"][1]

    def shorten(t):  # the first row of `layer` in each part loses its last expert
        ids = t.column("expert_ids").to_pylist()
        first = t.column("layer").to_pylist().index(layer)
        ids[first] = ids[first][:-1]
        return t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids",
                            pa.array(ids, t.schema.field("expert_ids").type))
    _rewrite_routing(tmp_path / "r", shorten)
    with pytest.raises(M.MetricsError, match=f"routing layer {layer}: expert_ids: rows of different lengths") as e:
        M.repetition_from_run(tmp_path / "r")
    one_line(e)
    assert M.repetition_from_run(tmp_path / "r", layer=a["layers"][0]).pairs.iloc[0] > 0  # the other layer reads


def test_in_memory_agreement_shares_are_of_each_side(synth):
    # a holds every second row of b: all of a is matched (share 1), about half of b
    run, _ = synth
    full = run.df("routing")
    half = full.iloc[::2]
    ag = M.routing_agreement_by_layer(half, full).set_index("layer")
    for layer, g in half.groupby("layer"):
        assert ag.loc[layer, "share_of_a"] == 1.0
        assert ag.loc[layer, "share_of_b"] == pytest.approx(len(g) / (full.layer == layer).sum())


def test_record_agreement_loss_move_counts_a_loss_that_falls():
    import pandas as pd

    ref = pd.DataFrame({"seq_id": [0, 1], "pos": [0, 0], "layer": [1, 1], "expert_ids": [np.array([0, 1])] * 2})
    toks = pd.DataFrame({"seq_id": [0, 1], "pos": [0, 0], "domain": ["a", "b"], "loss": [2.0, 2.0]})
    c = M.record_agreement(toks, ref, toks.assign(loss=[2.1, 1.5]), ref)  # a: +0.1, b: -0.5
    assert c["loss_move"] == pytest.approx(0.5)


def test_margin_summary_near_is_strictly_below():
    # the docstring's "share of margins below `near`" (SQL: margin < near): one equal to it is not near
    s = M.margin_summary([0.0, 0.25, 0.5, 1.0], near=0.25)
    assert s["near"] == 0.25


def test_something_that_is_no_run_is_named_as_such():
    """balance_table({}) said "'dict' object has no attribute 'files'" (a researcher's tour), then a plain
    TypeError: the module's MetricsError now, naming what it got and what it takes (a tour)."""
    import pandas as pd

    from analyses.metrics import MetricsError, balance_table

    takes = "run: expected a run directory's path or a probe.Run (probe.open_run), got "
    for bad, got in (({}, "dict {}"), (42, "int 42"), (None, "NoneType None"),
                     (pd.DataFrame({"x": range(50)}), "DataFrame")):
        with pytest.raises(MetricsError) as e:
            balance_table(bad)
        assert str(e.value) == takes + got


def test_listed_names_in_a_sentence_and_refuses_to_list_nothing():
    """`listed` writes names as a sentence does; an empty list was an IndexError and most=0 ' and 3 more'
    with no name before it (a review)."""
    from analyses.metrics._common import listed

    assert [listed(n) for n in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a and b", "a, b and c"]
    assert listed("abcdef", most=2) == "a, b and 4 more" and listed("abc", most=3) == "a, b and c"
    assert listed("abc", most=0) == "a and 2 more"
    with pytest.raises(ValueError, match="no names"):
        listed([])
