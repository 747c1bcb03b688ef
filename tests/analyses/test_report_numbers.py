"""The numbers the findings report prints, against hand computations: its summary sentences from
small hand-made tables, the research sections on a synthetic run, and the command's checks. (The report
end to end: test_report.py; the ablation sweep's tables: test_report_sweep_numbers.py.)"""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

import probe
from analyses import metrics as M
from analyses.report import data as rd
from analyses.report import research, research_model
from analyses.report.render import _sweep_summary, run_notes, summary
from helpers.synthetic_run import write_run


# ------------------------------------------------------------------------------ summary sentences
def _paths_info(path_acc: float) -> dict:
    units = ["layer 1", "layer 2", "path"]
    info = pd.DataFrame({"unit": units * 2, "target": ["top1"] * 3 + ["top2 set"] * 3,
                         "ami": [0.5, 0.3, 0.4, 0.2, 0.1, 0.3], "values": [8, 8, 40, 20, 20, 300],
                         "heldout_accuracy": [0.6, 0.7, path_acc, 0.65, 0.5, 0.7],
                         "majority_baseline": [0.5] * 6})
    summ = pd.DataFrame({"domain": ["all"], "distinct_paths": [40], "perplexity": [20.0], "top10_share": [0.5]})
    return {"summary": summ, "information": info, "layers": [1, 2], "E": 8, "K": 2}


def test_path_sentences_name_the_best_layers_and_compare_with_them():
    # by AMI the best layer is layer 1 (0.5 > path 0.4); by held-out accuracy layer 2 (0.7 < path 0.8)
    first, topk = research._path_sentences(_paths_info(0.8))
    assert ("Domain information: path AMI 0.400 vs best single layer (layer 1) 0.500; held-out domain accuracy "
            "0.800 vs 0.700 (layer 2; majority 0.500): paths carry more domain information than any single layer's "
            "expert (held-out accuracy; AMI, which also charges the path for its many values, does not).") in first
    # top-2 sets: the best layer by held-out accuracy is layer 1 (0.65)
    assert "AMI 0.300 vs best single layer 0.200, held-out domain accuracy 0.700 vs 0.650 (layer 1)" in topk
    # metrics.md: paths beat single experts with a HIGHER held-out accuracy than every layer; a tie does not
    tie = research._path_sentences(_paths_info(0.7))[0]
    assert "paths do not carry more domain information than the best single layer's expert (held-out" in tie


def test_load_importance_bands_and_significance_count():
    # docstring bands: |rho| >= 0.7 strong, 0.3-0.7 moderate, below weak; p < 0.05 counted
    c = pd.DataFrame({"spearman": [0.3, 0.69, 0.7, 0.29], "spearman_p": [0.01, 0.2, 0.04, 0.05]})
    assert "rank correlation 1 strong, 2 moderate, 1 weak (of 4 layers; p < 0.05 in 2)" in research._load_predicts(c)


def test_run_vs_run_sentence_gives_the_least_matched_layer_of_this_run():
    g = pd.DataFrame({"layer": [1, 2], "top1_same": [0.9, 0.8], "set_same": [0.7, 0.6], "jaccard": [0.85, 0.75],
                      "tokens": [90, 80], "share_of_a": [1.0, 0.8], "share_of_b": [0.5, 0.4]})
    [line] = research.summary({"run_vs_run": {"agreement": g, "changes": None, "other": "runs/x"}})
    assert line == ("Run vs run (runs/x): top-1 agreement per layer L1 0.900, L2 0.800; identical top-k sets L1 0.700, "
                    "L2 0.600; mean Jaccard of top-k sets L1 0.850, L2 0.750; 80 tokens matched (80% of this run's).")
    # a few tokens of a large run: their share is not rounded to none ('1 tokens matched (0% of this run's)', a tour)
    for share, said in ((1 / 1280, "0.1%"), (1 / 5000, "under 0.1%"), (0.004, "0.4%"), (0.006, "1%"),
                        (0.996, "99.6%"), (0.9999, "over 99.9%")):
        g["share_of_a"] = [1.0, share]
        line = research.summary({"run_vs_run": {"agreement": g, "changes": None, "other": "runs/x"}})[0]
        assert line.endswith(f"80 tokens matched ({said} of this run's)."), (share, line)


