"""The record job: tables against direct computation, windows and corpora. (Bad input and refusals:
test_record_refusals.py; run integrity: test_record_integrity.py; interrupt, resume and several
processes: test_resume.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model
import probe
from probe.record import RecordOptions, record

from helpers.records import rec
from helpers.tables import sorted_df


@pytest.fixture(scope="module")
def full_run(probe_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    # 1,280 tokens, 20 windows of both domains (a batch holds both): the whole corpus, ~5,300 tokens in 90
    # windows, cost 2.3x the CPU here and in `direct`, which runs each window alone
    rec(probe_env, out, router_logits="full", sample=1.0, max_tokens=1280)
    return probe.open_run(out)


@pytest.fixture(scope="module")
def direct(probe_env, full_run):
    """Each recorded window run alone through run_with_cache."""
    m = model.load(probe_env["ckpt"], dtype=torch.float32)
    toks = full_run.df("tokens").sort_values(["seq_id", "pos"])
    out = {}
    for seq_id, g in toks.groupby("seq_id"):
        x = torch.tensor(g.token_id.to_numpy(), dtype=torch.long)[None]
        with torch.no_grad():
            (logits, mtp_logits), cache = m.run_with_cache(x, mtp=True)
        out[seq_id] = (x[0], logits[0], mtp_logits[0], cache)
    return m, out


def test_every_table_written(full_run):
    assert full_run.status == "complete"
    assert set(full_run.tables) == {"tokens", "routing", "expert_load", "mtp", "kv_stats", "kv_spectrum", "router_bias"}
    info = full_run.info
    assert info["recorded"]["tokens"] == info["planned"]["tokens"] == len(full_run.df("tokens"))
    assert info["planned"]["tokens_per_domain"].keys() == {"code", "prose"}
    assert info["cpu_gemm"]["path"] in ("onednn", "linear") and info["cpu_gemm"]["reason"]  # model/gemm.py's choice
    assert isinstance(info["cpu_gemm"]["experts"], dict)  # the experts' choices by shape, where any was made
    packed = info["cpu_gemm"]["packed_weight_bytes"]  # the frozen weights' oneDNN copies (model/frozen.py)
    assert isinstance(packed, int) and (packed == 0 if info["cpu_gemm"]["path"] == "linear" else packed >= 0)
    # what the plan is held to: load time and resident memory per rank (bytes)
    (mem,) = info["memory"]["per_rank"]
    assert mem["rank"] == 0 and info["timings"]["load_s"] == mem["load_s"] > 0
    assert 0 < mem["before_load"] <= mem["peak_rss"] and 0 < mem["after_load"] <= mem["peak_rss"]


def test_expert_load_equals_counts_from_routing(full_run):
    from_routing = full_run.sql("""
        select r.layer, e as expert, t.domain, count(*) as n
        from (select seq_id, pos, layer, unnest(expert_ids) as e from routing) r
        join tokens t using (seq_id, pos) group by all""").df()
    loads = full_run.sql("select layer, expert, domain, sum(count) as n from expert_load group by all").df()
    merged = loads.merge(from_routing, on=["layer", "expert", "domain"], how="left", suffixes=("", "_r"))
    merged["n_r"] = merged["n_r"].fillna(0)
    assert (merged.n == merged.n_r).all()
    assert merged.n.sum() == len(full_run.df("tokens")) * 4 * 2  # K=4, 2 MoE layers


def test_expert_load_weight_sums_and_tokens_are_the_domains(full_run):
    """expert_load's weight_sum and tokens were never checked: each domain's row could carry the sum
    over every domain of the batch, or the batch's token count, unnoticed (a review). By hand from
    routing and tokens: the gate weights summed per (layer, domain, expert), and per domain the
    tokens of its rows summed over the batches = its tokens in the run."""
    el = full_run.df("expert_load")
    # precondition: some batch holds both domains, else the per-domain and per-batch values agree
    assert el.groupby("step").domain.nunique().max() == 2
    toks = full_run.df("tokens")[["seq_id", "pos", "domain"]]
    r = full_run.df("routing").merge(toks, on=["seq_id", "pos"])
    ids, w = np.stack(r.expert_ids.to_numpy()), np.stack(r.expert_weights.to_numpy()).astype(np.float64)
    K = ids.shape[1]
    flat = pd.DataFrame({"layer": np.repeat(r.layer.to_numpy(), K), "domain": np.repeat(r.domain.to_numpy(), K),
                         "expert": ids.reshape(-1), "w": w.reshape(-1)})
    want = flat.groupby(["layer", "domain", "expert"]).w.sum()
    got = el.groupby(["layer", "domain", "expert"]).weight_sum.sum()
    assert want.index.isin(got.index).all()  # experts no token chose: rows of weight 0
    np.testing.assert_allclose(got.to_numpy(), want.reindex(got.index, fill_value=0.0).to_numpy(), rtol=1e-5)
    # tokens: one value per (step, layer, domain), the same on every expert's row
    per = el.groupby(["step", "layer", "domain"]).tokens
    assert (per.nunique() == 1).all()
    tok_sum = per.first().groupby(["layer", "domain"]).sum()
    n_dom = toks.domain.value_counts()
    for (layer, dom), n in tok_sum.items():
        assert n == n_dom[dom], (layer, dom)


def test_routing_matches_run_with_cache(full_run, direct):
    _, d = direct
    r = full_run.df("routing").sort_values(["layer", "seq_id", "pos"])
    same = total = 0
    for (layer, seq_id), g in r.groupby(["layer", "seq_id"]):
        cache = d[seq_id][3]
        pre = f"layers.{layer}.ffn.gate."
        pos = torch.from_numpy(g.pos.to_numpy().copy())
        ids = cache[pre + "hook_topk_ids"][pos].numpy()
        got_ids = np.stack(g.expert_ids.to_numpy())
        ok = (np.sort(ids, 1) == np.sort(got_ids, 1)).all(1)
        same, total = same + ok.sum(), total + len(ok)
        np.testing.assert_array_equal(ids[ok], got_ids[ok])  # same order too
        np.testing.assert_allclose(cache[pre + "hook_topk_weights"][pos].numpy()[ok],
                                   np.stack(g.expert_weights.to_numpy())[ok], rtol=1e-4)
        np.testing.assert_allclose(cache[pre + "hook_scores"][pos].numpy(), np.stack(g.scores.to_numpy()),
                                   rtol=1e-4, atol=1e-6)
    print(f"routing rows identical to run_with_cache: {same}/{total}")
    assert same / total >= 0.999


def test_margins(full_run, direct):
    _, d = direct
    row = full_run.df("routing").iloc[5]
    allowed = d[row.seq_id][3][f"layers.{row.layer}.ffn.gate.hook_allowed_scores"][row.pos]
    top = allowed.topk(5).values
    assert row.margin_k == pytest.approx(float(top[3] - top[4]), abs=1e-5)
    assert row.margin_1 == pytest.approx(float(top[0] - top[4]), abs=1e-5)


def test_token_loss_equals_direct(full_run, direct):
    _, d = direct
    toks = full_run.df("tokens")
    for seq_id, g in toks.groupby("seq_id"):
        x, logits, _, _ = d[seq_id]
        want = torch.nn.functional.cross_entropy(logits[:-1], x[1:], reduction="none").numpy()
        got = g.sort_values("pos").loss.to_numpy()
        assert np.isnan(got[0])
        np.testing.assert_allclose(got[1:], want, rtol=1e-4, atol=1e-5)


def test_mtp_table_equals_direct(full_run, direct):
    _, d = direct
    mt = full_run.df("mtp")
    assert (mt.agree == (mt.mtp_top1 == mt.main_top1)).all()
    for seq_id, g in list(mt.groupby("seq_id"))[:5]:
        x, logits, mtp_logits, _ = d[seq_id]
        g = g.sort_values("pos")
        n = len(x)
        assert len(g) == n - 1
        np.testing.assert_array_equal(g.mtp_top1, mtp_logits.argmax(-1).numpy())
        np.testing.assert_array_equal(g.main_top1, logits[1:].argmax(-1).numpy())
        want = torch.nn.functional.cross_entropy(mtp_logits[:-1], x[2:], reduction="none").numpy()
        np.testing.assert_allclose(g.mtp_loss.to_numpy()[:-1], want, rtol=1e-4, atol=1e-5)
        assert np.isnan(g.mtp_loss.to_numpy()[-1])


def test_router_bias_is_the_checkpoints(full_run, direct):
    m, _ = direct
    rb = full_run.df("router_bias")
    assert (rb.step == 0).all() and sorted(rb.layer.unique()) == [1, 2, 3]  # two MoE layers, then the MTP block
    gates = {1: m.layers[1].ffn.gate, 2: m.layers[2].ffn.gate, 3: m.mtp[0].block.ffn.gate}
    for layer, gate in gates.items():
        got = rb[rb.layer == layer].sort_values("expert").bias.to_numpy()
        np.testing.assert_array_equal(got, gate.bias.numpy())
        assert np.abs(got).max() > 0  # the test checkpoint's biases are not zero


def test_kv_stats_equal_direct_computation(full_run, direct):
    m, d = direct
    ks = full_run.df("kv_stats").set_index("layer")
    spec = full_run.df("kv_spectrum")
    for layer in range(m.args.n_layers):
        c = torch.cat([v[3][f"layers.{layer}.attn.hook_c_kv"][0] for v in d.values()]).double()
        kpe = torch.cat([v[3][f"layers.{layer}.attn.hook_k_pe"][0] for v in d.values()]).double()
        row = ks.loc[layer]
        assert row.tokens == len(c)
        np.testing.assert_allclose(row.channel_mean, c.mean(0).numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(row.channel_var, c.var(0, unbiased=False).numpy(), rtol=1e-5, atol=1e-9)
        assert row.latent_norm_mean == pytest.approx(c.norm(dim=-1).mean().item(), rel=1e-6)
        assert row.k_pe_norm_max == pytest.approx(kpe.norm(dim=-1).max().item(), rel=1e-6)
        cov = torch.cov(c.T, correction=0)
        eig = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0).numpy()
        got = spec[spec.layer == layer].sort_values("component").eigenvalue.to_numpy()
        np.testing.assert_allclose(got, eig, rtol=1e-6, atol=1e-9)
        p = eig / eig.sum()
        p = p[p > 0]
        assert row.effective_rank == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
        assert row.energy90 == int(np.searchsorted(np.cumsum(eig) / eig.sum(), 0.9 - 1e-12) + 1)
        a = m.args
        assert row.bytes_absorb == (a.kv_lora_rank + a.qk_rope_head_dim) * 4


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_topk_run_has_null_scores_and_sampling_is_deterministic(probe_env, tmp_path):
    # 640 tokens: ten 64-token windows, batched by 4 and by 3 (the whole corpus, ~5,300 tokens, cost 4x more)
    few = dict(kv_stats=False, mtp=False, max_tokens=640)
    r1 = probe.open_run(rec(probe_env, tmp_path / "a", router_logits="full", sample=0.3, **few))
    r2 = probe.open_run(rec(probe_env, tmp_path / "b", router_logits="full", sample=0.3, batch_size=3, **few))
    s1, s2 = sorted_df(r1, "routing"), sorted_df(r2, "routing")
    kept1, kept2 = s1.scores.notna(), s2.scores.notna()
    assert 0.2 < kept1.mean() < 0.4
    assert (kept1 == kept2).all()  # the same tokens whatever the batching
    r3 = probe.open_run(rec(probe_env, tmp_path / "c", router_logits="topk", **few))
    assert r3.df("routing").scores.isna().all()
    assert set(r3.tables) == {"tokens", "routing", "expert_load", "router_bias"}
    r4 = probe.open_run(rec(probe_env, tmp_path / "d", router_logits="none", **few))
    assert "routing" not in r4.tables and "expert_load" in r4.tables


def test_windows_and_max_tokens(probe_env, tmp_path):
    run = probe.open_run(rec(probe_env, tmp_path / "w", seq_len=16, max_tokens=300, kv_stats=False, mtp=False))
    t = run.df("tokens")
    assert len(t) == 300
    assert t.pos.max() == 15
    # windows of one document continue its positions
    doc = t[t.doc_id == t.doc_id.iloc[0]].sort_values("doc_pos")
    assert (doc.doc_pos.diff().dropna() == 1).all()
    assert (doc.groupby("seq_id").pos.min() == 0).all()


def test_default_window_is_the_models_training_length(probe_env, tmp_path):
    from probe.record import default_seq_len

    a = model.ModelArgs.from_hf_config(probe_env["ckpt"])
    assert default_seq_len(dataclasses.replace(a, original_seq_len=256, max_seq_len=1024)) == 256
    assert default_seq_len(dataclasses.replace(a, original_seq_len=4096, max_seq_len=163840)) == 512
    assert default_seq_len(dataclasses.replace(a, original_seq_len=4096, max_seq_len=100)) == 100
    out = record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "d"),
                               max_tokens=200, kv_stats=False, mtp=False, progress=False))
    want = default_seq_len(a)
    assert json.loads((out / "run.json").read_text())["options"]["seq_len"] == want
    assert probe.open_run(out).df("tokens").pos.max() == min(want, 200) - 1


def test_jsonl_and_parquet_corpora(probe_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"text": "def f(x): return x", "domain": "code", "id": "a"},
            {"text": "the fox sleeps", "domain": "prose", "id": "b"}, {"text": "the dog", "id": "c"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "c.parquet")
    for f in ("c.jsonl", "c.parquet"):
        t = probe.open_run(rec(probe_env, tmp_path / f"run_{f}", corpus=tmp_path / f, kv_stats=False)).df("tokens")
        assert set(t.doc_id) == {"a", "b", "c"}
        assert dict(t.groupby("doc_id").domain.first()) == {"a": "code", "b": "prose", "c": "default"}


def test_non_utf8_bytes_are_replaced_and_counted(probe_env, tmp_path):
    c = tmp_path / "c"
    (c / "x").mkdir(parents=True)
    (c / "x" / "a.txt").write_bytes(b"the fox \xff\xfe jumps \xc3")
    run = probe.open_run(rec(probe_env, tmp_path / "r", corpus=c, kv_stats=False))
    assert run.info["corpus"]["replaced_bytes"] == 3
    assert run.info["corpus"]["files_with_replacements"] == ["x/a.txt"]


def test_a_router_without_a_bias_lists_no_router_bias_table(probe_env, tmp_path):
    """A softmax router (DeepSeek-V2's) has no balancing bias: run.json listed a router_bias table that
    was never written, which the dashboard reads as lost files (found by a review)."""
    import shutil

    from helpers import random_model

    ckpt = tmp_path / "v2"
    model.save(random_model("tiny", model_type="deepseek_v2", score_func="softmax", norm_topk_prob=False), ckpt)
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", ckpt)
    out = tmp_path / "run"
    run = probe.open_run(record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), out=str(out),
                                              seq_len=32, max_tokens=200, progress=False)))
    assert run.status == "complete" and "routing" in run.info["tables"]
    assert "router_bias" not in run.info["tables"] and not (out / "router_bias").exists()


def test_table_reference_is_generated_from_schema_and_the_readme_indexes_every_table():
    """docs/run-tables.md is `probe.schema.markdown()` verbatim (regenerate it when a column changes),
    and the README's "Run tables" index links each table of the schema once, in the schema's order."""
    import re

    import probe.schema as sch
    root = Path(__file__).resolve().parents[2]
    reference = (root / "docs" / "run-tables.md").read_text()
    assert sch.markdown() in reference, "docs/run-tables.md is stale: paste probe.schema.markdown() there"
    readme = (root / "README.md").read_text()
    index = readme[readme.index("### Run tables"):readme.index("## Analyses")]
    linked = re.findall(r"^\| \[`(\w+)`\]\(docs/run-tables\.md#(\w+)\) \|", index, re.M)
    assert linked == [(t, t) for t in sch.TABLES]
    anchors = re.findall(r"^## `(\w+)`$", reference, re.M)  # GitHub's anchor of "## `name`" is #name
    assert anchors == list(sch.TABLES)


def test_dry_run_counts_the_packed_copy_of_float32_cpu_weights(probe_env, tmp_path, capsys):
    """The jobs pack a copy of float32 CPU weights for oneDNN (probe.job.packing_fits); the plan left
    it out and came to half the measured peak (found by a review: 0.65 GB planned, 1.35 GB measured,
    0.57 GB of it packed). Checked against the loaded model's own float32 parameters."""
    import torch

    import model
    from probe.job import packed_copy_bytes
    from probe.plan import dry_run
    from probe.record import prepare

    def plan(dtype):
        opts = RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "o"),
                             dry_run=True, dtype=dtype, max_tokens=200, seq_len=32, progress=False)
        return dry_run(prepare(opts), opts)

    m = model.load(probe_env["ckpt"], dtype=torch.float32)
    want = sum(p.numel() * 4 for p in m.parameters())
    p = plan("float32")
    assert p["weights"]["packed_bytes"] == want > 0
    assert p["per_rank"] == (p["weights"]["per_rank_bytes"] + p["weights"]["absorb_dense_bytes"] + want
                             + p["activations"]["peak"])
    assert "packed for oneDNN" in capsys.readouterr().out
    # in bfloat16 only the routers stay float32: that little, as packing_fits counts it
    b16 = model.load(probe_env["ckpt"], dtype=torch.bfloat16)
    routers = sum(p.numel() * 4 for p in b16.parameters() if p.dtype == torch.float32)
    assert plan("bfloat16")["weights"]["packed_bytes"] == routers < want // 50
    assert packed_copy_bytes(want, available=2 * want) == want and packed_copy_bytes(want, available=want) == 0


