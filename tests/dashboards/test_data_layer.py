"""The dashboard's data layer (dashboards.data, dashboards.research) called directly (`.uncached`),
its results against pandas over the run's own Parquet files or hand-written tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest



@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A training run of 4 steps (train.log.TrainLog's tables) with its RunRef: gates layer1, layer2 and mtp0."""
    import json

    from dashboards import data
    from helpers.dashboard_runs import write_train_run

    run = write_train_run(tmp_path_factory.mktemp("train") / "t", steps=4)
    return run, data.RunRef("t", str(run), "train", "complete", json.loads((run / "run.json").read_text()))


def test_gate_labels_are_the_ones_training_wrote_mtp_included(train_run):
    from dashboards import data

    run, ref = train_run
    assert ref.info["gates"] == ["layer1", "layer2", "mtp0"]  # layer 3 of 3 is the MTP block's router
    assert data.total_loads.uncached(ref).layer.unique().tolist() == ["layer 1", "layer 2", "MTP 0"]
    assert data.layer_label(ref, 3) == "MTP 0" and data.layer_label(ref, 2) == "layer 2"
    assert [data.layer_number(ref, g) for g in ("layer2", "layer 2", "mtp0", "MTP 0")] == [2, 2, 3, 3]
    for label in ("MTP 1", "layer 4"):  # layers the run does not have: refused, as layer_label refuses them
        with pytest.raises(ValueError, match=f"layer 4: run {ref.name} has layers 0 to 3"):
            data.layer_number(ref, label)


def test_a_run_is_a_probe_run_by_its_format_or_by_its_table_folders(tmp_path):
    from dashboards import data

    assert data.run_kind(tmp_path, {"format": 1}) == "probe"  # just started: no table folder yet
    assert data.run_kind(tmp_path, {}) == "unknown"
    (tmp_path / "tokens").mkdir()
    assert data.run_kind(tmp_path, {}) == "probe"  # an older run.json without `format`
    assert data.run_kind(tmp_path, {"kind": "train"}) == "train"


def test_a_finished_run_counts_its_recorded_tokens_not_its_plan(tmp_path):
    from dashboards import data

    info = {"status": "complete", "planned": {"tokens": 200}, "recorded": {"tokens": 150}}
    assert data.tokens_in_run(data.RunRef("r", str(tmp_path), "probe", "complete", info)) == 150
    info.pop("recorded")  # an older run.json: the plan is all there is
    assert data.tokens_in_run(data.RunRef("r", str(tmp_path), "probe", "complete", info)) == 200


def test_pass_loads_are_the_main_layers_loads_per_step(train_run):
    import pyarrow.parquet as pq

    from dashboards import data

    run, ref = train_run
    el = pq.read_table(run / "expert_load").to_pandas()
    el = el[el.layer < ref.info["model_args"]["n_layers"]]  # the MTP router (layer 3) is left out
    want = el.pivot_table(index="step", columns=["layer", "expert"], values="count", aggfunc="sum")
    steps, layers, X = data.pass_loads.uncached(ref)
    assert steps.tolist() == want.index.tolist() and layers == [1, 2]
    np.testing.assert_array_equal(X, want.to_numpy().reshape(len(steps), 2, 16))


def test_the_bias_shown_is_the_last_steps(train_run):
    import pyarrow.parquet as pq

    from dashboards import data

    run, ref = train_run
    rb = pq.read_table(run / "router_bias").to_pandas()
    last = rb[(rb.step == rb.step.max()) & (rb.layer == 2)].sort_values("expert")
    got = data.bias.uncached(ref)
    assert (rb.groupby("step").bias.sum().diff().dropna() != 0).all()  # the steps' biases differ
    np.testing.assert_allclose(got[got.layer == "layer 2"].bias, last.bias.astype(float))