def test_vocabulary_clause_keeps_the_layers_it_measured():
    # a layer with no id seen often enough is "not measured"; the others keep their numbers
    t = pd.DataFrame({"layer": [1, 2], "vocab_spec_input": [0.5, np.nan], "vocab_spec_next": [0.4, np.nan],
                      "vocab_spec_input_baseline": [0.2, np.nan], "vocab_spec_next_baseline": [0.1, np.nan]})
    text = research._vocabulary_clause(t)
    assert text.endswith(": L1 0.500/0.400 (no specialisation 0.200/0.100), L2 not measured/not measured "
                         "(no specialisation not measured/not measured)")


def test_summary_names_the_largest_lift():
    b = pd.DataFrame({"layer": [1, 2], "maxvio_global": [0.5, 0.25], "balancedness": [0.8, 0.9]})
    sp = pd.DataFrame({"layer": [1, 2], "domain_nmi": [0.1, 0.2], "max_lift": [1.5, 3.5],
                       "max_lift_domain": ["code", "prose"], "max_lift_expert": [3, 5]})
    r = {"balance": b, "specialisation": sp, "domains": ["code", "prose"], "sweep": None, "repetition": None,
         "mtp": None, "kv": None}
    s = summary(r)
    assert s[0] == ("Load balance: MaxVio_global per layer L1 0.500, L2 0.250; balancedness (mean/max) L1 0.800, "
                    "L2 0.900.")
    assert s[1].endswith("L1 0.100, L2 0.200; largest lift 3.50 (prose, layer 2, expert 5).")


def _sweep(domain_summary, curve=None):
    curve = curve if curve is not None else pd.DataFrame(
        {"masked": [0, 4], "top_delta": [0.0, 0.3], "random_delta": [0.0, 0.1], "random_delta_std": [np.nan, 0.01],
         "random_seeds": [0, 2]})
    return NS(curve=curve, domain_summary=domain_summary,
              options={"rank_by": "eval", "tokens": 600, "domain_tokens": 200, "n_experts": 32, "domain_top": 4})


def test_per_domain_ablation_sentence_counts_each_comparison():
    # own > on_others for a and b (2 of 3), own > by_others for a only (1 of 3)
    ds = pd.DataFrame({"domain": ["a", "b", "c"], "own": [0.5, 0.3, 0.1], "by_others": [0.4, 0.35, 0.2],
                       "on_others": [0.2, 0.1, 0.3]})
    ds["own_above_on_others_mean"] = ds.own > ds.on_others
    s = _sweep_summary(_sweep(ds))[-1]
    assert ("own experts hurt it more than they hurt the other domains (mean) for 2 of 3 domains, and more than the "
            "other domains' experts hurt it (mean) for 1 of 3") in s
    one = pd.DataFrame({"domain": ["a"], "own": [0.5], "by_others": [np.nan], "on_others": [np.nan],
                        "own_above_on_others_mean": [None]})
    assert _sweep_summary(_sweep(one))[-1] == ("Per-domain ablation: not measured (it compares a domain's own experts "
                                               "with the others', and the run has fewer than two domains).")


def test_whole_run_ranking_sentence_counts_its_own_deltas():
    # run-ranked masks beat random at 1 of 2 fractions (the eval-ranked ones at 2 of 2)
    curve = pd.DataFrame({"masked": [0, 2, 4], "top_delta": [0.0, 0.2, 0.3], "random_delta": [0.0, 0.1, 0.1],
                          "random_delta_std": [np.nan, 0.01, 0.01], "random_seeds": [0, 2, 2],
                          "run_top_delta": [0.0, 0.05, 0.2]})
    first, run_ranked, _ = _sweep_summary(_sweep(pd.DataFrame(columns=["domain", "own", "by_others", "on_others",
                                                                        "own_above_on_others_mean"]), curve))
    assert first.endswith("top-used hurts more than random at 2 of 2 fractions.")
    assert run_ranked.endswith("2/32 -> +0.0500, 4/32 -> +0.2000; more than random at 1 of 2 fractions.")


def test_run_notes_say_a_run_still_recording_is_not_complete():
    notes = run_notes(NS(path="r", status="running", info={}, lost_tables=[]), NS(skip_ablation=True))
    assert notes == ["r is 'running', not complete: the report covers the tokens recorded so far"]