def test_non_finite_latents_leave_their_layer_empty_not_the_run_unfinished(tmp_path):
    """A NaN in one layer's latents (a diverged checkpoint) made `summarise`'s eigen-decomposition
    raise at the end of the record, and run.json stayed "running" (found by a review). That layer now
    gets a NaN effective rank, empty energy counts and no spectrum rows, with a warning naming it."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from probe.record_tables import write_kv_tables
    from probe.stats import KVAccumulator

    acc = KVAccumulator([0, 1], 4)
    g = torch.Generator().manual_seed(0)
    for i in (0, 1):
        acc.add(i, torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g))
    bad = torch.randn(3, 4, generator=g)
    bad[1, 2] = float("nan")
    acc.add(1, bad, torch.randn(3, 2, generator=g))
    args = SimpleNamespace(dtype="float32", kv_lora_rank=4, qk_rope_head_dim=2, n_heads=2, qk_head_dim=6,
                           v_head_dim=4, dim=8)
    with pytest.warns(UserWarning, match="layer 1's latent c_kv held NaN or inf"):
        write_kv_tables(tmp_path, acc, args)
    stats = pq.read_table(tmp_path / "kv_stats").to_pandas().set_index("layer")
    assert stats.loc[0, "effective_rank"] > 1 and stats.loc[0, "energy90"] >= 1
    assert np.isnan(stats.loc[1, "effective_rank"]) and pd_isna(stats.loc[1, "energy90"])
    assert stats.loc[1, "tokens"] == 19
    spec = pq.read_table(tmp_path / "kv_spectrum").to_pandas()
    assert spec.layer.tolist() == [0, 0, 0, 0]


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def test_kv_norm_std_min_max_survive_the_merge_of_accumulators():
    """kv_stats' latent and k_pe norm std and min were never checked: the job always merges the
    accumulators it saved (one per replica, and across a resume), and a merge that dropped the sums
    of squares left every std 0, a min read from the max went unnoticed too (a review). Expected:
    numpy's population std, min and max of the row norms of both parts together."""
    from probe.stats import KVAccumulator, summarise

    g = torch.Generator().manual_seed(1)
    parts = [(torch.randn(7, 4, generator=g) * 2 + 1, torch.randn(7, 2, generator=g)),
             (torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g) * 3)]
    acc = KVAccumulator([0], 4)
    for c, k in parts:  # as record's finish(): each saved state loaded, then merged into an empty one
        one = KVAccumulator([0], 4)
        one.add(0, c, k)
        other = KVAccumulator([0], 4)
        other.load_state(one.state())
        acc.merge(other)
    stats, _ = summarise(acc, {})
    assert stats["tokens"] == [12]
    for key, i in (("latent", 0), ("k_pe", 1)):
        norms = np.linalg.norm(np.concatenate([p[i].double().numpy() for p in parts]), axis=1)
        assert stats[f"{key}_norm_mean"][0] == pytest.approx(norms.mean(), rel=1e-9)
        assert stats[f"{key}_norm_std"][0] == pytest.approx(norms.std(), rel=1e-6)
        assert stats[f"{key}_norm_min"][0] == pytest.approx(norms.min(), rel=1e-9)
        assert stats[f"{key}_norm_max"][0] == pytest.approx(norms.max(), rel=1e-9)
    # by hand: latent norms 5, 1, 3 -> mean 3, std sqrt(8/3)
    acc = KVAccumulator([0], 2)
    acc.add(0, torch.tensor([[3.0, 4.0], [0.0, 1.0], [3.0, 0.0]]), torch.zeros(3, 1))
    stats, _ = summarise(acc, {})
    assert (stats["latent_norm_mean"], stats["latent_norm_min"], stats["latent_norm_max"]) == ([3.0], [1.0], [5.0])
    assert stats["latent_norm_std"][0] == pytest.approx(np.sqrt(8 / 3), rel=1e-12)