def test_a_runs_bias_without_a_router_bias_table_is_read_from_its_checkpoints_safetensors(tmp_path):
    """Runs recorded before `router_bias` existed: the bias comes from the checkpoint's header, without torch."""
    import torch
    from safetensors.torch import save_file

    from dashboards import data

    f32, b16 = torch.tensor([0.5, -1.25, 3.0]), torch.tensor([0.1, -2.7, 1e-3], dtype=torch.bfloat16)
    (tmp_path / "ckpt").mkdir()
    save_file({"model.layers.1.mlp.gate.e_score_correction_bias": f32,
               "model.layers.2.mlp.gate.weight": torch.ones(3, 2),  # not a bias: left out
               "model.layers.2.mlp.gate.e_score_correction_bias": b16}, tmp_path / "ckpt" / "model.safetensors")
    info = {"checkpoint": {"path": str(tmp_path / "ckpt")}, "model_args": {"n_layers": 3}}
    got = data.bias.uncached(data.RunRef("r", str(tmp_path / "run"), "probe", "complete", info))
    assert got.layer.tolist() == ["layer 1"] * 3 + ["layer 2"] * 3 and got.expert.tolist() == [0, 1, 2] * 2
    np.testing.assert_array_equal(got.bias, torch.cat([f32, b16.float()]).double().numpy())


def test_the_per_token_bound_stops_at_the_window_that_completes_the_budget(tmp_path):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=6, seq_len=3)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    # windows of 3 tokens: 6 tokens fill windows 0-1 exactly (bound 2), a 7th needs window 2
    assert [data._seq_cap.uncached(ref, n) for n in (6, 7, 18, 19)] == [2, 3, 6, 2**62]


def write_table(run: Path, table: str, rows: list[dict]) -> None:
    """One part file of `table` (probe/schema.py's schema) in run directory `run`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    (run / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[table]), run / table / "part-0.parquet")


def routed_tokens(run: Path, layer: int) -> pd.DataFrame:
    """seq_id, pos, token_id, domain, expert_ids of `layer`: the run's tokens joined with its routing by pandas."""
    routing = pd.read_parquet(run / "routing")
    return pd.read_parquet(run / "tokens").merge(routing[routing.layer == layer], on=["seq_id", "pos"])


def test_an_experts_top_tokens_are_counted_over_the_sampled_windows_most_frequent_first(tmp_path, monkeypatch):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=6, seq_len=7, vocab=6)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    monkeypatch.setattr(data, "SAMPLE_TOKENS", 21)  # windows 0-2 of 6
    j = routed_tokens(tmp_path / "r", 2)
    j = j[j.seq_id < 3].assign(hit=[3 in ids for ids in j[j.seq_id < 3].expert_ids])
    want = j.groupby("token_id").agg(n=("hit", "sum"), total=("hit", "size")).reset_index()
    want = want[want.n > 0].sort_values(["n", "token_id"], ascending=[False, True], ignore_index=True)
    got = data.expert_top_tokens.uncached(ref, 2, 3, 100)
    assert len(set(want.n)) > 1  # a real order to check
    assert got[["token_id", "n", "total"]].values.tolist() == want.values.tolist()
    np.testing.assert_allclose(got.share, want.n / want.total)
    assert data.expert_top_tokens.uncached(ref, 2, 3, 2).token_id.tolist() == want.token_id[:2].tolist()


def test_token_snippets_hold_the_window_around_each_hit_with_the_hit_at_centre(tmp_path):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=4, seq_len=7, vocab=3)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    j = routed_tokens(tmp_path / "r", 1)
    tok = e = 0  # layer 1's first choice is token_id % 8: every token 0 is a hit of expert 0
    hits = j[(j.token_id == tok) & np.array([e in ids for ids in j.expert_ids])].sort_values(["seq_id", "pos"])
    got = data.token_snippets.uncached(ref, 1, e, tok, 50, 2)
    assert got[["seq_id", "pos"]].values.tolist() == hits[["seq_id", "pos"]].values.tolist() and len(got) > 5
    for r in got.itertuples():
        window = j[(j.seq_id == r.seq_id) & (abs(j.pos - r.pos) <= 2)].sort_values("pos")
        assert r.ids == window.token_id.tolist()  # up to 2 tokens each side, cut at the window's ends
        assert r.ids[r.centre] == tok and r.centre == min(r.pos, 2)
    assert {0, 6} <= set(got.pos)  # hits at both ends of a window