def test_a_killed_record_is_one_message_not_a_note_and_a_contradicting_error(tmp_path):
    """A SIGKILLed record (run.json "running", no writer holds it): the report noted that it "covers the
    tokens recorded so far" and then failed in the ablations with "finish it with ... --resume". Now the
    refusal comes first, alone, and names both ways on; with --skip-ablation the note stands alone, and
    calls the run interrupted (it said 'running' of a run no job was writing; a tour)."""
    from analyses.report.render import ReportError
    from probe.writer import writer_lock

    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "format": 1}))
    run = probe.open_run(tmp_path)
    with pytest.raises(ReportError) as e:
        run_notes(run, NS(skip_ablation=False))
    assert str(e.value) == (f"{tmp_path}: its record stopped before the end (run.json says running, and no record "
                            "job holds the run): finish it with the record command that wrote it plus --resume; or "
                            "pass --skip-ablation for a report of the tokens recorded so far, without the sections "
                            "that run the model")
    with writer_lock(tmp_path):  # a record at work
        with pytest.raises(ReportError, match=r"the run is still being recorded \(status running\); or pass "
                                              "--skip-ablation for a report of the tokens recorded so far"):
            run_notes(run, NS(skip_ablation=False))
        assert run_notes(run, NS(skip_ablation=True)) == [
            f"{tmp_path} is 'running', not complete: the report covers the tokens recorded so far"]
    assert run_notes(run, NS(skip_ablation=True)) == [
        f"{tmp_path} is 'interrupted' (its job was killed: run.json still says running; continue it with --resume), "
        "not complete: the report covers the tokens recorded so far"]


# ------------------------------------------------------------------------------ tables of a run
def test_repetition_ratios_divide_by_their_own_baselines(tmp_path):
    a = write_run(tmp_path / "r", K=3, E=8)
    df = rd.repetition(tmp_path / "r").set_index("layer")
    for layer in a["layers"]:
        w = M.repetition(a["ids"][layer], seq_id=a["seq"], pos=a["pos"], n_experts=8)
        x = df.loc[layer]
        assert x.top1_vs_uniform == pytest.approx(w["same_top1"] * 8)
        assert x.top1_vs_load == pytest.approx(w["same_top1"] / w["baseline_top1_load"])
        assert x.top2_any_vs_uniform == pytest.approx(w["top2_any"] / w["baseline_top2_any_uniform"])
        assert x.topk_any_vs_uniform == pytest.approx(w["topk_any"] / w["baseline_topk_any_uniform"])