def test_mtp_rows_of_a_short_window_padded_in_its_batch():
    """A window shorter than its batch's longest (a document's last window) has its own n - 1 mtp
    rows, and its last row no target and no loss: measured against the batch's padded length, its
    padding became rows, and its last row a loss against the padding token 0 (a review). Synthetic
    head statistics; expected rows written out by hand."""
    from probe.recorders import Batch, Recorder
    from probe.windows import Window

    b = Batch(0, [Window(7, "d0", "x", 0, np.array([10, 11, 12, 13, 14], np.int32)),
                  Window(8, "d1", "y", 32, np.array([20, 21, 22], np.int32))])
    top1 = torch.tensor([[100, 101, 102, 103, 104], [200, 201, 202, 0, 0]])  # main argmax at each position
    mtp_nll = torch.tensor([[0.5, 1.5, 2.5, 3.5], [4.5, 5.5, 6.5, 7.5]])  # [B, S-1]: prediction of token i+2
    mtp_top1 = torch.tensor([[101, 9, 103, 9], [201, 9, 9, 9]])
    rows = Recorder._mtp(None, b, top1, (mtp_nll, mtp_top1))  # uses nothing of the recorder itself
    got = {k: (v.to_pylist() if hasattr(v, "to_pylist") else list(v)) for k, v in rows.items()}
    assert got["seq_id"] == [7, 7, 7, 7, 8, 8]
    assert got["pos"] == [0, 1, 2, 3, 0, 1]
    assert got["domain"] == ["x"] * 4 + ["y"] * 2
    assert got["main_top1"] == [101, 102, 103, 104, 201, 202]
    assert got["mtp_top1"] == [101, 9, 103, 9, 201, 9]
    assert got["agree"] == [True, False, True, False, True, False]
    assert got["target"] == [12, 13, 14, None, 22, None]
    assert got["mtp_loss"] == [0.5, 1.5, 2.5, None, 4.5, None]


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_dry_runs_table_sizes_follow_each_tables_own_rows():
    """--dry-run measured every table on routing's sample, which shrinks as its rows widen: with
    --router-logits full expert_load came out 15x larger, and a larger --batch-size (fewer expert_load
    rows per token: one set a batch) changed nothing (a review)."""
    from probe.plan import table_bytes_per_token
    from probe.record import RecordOptions

    args = model.ModelArgs.from_name("671B")
    topk, full = (table_bytes_per_token(args, RecordOptions(router_logits=r, seq_len=256), mtp=True)
                  for r in ("topk", "full"))
    for t in ("tokens", "expert_load", "mtp"):  # the same rows whatever --router-logits says
        assert full[t] == pytest.approx(topk[t], rel=0.02), t
    assert full["routing"] > 10 * topk["routing"]  # 256 scores a row instead of none
    wide = table_bytes_per_token(args, RecordOptions(seq_len=256, batch_size=32), mtp=True)
    assert wide["expert_load"] == pytest.approx(topk["expert_load"] / 4, rel=0.1)  # batch 32 instead of 8