def test_documents_are_listed_in_corpus_order_with_their_windows(tmp_path):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=12, seq_len=3)  # documents d0 ... d11: d10 after d9, not after d1
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    tok = pd.read_parquet(tmp_path / "r" / "tokens")
    want = tok.groupby("doc_id").agg(seq_lo=("seq_id", "min"), seq_hi=("seq_id", "max"), tokens=("pos", "size"),
                                     mean_loss=("loss", "mean")).sort_values("seq_lo")
    got = data.documents.uncached(ref)
    assert got.doc_id.tolist() == want.index.tolist()
    assert got[["seq_lo", "seq_hi", "tokens"]].values.tolist() == want[["seq_lo", "seq_hi", "tokens"]].values.tolist()
    np.testing.assert_allclose(got.mean_loss, want.mean_loss, rtol=1e-6)


def test_a_documents_tokens_come_in_document_order_across_its_windows(tmp_path):
    from dashboards import data

    # document "a" cut into two windows of 3 (pos restarts at 0, doc_pos goes on), then document "b"
    rows = [{"doc_id": d, "seq_id": s, "pos": p, "doc_pos": dp, "token_id": 100 + 10 * s + p, "domain": "code",
             "loss": 0.5} for d, s, p, dp in [("a", 1, 2, 5), ("a", 0, 0, 0), ("b", 2, 0, 0), ("a", 1, 0, 3),
                                              ("a", 0, 2, 2), ("a", 1, 1, 4), ("a", 0, 1, 1)]]
    write_table(tmp_path / "r", "tokens", rows)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    docs = data.documents.uncached(ref)
    assert docs[["doc_id", "seq_lo", "seq_hi", "tokens"]].values.tolist() == [["a", 0, 1, 6], ["b", 2, 2, 1]]
    got = data.doc_tokens.uncached(ref, "a", 0, 2)
    assert got.doc_pos.tolist() == list(range(6)) and got.token_id.tolist() == [100, 101, 102, 110, 111, 112]
    assert data.doc_tokens.uncached(ref, "a", 0, 2, 4).doc_pos.tolist() == [0, 1, 2, 3]  # its first max_tokens


def test_latent_spectrum_shares_are_each_layers_own(tmp_path):
    from dashboards import data

    eig = {0: [6.0, 3.0, 1.0], 1: [1.0, 1.0]}
    write_table(tmp_path / "r", "kv_spectrum", [{"layer": lay, "component": c, "eigenvalue": v}
                                                for lay, vals in eig.items() for c, v in enumerate(vals)])
    got = data.kv_spectrum.uncached(data.RunRef("r", str(tmp_path / "r"), "probe", "complete"))
    assert got.share.tolist() == pytest.approx([0.6, 0.3, 0.1, 0.5, 0.5])  # each layer's energy sums to 1


def test_mtp_and_speculative_decoding_aggregates_per_domain(tmp_path):
    from dashboards import data
    from helpers.dashboard_runs import write_spec

    rng = np.random.default_rng(0)
    mtp = [{"seq_id": i // 8, "pos": i % 8, "domain": ("code", "prose")[i % 3 == 0], "mtp_top1": int(rng.integers(4)),
            "main_top1": int(rng.integers(4)), "target": int(rng.integers(4)), "mtp_loss": float(rng.random())}
           for i in range(64)]
    for r in mtp:
        r["agree"] = r["mtp_top1"] == r["main_top1"]
    write_table(tmp_path / "r", "mtp", mtp)
    write_spec(tmp_path / "r")
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    m = pd.DataFrame(mtp)
    want = m.assign(accuracy=m.mtp_top1 == m.target).groupby("domain")[["agree", "mtp_loss", "accuracy"]].mean()
    got = data.mtp_by_domain.uncached(ref).set_index("domain")
    assert 0 < want.accuracy.min() and want.accuracy.max() < 1
    np.testing.assert_allclose(got[["agree", "mtp_loss", "accuracy"]], want, rtol=1e-6)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete", {"options": {"seq_len": 8}})
    got = data.mtp_by_position.uncached(ref, 4)  # 4 buckets of 2 positions: each named by its first position
    want = m.assign(bucket=m.pos - m.pos % 2).groupby(["domain", "bucket"]).agree.agg(["size", "mean"])
    assert got[["domain", "bucket", "positions"]].values.tolist() == want.reset_index()[
        ["domain", "bucket", "size"]].values.tolist()
    np.testing.assert_allclose(got.agree, want["mean"])
    dec = pd.read_parquet(tmp_path / "r" / "spec_decode").groupby("domain").sum(numeric_only=True)
    got = data.spec_by_domain.uncached(ref).set_index("domain")
    np.testing.assert_allclose(got.acceptance, dec.drafts_accepted / dec.drafts_proposed)
    np.testing.assert_allclose(got.tokens_per_forward, dec.new_tokens / dec.forward_passes)