def test_mtp_accuracy_leaves_out_positions_without_a_target(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    write_run(tmp_path / "r")
    rows = [(0, "code", 1, 1, 1), (1, "code", 2, 1, None), (2, "code", 3, 3, 2), (3, "prose", 4, 0, 4)]
    (tmp_path / "r" / "mtp").mkdir()
    pq.write_table(pa.Table.from_pylist([{"seq_id": 0, "pos": p, "domain": d, "mtp_top1": m, "main_top1": h,
                                          "agree": m == h, "target": t, "mtp_loss": 1.0} for p, d, m, h, t in rows],
                                         schema=TABLES["mtp"]), tmp_path / "r" / "mtp" / "part-0.parquet")
    m = rd.mtp_by_domain(tmp_path / "r").set_index("domain")
    # code: agree 2 of 3; mtp_top1 == target at 1 of the 2 positions with a target
    assert m.loc["code", "agreement"] == pytest.approx(2 / 3) and m.loc["code", "mtp_accuracy"] == 0.5
    assert m.loc["all", "positions"] == 4 and m.loc["all", "mtp_accuracy"] == pytest.approx(2 / 3)


def _heldout_by_hand(seq, domain, every=5):
    """metrics.md: every fifth window of each domain held out (its 1st, 6th, ... in seq_id order)."""
    test = np.zeros(len(seq), bool)
    for dom in set(domain.tolist()):
        windows = sorted({int(q) for q, d in zip(seq, domain) if d == dom})
        test |= np.isin(seq, windows[::every]) & (domain == dom)
    return test


def test_report_paths_hold_out_every_fifth_window_and_use_the_top_k_sets(tmp_path):
    a = write_run(tmp_path / "r", n_seq=10, seq_len=6)
    p = research.paths(probe.open_run(tmp_path / "r"))
    ids = np.stack([a["ids"][x] for x in a["layers"]], axis=1)
    dom = a["domain"].astype(str)
    test = _heldout_by_hand(a["seq"], dom)
    info = p["information"].set_index(["target", "unit"])
    for target, k in (("top1", 1), ("top2 set", 2)):
        want = M.domain_information(ids, dom, a["layers"], k, test).set_index("unit")
        got = info.loc[target]
        np.testing.assert_allclose(got.heldout_accuracy, want.heldout_accuracy)
        assert got["values"].tolist() == want["values"].tolist()
    assert info.loc[("top2 set", "layer 1"), "values"] == len({tuple(sorted(x)) for x in a["ids"][1].tolist()})
    assert p["E"] == 8 and p["K"] == 2


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_report_probes_weights_and_scores_and_says_why_not(tmp_path):
    """The domain-probe section: both feature kinds where the run kept scores (the synthetic run keeps
    them on even windows), its sentence from those rows, and with one domain the reason in its place."""
    write_run(tmp_path / "r", n_seq=60, seq_len=10, domains=("code", "prose", "math"))
    p = research.probes(probe.open_run(tmp_path / "r"))
    t = p["table"]
    assert p["note"] is None and t.features.tolist() == ["weights"] * 3 + ["scores"] * 3
    want = M.domain_probe_from_run(tmp_path / "r", features="scores")
    np.testing.assert_allclose(t[t.features == "scores"].accuracy, want.accuracy)
    [line] = research.summary({"probes": p})
    w = t[t.features == "weights"].set_index("unit")
    assert (f"from the gate weights: accuracy (balanced accuracy) L1 {w.accuracy['layer 1']:.3f} "
            f"({w.balanced_accuracy['layer 1']:.3f}), L2 {w.accuracy['layer 2']:.3f} "
            f"({w.balanced_accuracy['layer 2']:.3f}), all layers {w.accuracy['all layers']:.3f} "
            f"({w.balanced_accuracy['all layers']:.3f}) (majority {w.majority.iloc[0]:.3f}") in line
    assert "; from every expert's score: accuracy" in line
    one = {"table": t.assign(shuffled=0.25), "note": None}  # one shuffled value: said once, not as 0.250-0.250
    assert "shuffled domains 0.250;" in research.summary({"probes": one})[0]
    write_run(tmp_path / "one", n_seq=10, domains=("code",))
    one = research.probes(probe.open_run(tmp_path / "one"))
    assert one["table"] is None and one["note"].startswith("1 domain among the probed tokens;")  # not "domain(s)"
    assert research.missing("Domain probes", {"probes": one}).startswith("(not measured: 1 domain among")


def test_the_possible_paths_count_every_expert_of_the_model_not_only_those_chosen(tmp_path):
    # E came from the largest expert id routed: a run whose last experts were never chosen understated E^L
    write_run(tmp_path / "r", E=8)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["model_args"]["n_routed_experts"] = 12  # experts 8..11 exist but no token chose them
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert research.paths(probe.open_run(tmp_path / "r"))["E"] == 12
    del info["model_args"]  # a run without model args (an import): the largest id routed + 1
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert research.paths(probe.open_run(tmp_path / "r"))["E"] == 8


# ------------------------------------------------------------------------------ steering
LIFT = {1: pd.DataFrame([[1.0, 2.0, 0.5], [1.0, 0.5, 1.5]], index=["code", "prose"]),
        2: pd.DataFrame([[3.0, 0.2, 1.0], [0.1, 1.0, 2.5]], index=["code", "prose"])}


def test_steered_experts_are_the_top_lift_domain_s_best_expert_per_layer():
    # the largest lift anywhere: code's 3.0 (layer 2); code's best expert: layer 1 expert 1, layer 2 expert 0
    assert research_model.steered_experts(LIFT) == ("code", {1: [1], 2: [0]})


def test_steering_sentence_compares_with_the_other_domains_not_the_pooled_row(tmp_path, monkeypatch):
    import analyses.steer

    loss = pd.DataFrame({"kind": "loss", "domain": ["all", "code", "math", "prose"], "tokens": 10,
                         "steered_tokens": 10, "forced_share": [0.75, 1.0, 0.5, 0.5], "baseline_loss": 2.0,
                         "loss": 2.0, "delta": [0.9, 0.5, 0.1, 0.3]})
    gen = pd.DataFrame({"kind": "generation", "domain": ["code", "prose"], "prompt": ["p", "q"],
                        "baseline_text": ["a", "b"], "steered_text": ["a", "c"]})
    monkeypatch.setattr(analyses.steer, "steer", lambda opts, s: (None, pd.concat([loss, gen], ignore_index=True)))
    ns = NS(importance_tokens=10, progress=False, batch_size=None)
    out = research_model.steering(NS(path=tmp_path), ns, LIFT)
    [s] = out["sentences"]
    assert "put it in 75% of the steered top-k sets; loss delta on code +0.5000 vs the other domains' mean +0.2000" in s
    assert s.endswith("greedy continuations changed for 1 of 2 prompts.")
    # one domain: nothing domain-specific to steer with
    assert research_model.steering(NS(path=tmp_path), ns, {1: LIFT[1].loc[["code"]]}) is None


def test_run_vs_run_lists_only_tokens_whose_routes_changed(tmp_path):
    """The changes table held the 15 lowest-Jaccard tokens even where they were routed alike: every
    token of a run compared with itself, under 'Tokens whose routes changed most'."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    write_run(tmp_path / "a")
    run = probe.open_run(tmp_path / "a")
    same = research.run_vs_run(run, tmp_path / "a")
    assert same["changes"].empty
    [(title, _, table, _)] = research.figures({"run_vs_run": same})["Run vs run"]
    assert title.endswith("per layer: no token's route changed (the same first choice and top-k set at every "
                          "matched position and layer)") and len(table) == 2
    # one token's first two choices swapped in one layer: the same set (Jaccard 1), another first choice
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for f in sorted((tmp_path / "b" / "routing").glob("*.parquet")):
        t = pq.read_table(f)
        ids = t.column("expert_ids").to_pylist()
        hit = [i for i, (q, p, la) in enumerate(zip(*(t.column(c).to_pylist() for c in ("seq_id", "pos", "layer"))))
               if (q, p, la) == (0, 3, 2)]
        for i in hit:
            ids[i] = [ids[i][1], ids[i][0], *ids[i][2:]]
        pq.write_table(t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids",
                                    pa.array(ids, type=t.schema.field("expert_ids").type)), f)
    one = research.run_vs_run(run, tmp_path / "b")
    assert one["changes"][["seq_id", "pos", "top1_changed", "set_changed", "jaccard"]].values.tolist() == [
        [0, 3, 1, 0, 1.0]]
    titles = [x[0] for x in research.figures({"run_vs_run": one})["Run vs run"]]
    assert titles == ["Routing agreement with " + one["other"] + " per layer",  # a stand-in run: no tokenizer
                      "Tokens whose routes changed most (tokens as ids: run.json names no tokenizer, nor a checkpoint "
                      "that holds one; pass --tokenizer)"]


def _base_r(**kw) -> dict:
    """The report dict of a hand-made run with two MoE layers, sections set by `kw`."""
    b = pd.DataFrame({"layer": [1, 2], "maxvio_global": [0.5, 0.25], "balancedness": [0.8, 0.9]})
    return {"balance": b, "specialisation": None, "domains": ["code"], "sweep": None, "repetition": None,
            "mtp": None, "kv": None, "run": NS(info={})} | kw


def test_latents_of_one_token_give_no_rank_of_zero():
    """record --max-tokens 1: one token a layer, a zero covariance; the summary read 'L0 0.0/64 (99% energy
    in 0)' and the chart drew four zero series as the measured rank (a tour)."""
    from analyses.report.render import _kv_figures

    kv = pd.DataFrame({"layer": [0, 1], "tokens": [1, 1], "latent_dim": [64, 64], "effective_rank": [0.0, 0.0],
                       "energy90": [0, 0], "energy95": [0, 0], "energy99": [0, 0], "rank_share": [0.0, 0.0]})
    why = ("a covariance needs two tokens or more, and the run recorded 1 token a layer; record with a larger "
           "--max-tokens")
    assert f"Latent c_kv effective rank: not measured ({why})." in summary(_base_r(kv=kv))
    [(title, fig, table, _)] = _kv_figures(kv)
    assert title == f"No effective rank: {why}" and fig is None and list(table.columns) == ["layer", "tokens",
                                                                                           "latent_dim"]
    kv2 = kv.assign(tokens=[2, 2], effective_rank=[1.5, 1.2], energy99=[2, 2])  # two tokens: measured
    assert "Latent c_kv effective rank: L0 1.5/64 (99% energy in 2), L1 1.2/64 (99% energy in 2)." in \
        summary(_base_r(kv=kv2))
    assert _kv_figures(kv2)[0][1] is not None