def test_a_dry_run_says_which_domains_a_cap_leaves_out(probe_env, tmp_path, capsys):
    """The corpus notes (a cap below one window per domain, skipped files) were printed by the record
    alone: the plan for the same command said nothing (a review)."""
    from probe.__main__ import main

    for dom in ("alpha", "beta", "gamma"):
        (tmp_path / "c" / dom).mkdir(parents=True)
        (tmp_path / "c" / dom / "d.txt").write_text(f"{dom} words " * 40)
    argv = ["record", "--dry-run", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(tmp_path / "c"),
            "--out", str(tmp_path / "run"), "--seq-len", "16"]
    assert main([*argv, "--max-tokens", "20"]) == 0
    err = capsys.readouterr().err
    assert "note: --max-tokens 20 left 1 of 3 domains without a token (gamma)" in err, err
    assert main([*argv, "--max-tokens", "48"]) == 0  # the control: a window each
    assert "without a token" not in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_record_names_the_documents_without_a_token(probe_env, tmp_path, capsys):
    """A domain folder holding only an empty file left the run without a word: run.json counted its
    document, the tokens table and run.json's domains had none of it. The note names it and run.json's
    corpus.empty_documents lists it."""
    (tmp_path / "c" / "alpha").mkdir(parents=True)
    (tmp_path / "c" / "alpha" / "d.txt").write_text("alpha words " * 20)
    (tmp_path / "c" / "blank").mkdir()
    (tmp_path / "c" / "blank" / "e.txt").write_text("")
    rec(probe_env, tmp_path / "run", corpus=tmp_path / "c")
    assert "note: 1 document(s) without a token left out (blank/e.txt)" in capsys.readouterr().err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["corpus"]["documents"], info["corpus"]["empty_documents"], info["domains"]) == \
        (2, ["blank/e.txt"], ["alpha"])
    assert set(probe.open_run(tmp_path / "run").df("tokens").doc_id) == {"alpha/d.txt"}