def test_training_curves_are_the_train_splits_per_domain_and_gate(train_run):
    import pyarrow.parquet as pq

    from dashboards import training_data

    run, ref = train_run
    dom, gates = (pq.read_table(run / t).to_pandas() for t in ("train_domains", "train_gates"))
    got = training_data.train_metrics.uncached(ref).set_index("step")
    code = dom[(dom.split == "train") & (dom.domain == "code")].set_index("step").loss
    mtp = gates[(gates.split == "train") & (gates.layer == 3)].set_index("step").maxvio
    assert len(code) == len(got) == 4
    np.testing.assert_allclose(got.loss_code, code.loc[got.index])
    np.testing.assert_allclose(got.maxvio_mtp0, mtp.loc[got.index])


def test_a_gates_bias_over_steps_is_that_gates_every_kth_step_beside_its_load(train_run):
    import pyarrow.parquet as pq

    from dashboards import training_data

    run, ref = train_run
    rb = pq.read_table(run / "router_bias").to_pandas()
    el = pq.read_table(run / "expert_load").to_pandas()
    el = el.groupby(["step", "layer", "expert"], as_index=False)["count"].sum()
    want = rb[(rb.layer == 3) & (rb.step % 2 == 0)].merge(el, on=["step", "layer", "expert"], how="left")
    got = training_data.bias_by_step.uncached(ref, "mtp0", 2)  # mtp0: layer n_layers + 0 = 3
    assert got.step.unique().tolist() == [2, 4]
    assert got[["step", "expert", "load"]].values.tolist() == want[["step", "expert", "count"]].values.tolist()
    np.testing.assert_allclose(got.bias, want.bias.astype(float))


def test_the_sampled_run_holds_only_the_first_windows_and_the_note_says_so(tmp_path):
    from dashboards import data, research
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=6, seq_len=7)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    run = research._sampled_run(ref, 3)
    for t in ("tokens", "routing"):
        df = pd.read_parquet(tmp_path / "r" / t)
        assert run.sql(f"select max(seq_id), count(*) from {t}").fetchall() == [(2, (df.seq_id < 3).sum())], t
    # a running record commits a part of later windows: the sample stays the first windows (it read the whole table)
    for t in ("tokens", "routing"):
        last = sorted((tmp_path / "r" / t).glob("*.parquet"))[-1]  # windows 3-5
        shutil.copy(last, tmp_path / "r" / t / "r000-b0000009-0000009.parquet")
        df = pd.read_parquet(tmp_path / "r" / t)
        assert run.sql(f"select max(seq_id), count(*) from {t}").fetchall() == [(2, (df.seq_id < 3).sum())], t
        assert len(run.df(t)) == (df.seq_id < 3).sum() < len(df), t
    assert research.sample_note(ref, 6) == ""  # every one of the 6 windows read
    assert research.sample_note(ref, 5).startswith(" Read: the first 5 of the run's 6 windows")