def test_the_latent_table_writes_component_counts_as_integers():
    """latent_rank's columns are float (NaN for a layer of under two tokens), so the findings' table read
    '29.0000' components for 90% energy; they are counts: '29', and 'nan' where not measured."""
    from analyses.report.render import _kv_figures, md_table

    kv = pd.DataFrame({"layer": [0, 1, 2], "tokens": [9, 9, 9], "latent_dim": [64] * 3,  # layer 2 non-finite
                       "effective_rank": [30.05, 16.03, np.nan], "energy90": [29.0, 17.0, np.nan],
                       "energy95": [38.0, 24.0, np.nan], "energy99": [54.0, 42.0, np.nan]})
    kv["rank_share"] = kv.effective_rank / kv.latent_dim
    rows = md_table(_kv_figures(kv)[0][2]).splitlines()[2:]
    assert rows[0] == "| 0 | 9 | 64 | 30.0500 | 29 | 38 | 54 | 0.4695 |", rows
    assert rows[2] == "| 2 | 9 | 64 | nan | nan | nan | nan | nan |", rows


def test_windows_of_one_token_give_no_repetition_of_nan(tmp_path):
    """record --max-tokens 1: no two tokens share a window; the summary read 'L1 nan (uniform 0.031,
    load-matched 1.000)' and the chart drew its baselines beside three all-NaN measured series (a tour)."""
    from analyses.report.render import NO_PAIRS, _repetition_figures

    write_run(tmp_path / "r", n_seq=2, seq_len=1)
    rep = rd.repetition(probe.open_run(tmp_path / "r"))
    s = summary(_base_r(repetition=rep))
    assert f"Consecutive tokens with the same first-choice expert: not measured ({NO_PAIRS})." in s
    assert not any("nan" in x for x in s)
    [(title, fig, table, _)] = _repetition_figures(rep)
    assert title == f"No adjacent tokens: {NO_PAIRS}" and fig is None and table.pairs.eq(0).all()
    write_run(tmp_path / "two", n_seq=2, seq_len=2)  # two tokens a window: measured
    rep = rd.repetition(probe.open_run(tmp_path / "two"))
    [line] = [x for x in summary(_base_r(repetition=rep)) if x.startswith("Consecutive")]
    assert _repetition_figures(rep)[0][1] is not None and "not measured" not in line and "L1 " in line


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_run_vs_run_names_the_layers_only_one_run_has(tmp_path):
    """--compare of a run of a model with fewer MoE layers (same experts): the agreement covered the
    layers both have, and the others went unsaid from the summary and the chart (a tour)."""
    write_run(tmp_path / "a", layers=(1, 2, 3))
    write_run(tmp_path / "b", layers=(1, 2), seed=1, token_seed=0)
    rv = research.run_vs_run(probe.open_run(tmp_path / "a"), tmp_path / "b")
    assert list(rv["agreement"].layer) == [1, 2] and rv["uncompared"] == "layers not compared: L3 (only in this run)"
    [line] = research.summary({"run_vs_run": rv})
    assert line.endswith("of this run's); layers not compared: L3 (only in this run).")
    title = research.figures({"run_vs_run": rv})["Run vs run"][0][0]
    assert "(layers not compared: L3 (only in this run))" in title
    rv = research.run_vs_run(probe.open_run(tmp_path / "b"), tmp_path / "a")
    assert rv["uncompared"] == f"layers not compared: L3 (only in {tmp_path / 'a'})"
    write_run(tmp_path / "c", layers=(1, 2), seed=2, token_seed=0)  # the same layers: nothing to say
    rv = research.run_vs_run(probe.open_run(tmp_path / "b"), tmp_path / "c")
    assert rv["uncompared"] is None and research.summary({"run_vs_run": rv})[0].endswith("of this run's).")