def test_spectrum_summary_by_hand():
    """Effective rank exp(-sum p ln p) and the fewest components holding 90/95/99% of the variance
    (docs/metrics.md), by hand: [9, 1] holds exactly 90% in one component; zero eigenvalues add nothing
    (0 ln 0 = 0); a spectrum with no variance has rank 0 and no components; any order."""
    from probe.stats import spectrum_summary

    s = spectrum_summary(np.array([1.0, 9.0]))
    assert (s["energy90"], s["energy95"], s["energy99"]) == (1, 2, 2)
    assert s["effective_rank"] == pytest.approx(np.exp(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1))), rel=1e-12)
    s = spectrum_summary(np.array([2.0, 0.0, 2.0, 0.0]))
    assert s["effective_rank"] == pytest.approx(2.0, rel=1e-12) and (s["energy90"], s["energy99"]) == (2, 2)
    assert spectrum_summary(np.zeros(3)) == {"effective_rank": 0.0, "energy90": 0, "energy95": 0, "energy99": 0}


def test_router_score_sampling_is_drawn_per_token():
    # --sample keeps a fraction of tokens: every position keeps about that fraction of its sequences (a hash
    # of the position alone keeps a position in every window or in none), and every sequence of its positions
    from probe.recorders import sample_mask

    seq, pos = np.repeat(np.arange(500), 8), np.tile(np.arange(8), 500)
    keep = sample_mask(seq, pos, 0.3).reshape(500, 8)
    assert ((keep.mean(0) > 0.2) & (keep.mean(0) < 0.4)).all()
    assert 0.25 < keep.mean() < 0.35
    assert sample_mask(seq, pos, 1.0).all()
    # neighbours are kept together about as often as independent draws would be (fraction squared): the
    # first hash stepped by the golden ratio along a window and never kept two adjacent tokens below 0.38
    for f in (0.1, 0.3):
        keep = sample_mask(seq, pos, f).reshape(500, 8)
        both = (keep[:, 1:] & keep[:, :-1]).mean()
        assert 0.6 * f * f < both < 1.4 * f * f, (f, both)