def test_token_dependence_of_a_run_without_its_layers_or_top_k_stays_within_the_id_budget(tmp_path, monkeypatch):
    """A run.json without n_layers (no MoE layers known) or n_activated_experts is budgeted for a large model,
    not for one layer or one expert per token."""
    from analyses import metrics
    from dashboards import data, research
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=6, seq_len=7, K=2)  # layers 1 and 2, top-2: 28 ids per window
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete", {"model_args": {"n_activated_experts": 2}})
    monkeypatch.setattr(research, "MAX_ROUTE_IDS", 56)  # room for two windows' ids
    monkeypatch.setattr(metrics, "token_dependence_from_run",
                        lambda run, every: run.sql("select count(*) * 2 as ids from routing").df())
    ids, windows = research.token_dependence.uncached(ref)
    assert ids.ids[0] == windows * 28 <= 56  # (an assumed single layer read 4 windows: 112 ids)
    # nor is a run.json without its top-k budgeted for one expert per token
    info = {"model_args": {"n_layers": 3, "n_dense_layers": 1}}
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete", info)
    assert research.route_windows(ref, 2) * 28 <= 56
    # and however many ids fit, no more than SAMPLE_TOKENS tokens: 14, the first two windows
    monkeypatch.setattr(research, "MAX_ROUTE_IDS", 10**9)
    monkeypatch.setattr(research, "SAMPLE_TOKENS", 14)
    assert research.route_windows(ref, 2) == 2


def test_vocabulary_specialisation_counts_ids_seen_five_times_by_default(tmp_path):
    from analyses.metrics.specialisation import vocabulary_specialisation, vocabulary_specialisation_baseline
    from dashboards import data, research
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=6, seq_len=7, vocab=12)  # 42 tokens of 12 ids: some seen fewer than 5 times
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    tt = data.token_top1(ref, 2)
    args = (tt.token_id.to_numpy(), tt.e1.to_numpy())
    want = (vocabulary_specialisation(*args, min_count=5), vocabulary_specialisation_baseline(*args, min_count=5))
    assert research.vocabulary_specialisation.uncached(ref, 2) == pytest.approx(want)  # the report's min_count
    every = (vocabulary_specialisation(*args), vocabulary_specialisation_baseline(*args))
    assert abs(want[0] - every[0]) > 0.01 and abs(want[1] - every[1]) > 0.01  # the control: all ids differ
    assert research.vocabulary_specialisation.uncached(ref, 2, 1) == pytest.approx(every)


def test_a_run_still_recording_counts_its_tokens_table_and_a_stopped_one_its_recorded_figure(tmp_path, monkeypatch):
    from dashboards import data
    from helpers.synthetic_run import write_run

    monkeypatch.setattr(data, "recorded_tokens", data.recorded_tokens.uncached)  # no Streamlit cache to start
    write_run(tmp_path / "r", n_seq=3, seq_len=4)  # 12 tokens in the tokens table
    running = {"status": "running", "planned": {"tokens": 200}}
    assert data.tokens_in_run(data.RunRef("r", str(tmp_path / "r"), "probe", "running", running)) == 3 * 4
    done = {"status": "complete", "planned": {"tokens": 200}, "recorded": {"tokens": 150}}
    assert data.tokens_in_run(data.RunRef("r", str(tmp_path / "r"), "probe", "complete", done)) == 150  # run.json's
    stopped = {"status": "interrupted", "planned": {"tokens": 200}, "recorded": {"tokens": 150}}
    assert data.tokens_in_run(data.RunRef("s", str(tmp_path / "s"), "probe", "interrupted", stopped)) == 150


def test_a_runs_moe_layers_start_after_its_dense_layers():
    from dashboards import data

    def ref(args):
        return data.RunRef("r", "/nonexistent", "probe", "complete", {"model_args": args})

    assert data.moe_layers(ref({"n_layers": 4, "n_dense_layers": 1})) == [1, 2, 3]
    assert data.moe_layers(ref({"n_layers": 2})) == [0, 1] and data.moe_layers(ref({})) == []