def test_a_run_of_one_token_leaves_out_importance_and_steering_not_the_report(tmp_path, monkeypatch):
    """record --max-tokens 1: importance and steering evaluate the run's windows under its cap, one
    token, and the job refused them ('capped at 1 token in all (max_tokens)', not a report flag) after
    the ablations had run, and the report was lost (a tour). They are left out, saying why."""
    write_run(tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {"max_tokens": 1}}))
    monkeypatch.setattr(research_model, "importance", lambda *a: pytest.fail("the model ran"))
    out: dict = {}
    research.compute_model(probe.open_run(tmp_path / "r"), NS(skip_ablation=False, importance_tokens=20), out)
    why = ("the run was recorded with --max-tokens 1, and causal importance and steering evaluate its windows, "
           "capped the same way: a window of one token has no next token to score; record with a larger --max-tokens")
    assert out == {"importance_skip": why}
    assert research.summary(out) == [f"Causal vs observed importance and steering: not measured ({why})."]
    for sec in ("Causal vs observed importance", "Steering"):
        assert research.missing(sec, out) == f"(not measured: {why})"


def test_domain_probes_of_one_window_a_domain_say_too_few_windows(tmp_path):
    """One window a domain (record --max-tokens 640): every window is held out and the probe's note read
    'a probe needs training tokens of two labels or more and held-out tokens (got 0 training labels, 640
    held out)', where paths and token-id dependence say too few windows (a tour)."""
    write_run(tmp_path / "r", n_seq=2, seq_len=30)  # code and prose: one window each
    p = research.probes(probe.open_run(tmp_path / "r"))
    assert p == {"table": None, "note": f"{research.TOO_FEW_WINDOWS}: every fifth window of a domain is held out, "
                                        "its first among them, and 2 of the 2 domains have one window"}
    write_run(tmp_path / "two", n_seq=4, seq_len=30)  # two windows each: one trains, one is held out
    assert research.probes(probe.open_run(tmp_path / "two"))["note"] is None