def test_expert_load_rows_are_the_batchs_domains_counted_by_hand():
    """One batch's expert_load: a row per (MoE layer, expert) for each domain with tokens in the batch (a
    domain the recorder met in an earlier batch gets none), its top-k count, gate weight sum and tokens.
    Synthetic captures, E=4, K=2; by hand: domain a's tokens chose {0,1} and {0,3}, c's {1,2}."""
    from types import SimpleNamespace

    import pandas as pd

    from probe.recorders import Recorder

    g = "layers.1.ffn.gate."
    ids = torch.tensor([[0, 1], [1, 2], [0, 3], [3, 3]])  # the last token is padding: not in vidx
    w = torch.tensor([[0.5, 0.25], [1.0, 2.0], [0.125, 0.75], [9.0, 9.0]])
    fake = SimpleNamespace(E=4, domains=["a", "b", "c"], moe_layers=[1],
                           _cap={g + "hook_topk_ids": ids, g + "hook_topk_weights": w})
    df = pd.DataFrame(Recorder._loads(fake, 7, torch.tensor([0, 1, 2]), np.array([0, 2, 0])))
    assert sorted(set(df.domain)) == ["a", "c"] and len(df) == 8
    assert (df.step == 7).all() and (df.layer == 1).all()
    a, c = (df[df.domain == d].sort_values("expert") for d in ("a", "c"))
    assert a["count"].tolist() == [2, 1, 0, 1] and c["count"].tolist() == [0, 1, 1, 0]
    assert a.weight_sum.tolist() == [0.625, 0.25, 0.0, 0.75] and c.weight_sum.tolist() == [0.0, 1.0, 2.0, 0.0]
    assert set(a.tokens) == {2} and set(c.tokens) == {1}


def test_kv_norm_min_and_max_span_every_batch_added():
    # one accumulator over several batches (the record adds one per batch): by hand, latent norms 5 then 1
    # then 3 -> min 1, max 5; k_pe norms 2, 0, 4 -> min 0, max 4
    from probe.stats import KVAccumulator, summarise

    acc = KVAccumulator([0], 2)
    for c, k in (([3.0, 4.0], [2.0]), ([0.0, 1.0], [0.0]), ([3.0, 0.0], [-4.0])):
        acc.add(0, torch.tensor([c]), torch.tensor([k]))
    stats, _ = summarise(acc, {})
    assert (stats["latent_norm_min"], stats["latent_norm_max"]) == ([1.0], [5.0])
    assert (stats["k_pe_norm_min"], stats["k_pe_norm_max"]) == ([0.0], [4.0])