def test_per_token_ids_and_first_choices_are_the_layers_routing_rows(tmp_path):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=4, seq_len=5, K=3)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    j = routed_tokens(tmp_path / "r", 2).sort_values(["seq_id", "pos"])
    ids = data.layer_topk.uncached(ref, 2)
    got = pd.DataFrame({"seq_id": j.seq_id.to_numpy(), "row": [tuple(r) for r in ids]})  # routing's row order
    assert ids.shape == (len(j), 3)
    assert sorted(got.row) == sorted(tuple(r) for r in j.expert_ids)  # [T, K]: one token's top-k per row
    top1 = data.token_top1.uncached(ref, 2)
    want = sorted(zip(j.token_id, (int(r[0]) for r in j.expert_ids)))
    assert sorted(zip(top1.token_id, top1.e1)) == want  # expert_ids[1] in SQL: the first choice
    assert any(int(r[0]) != int(r[1]) for r in j.expert_ids)  # the control: first and second choices differ


def test_a_documents_routing_rows_are_those_of_its_windows(tmp_path):
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=5, seq_len=3)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    routing = pd.read_parquet(tmp_path / "r" / "routing")
    want = routing[routing.seq_id.between(1, 3)].sort_values(["seq_id", "pos", "layer"])
    got = data.doc_routing.uncached(ref, 1, 3)
    assert got[["seq_id", "pos", "layer"]].values.tolist() == want[["seq_id", "pos", "layer"]].values.tolist()


def test_evaluation_curves_are_the_val_splits_per_domain_and_gate(tmp_path):
    from dashboards import data, training_data

    run = tmp_path / "t"
    write_table(run, "train_eval", [{"step": 50, "tokens_seen": 100, "val_loss": 5.0, "val_mtp_agree": 0.5}])
    write_table(run, "train_domains", [{"step": 50, "split": split, "domain": "code", "loss": loss, "mtp_loss": mtp}
                                       for split, loss, mtp in (("train", 4.0, None), ("val", 5.5, 5.75))])
    write_table(run, "train_gates", [{"step": 50, "split": split, "layer": 1, "maxvio": mv, "bias_norm": None}
                                     for split, mv in (("train", 0.25), ("val", 0.125))])
    ref = data.RunRef("t", str(run), "train", "complete", {"model_args": {"n_layers": 3}})
    got = training_data.eval_metrics.uncached(ref).iloc[0]
    assert (got.val_loss_code, got.val_mtp_loss_code, got.val_maxvio_layer1) == (5.5, 5.75, 0.125)


def test_mtp_position_buckets_round_the_window_up_into_equal_buckets(tmp_path):
    from dashboards import data

    # seq_len 10 in 4 buckets: ceil(10 / 4) = 3 positions each, starting at 0, 3, 6, 9
    write_table(tmp_path / "r", "mtp", [{"seq_id": 0, "pos": p, "domain": "code", "mtp_top1": 1, "main_top1": 1,
                                         "target": 1, "mtp_loss": 0.5, "agree": True} for p in range(10)])
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete", {"options": {"seq_len": 10}})
    got = data.mtp_by_position.uncached(ref, 4)
    assert got.bucket.tolist() == [0, 3, 6, 9] and got.positions.tolist() == [3, 3, 3, 1]


def test_a_count_argument_below_its_least_is_a_value_error_naming_it(train_run):
    """pass_loads(ref, max_passes=0) and mtp_by_position(ref, 0) raised ZeroDivisionError; a negative
    max_passes read every pass, a negative last_steps summed no step, and a negative limit reached
    DuckDB's LIMIT as a Binder Error (a tour). Each names its argument; 0 stays valid where it is a
    size (an empty result) or total_loads' 'the whole run'."""
    from dashboards import data

    run, ref = train_run
    calls = {"max_passes": [lambda v: data.pass_loads.uncached(ref, v), lambda v: data.pass_stride(4, v)],
             "buckets": [lambda v: data.mtp_by_position.uncached(ref, v)]}
    for name, fns in calls.items():
        for fn in fns:
            for bad in (0, -1):
                with pytest.raises(ValueError, match=rf"^{name}={bad} must be at least 1$"):
                    fn(bad)
    sized = {"last_steps": lambda v: data.total_loads.uncached(ref, v),
             "limit": lambda v: data.expert_top_tokens.uncached(ref, 1, 0, v),
             "n": lambda v: data.token_snippets.uncached(ref, 1, 0, 5, v),
             "width": lambda v: data.token_snippets.uncached(ref, 1, 0, 5, 6, v),
             "max_tokens": lambda v: data.doc_tokens.uncached(ref, "d", 0, 1, v)}
    for name, fn in sized.items():
        with pytest.raises(ValueError, match=rf"^{name}=-1 must be at least 0$"):
            fn(-1)
    assert data.total_loads.uncached(ref, 0).equals(data.total_loads.uncached(ref))