def test_counts_of_one_are_singular_in_the_summary_and_the_figures():
    """'1 tokens matched' (run vs run) and 'mean of 1 seeds' (the masking figure) read in a report (a tour)."""
    g = pd.DataFrame({"layer": [1], "top1_same": [1.0], "set_same": [1.0], "jaccard": [1.0], "tokens": [1],
                      "share_of_a": [1.0], "share_of_b": [1.0]})
    [line] = research.summary({"run_vs_run": {"agreement": g, "changes": None, "other": "runs/x"}})
    assert line.endswith("; 1 token matched (100% of this run's).")
    curve = pd.DataFrame({"masked": [0, 4], "fraction": [0, 0.125], "top_delta": [0.0, 0.3],
                          "random_delta": [0.0, 0.1], "random_delta_std": [np.nan, np.nan], "random_seeds": [0, 1]})
    sw = NS(curve=curve, skipped={},
            options={"seeds": [0], "tokens": 1, "domain_tokens": 1, "rank_by": "eval", "n_experts": 32})
    from analyses.report.render import _sweep_figures, _sweep_summary

    names = [t.name for t in _sweep_figures(sw)[0][1].data]
    assert "random experts masked (mean of 1 seed)" in names, names
    none = pd.DataFrame(columns=["domain", "own", "on_others", "by_others", "own_above_on_others_mean"])
    assert _sweep_summary(NS(**vars(sw), domain_summary=none))[0].startswith(
        "Masking the most-used experts (ranked by load on the evaluated tokens; reroute, 1 token, ")
    assert research.counted(1280, "token") == "1,280 tokens" and research.counted(0, "seed") == "0 seeds"


def test_the_tokens_scored_say_which_domain_the_run_held_too_few_of():
    """A cap that cut the last domain alone (code whole, 29 tokens of prose) was said as '--importance-tokens
    a domain', the cap counted against --importance-tokens x domains (a tour): each domain is said, and the
    one the run's windows hold fewer of than the flag asks, from run.json's planned tokens_per_domain."""
    ns = NS(importance_tokens=300)

    def run(cap, **held):
        return NS(info={"options": {"max_tokens": cap}, "planned": {"tokens_per_domain": held}})

    what, warning = research_model.scored(run(1029, code=1000, prose=29), ns, 317, {"code": 290, "prose": 27})
    assert what == ("317 tokens scored: code 290, prose 27; --importance-tokens 300 a domain, but the run's own "
                    "windows, up to its --max-tokens 1,029 (which these sections inherit), hold 29 tokens of prose")
    assert warning is None
    # the run read the whole corpus (its cap not reached): the corpus is what holds few
    what, warning = research_model.scored(run(5000, code=1000, prose=29), ns, 317, {"code": 290, "prose": 27})
    assert what.endswith("--importance-tokens 300 a domain, but the corpus holds 29 tokens of prose")
    few = research_model.scored(run(60, code=31, prose=29), ns, 56, {"code": 29, "prose": 27})
    assert few[0] == ("56 tokens scored: code 29, prose 27; capped by the run's own --max-tokens 60, which these "
                      "sections inherit") and few[1].endswith("record the run with a larger --max-tokens")
    assert research_model.scored(run(None, code=1000, prose=400), ns, 600, {"code": 300, "prose": 300}) == (
        "600 tokens scored: code 300, prose 300; --importance-tokens 300 a domain", None)


def test_the_tokens_scored_tell_a_domain_the_cap_cut_from_one_the_corpus_holds_little_of():
    """A run that stopped at its cap said every short domain was the cap's: one the corpus holds 29 tokens
    of too (a tour). The domains the cap cut (run.json's planned capped_domains, noted by the record) tell
    them apart."""
    ns = NS(importance_tokens=300)

    def run(cap, cut, **held):
        return NS(info={"options": {"max_tokens": cap}, "planned": {"tokens_per_domain": held, "capped_domains": cut}})

    what, _ = research_model.scored(run(1029, ["code"], code=1000, prose=29), ns, 317, {"code": 290, "prose": 27})
    assert what.endswith("--importance-tokens 300 a domain, but the corpus holds 29 tokens of prose"), what
    what, warning = research_model.scored(run(489, ["code", "math"], code=60, math=400, prose=29), ns, 86,
                                          {"code": 57, "math": 2, "prose": 27})
    assert what == ("86 tokens scored: code 57, math 2, prose 27; --importance-tokens 300 a domain, but the run's "
                    "own windows, up to its --max-tokens 489 (which these sections inherit), hold 60 tokens of "
                    "code, and the corpus holds 29 tokens of prose")
    assert warning.endswith("record the run with a larger --max-tokens, or from a --corpus that holds more")
    # every domain short and every one cut: the cap alone
    few = research_model.scored(run(60, ["code", "prose"], code=31, prose=29), ns, 56, {"code": 29, "prose": 27})
    assert few[0].endswith("capped by the run's own --max-tokens 60, which these sections inherit")
    # the cap reached as the corpus ran out: nothing cut, the corpus's domains
    what, warning = research_model.scored(run(60, [], code=31, prose=29), ns, 56, {"code": 29, "prose": 27})
    assert what.endswith("but the corpus holds 31 tokens of code, 29 tokens of prose"), what
    assert warning.endswith("pass a larger --importance-tokens, or a --corpus that holds more")