def test_a_layer_the_run_does_not_have_is_refused_not_labelled(train_run):
    """layer_label(ref, 99) on a 3-layer run said 'MTP 96', and -1 'layer -1' (a tour): a ValueError
    naming the layer and the run's range. Without n_mtp_layers (an older run.json, this one) the run
    has ModelArgs' one MTP block; with it, as many as it says."""
    from dashboards import data

    run, ref = train_run
    for bad in (99, 4, -1):
        with pytest.raises(ValueError, match=rf"^layer {bad}: run t has layers 0 to 3 \(MTP 0 is layer 3\)$"):
            data.layer_label(ref, bad)
    no_mtp = data.RunRef("n", ref.path, "train", "complete", {"model_args": {"n_layers": 3, "n_mtp_layers": 0}})
    with pytest.raises(ValueError, match=r"^layer 3: run n has layers 0 to 2$"):
        data.layer_label(no_mtp, 3)
    assert data.layer_label(no_mtp, 2) == "layer 2"
    assert data.layer_label(data.RunRef("u", ref.path, "unknown", "complete", {}), 99) == "layer 99"  # no n_layers


def test_the_cached_queries_take_their_arguments_by_name_too(train_run):
    """`data.total_loads(ref, last_steps=2)` in a notebook was a TypeError of the caching wrapper
    ('call() got an unexpected keyword argument'), though the signature shown names last_steps."""
    from dashboards import data

    run, ref = train_run
    assert data.total_loads(ref, last_steps=2).equals(data.total_loads.uncached(ref, 2))
    assert not data.total_loads(ref, last_steps=2).equals(data.total_loads(ref))  # the argument is used
    steps, _, X = data.pass_loads(ref, max_passes=2)
    want_steps, _, want = data.pass_loads.uncached(ref, 2)
    assert steps.tolist() == want_steps.tolist() and len(steps) == 2 and np.array_equal(X, want)
    with pytest.raises(TypeError, match="total_loads.* unexpected keyword argument 'steps'"):
        data.total_loads(ref, steps=2)


def test_every_cached_query_is_cached_once_and_uncached_is_the_query():
    """`.uncached` is the query itself (the tests call it outside Streamlit): a function under two
    @cached had its inner cache as `.uncached`, and was cached twice, the outer cache keyed by the
    wrapper's name `cached.<locals>.call`, which a second such function would share."""
    from dashboards import data

    cached = [f for f in vars(data).values() if callable(f) and hasattr(f, "uncached")]
    assert data.pass_count in cached and len(cached) > 5
    assert [f.__name__ for f in cached if hasattr(f.uncached, "uncached")] == []
    assert all(f.uncached.__module__ == "dashboards.data" and f.uncached.__qualname__ == f.__name__ for f in cached)


def test_a_metric_error_names_each_run_where_its_path_ends_not_inside_a_longer_one(tmp_path):
    """runs/cap's path is a prefix of runs/capc's: the message named runs/capc as `cap`c (a tour)."""
    from analyses.metrics import MetricsError
    from dashboards import data, research

    a, b = (data.RunRef(n, str(tmp_path / n), "probe", "complete") for n in ("cap", "capc"))

    def fails():
        raise MetricsError(f"{a.path} and {b.path} hold different tokens; see {a.path}/tokens and {tmp_path}/cap.v2")

    with pytest.raises(data.MissingTable) as e:
        research.metric_call((a, b), "`routing`", fails)
    assert str(e.value) == f"`cap` and `capc` hold different tokens; see `cap`/tokens and {tmp_path}/cap.v2"