def test_the_run_vs_run_placeholder_names_no_findings_file():
    """'see FINDINGS.md' was written into findings files of other names (--findings OTHER.md) and into
    the HTML report (a tour): the placeholder names the command that makes the run to compare with."""
    text = research.missing("Run vs run", {})
    assert "FINDINGS" not in text and "`python -m analyses.variants no-router-bias`" in text, text


def test_importance_and_steering_say_the_tokens_scored_what_capped_them_and_when_too_few(tmp_path, monkeypatch):
    """On a 5-token run importance scored 4 tokens, capped by the run's own --max-tokens (which the model
    sections inherit), not --importance-tokens, and reported 'p 0.026' as a finding (a tour): the summary
    says the tokens scored and the cap, and warns under research_model.MIN_SCORED_TOKENS (100)."""
    import analyses.steer

    run = NS(path=tmp_path, info={"options": {"max_tokens": 5}})
    ns = NS(importance_tokens=1000, progress=False, batch_size=None)
    what, warning = research_model.scored(run, ns, 4, {"code": 4})
    assert what == "4 tokens scored, capped by the run's own --max-tokens 5, which these sections inherit"
    assert warning == ("4 tokens scored (capped by the run's own --max-tokens 5, which these sections inherit) is too "
                       "few for these figures to mean anything (under 100, each loss delta is a mean over so few "
                       "tokens that noise decides the ranks, correlations and p-values); record the run with a "
                       "larger --max-tokens")
    big = NS(path=tmp_path, info={"options": {"max_tokens": 60_000}})
    assert research_model.scored(big, ns, 2000, {"code": 1000, "prose": 1000}) == (
        "2,000 tokens scored: code 1,000, prose 1,000; --importance-tokens 1,000 a domain", None)
    assert research_model.scored(big, NS(importance_tokens=20), 40, {"code": 20, "prose": 20})[1].endswith(
        "pass a larger --importance-tokens, or a --corpus that holds more")  # not capped: the flag's own few
    c = pd.DataFrame({"layer": [1], "spearman": [0.9], "spearman_p": [0.026], "top_expert": [3], "top_delta": [0.2]})
    imp = {"correlation": c, "tokens": 4, "scored": what, "too_few": warning}
    lines = research.summary({"importance": imp})
    assert lines[0].startswith("Causal vs observed importance (each routed expert removed in turn, reroute, 4 tokens "
                               "scored, capped by the run's own --max-tokens 5, which these sections inherit): ")
    assert lines[-1] == f"Warning, causal importance: {warning}."
    assert research.summary({"importance": imp | {"too_few": None}})[-1].startswith("Causal vs observed")
    loss = pd.DataFrame({"kind": "loss", "domain": ["all", "code", "prose"], "tokens": [4, 2, 2], "steered_tokens": 4,
                         "forced_share": 1.0, "baseline_loss": 2.0, "loss": 2.0, "delta": [0.9, 0.5, 0.1]})
    gen = pd.DataFrame({"kind": "generation", "domain": ["code"], "prompt": ["p"], "baseline_text": ["a"],
                        "steered_text": ["a"]})
    monkeypatch.setattr(analyses.steer, "steer", lambda opts, s: (None, pd.concat([loss, gen], ignore_index=True)))
    st = research_model.steering(run, ns, LIFT)
    assert st["sentences"][0].startswith("Steering (4 tokens scored: code 2, prose 2; capped by the run's own "
                                         "--max-tokens 5, which these sections inherit): forcing code's")
    assert research.summary({"importance": imp, "steering": st})[-1] == \
        f"Warning, causal importance and steering: {warning}."
