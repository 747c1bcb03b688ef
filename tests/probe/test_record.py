"""The record job: tables against direct computation, windows and corpora, bad input. (Interrupt,
resume and several processes: test_resume.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model
import probe
from probe.record import RecordError, RecordOptions, record
from probe.writer import RunError

from helpers.records import rec
from helpers.tables import sorted_df

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def full_run(probe_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    rec(probe_env, out, router_logits="full", sample=1.0)
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


def test_topk_run_has_null_scores_and_sampling_is_deterministic(probe_env, tmp_path):
    r1 = probe.open_run(rec(probe_env, tmp_path / "a", router_logits="full", sample=0.3, kv_stats=False, mtp=False))
    r2 = probe.open_run(rec(probe_env, tmp_path / "b", router_logits="full", sample=0.3, kv_stats=False,
                            mtp=False, batch_size=3))
    s1, s2 = sorted_df(r1, "routing"), sorted_df(r2, "routing")
    kept1, kept2 = s1.scores.notna(), s2.scores.notna()
    assert 0.2 < kept1.mean() < 0.4
    assert (kept1 == kept2).all()  # the same tokens whatever the batching
    r3 = probe.open_run(rec(probe_env, tmp_path / "c", router_logits="topk", kv_stats=False, mtp=False))
    assert r3.df("routing").scores.isna().all()
    assert set(r3.tables) == {"tokens", "routing", "expert_load", "router_bias"}
    r4 = probe.open_run(rec(probe_env, tmp_path / "d", router_logits="none", kv_stats=False, mtp=False))
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


# ------------------------------------------------------------------------ bad input
class Done:
    def __init__(self, code, err):
        self.returncode, self.stderr = code, err


def cli(*args, capsys=None):
    """`python -m probe ARGS`: in this process when `capsys` is given (the same main(), no
    interpreter start-up), else in a subprocess."""
    if "--seq-len" not in args:
        args = (*args, "--seq-len", "64")
    if capsys is not None:
        from probe.__main__ import main

        code = main(list(args))
        return Done(code, capsys.readouterr().err)
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=300)


def assert_one_line_error(p, *needles):
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    for n in needles:
        assert n in err, err


def test_bad_inputs_give_one_line_errors_and_write_nothing(probe_env, tmp_path, capsys):
    ck, corpus = str(probe_env["ckpt"]), str(probe_env["corpus"])
    out = tmp_path / "out"
    # the real command line once (a subprocess), then the same main() in this process
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", str(tmp_path / "nope"), "--out", str(out)),
                          "nope", "corpus not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", str(tmp_path / "empty"), "--out", str(out),
                              capsys=capsys), "has no files")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", str(tmp_path / "blank"), "--out", str(out),
                              "--no-bos", capsys=capsys), "no text")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--seq-len", "4096",
                              capsys=capsys), "--seq-len 4096", "max_seq_len 256")
    f = tmp_path / "afile"
    f.write_text("x")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(f / "run"), capsys=capsys),
                          "is a file")
    for extra in ([], ["--overwrite"]):  # the file itself: not "pass --overwrite", which could not help
        assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(f), *extra, capsys=capsys),
                              f"--out {f}: a file, not a run directory")
    assert_one_line_error(cli("record", "--ckpt", str(tmp_path), "--corpus", corpus, "--out", str(out),
                              capsys=capsys), "no config.json")
    assert_one_line_error(cli("record", "--ckpt", str(probe_env["ckpt"] / "config.json"), "--corpus", corpus,
                              "--out", str(out), capsys=capsys), "config.json: a file; pass the checkpoint directory")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--sample", "0.5",
                              capsys=capsys),
                          "--sample 0.5 thins the full router scores: it needs --router-logits full")
    from probe.__main__ import main as probe_main

    code = probe_main(["dashboard", str(tmp_path / "typo"), "--no-record"])
    assert_one_line_error(Done(code, capsys.readouterr().err), "typo: no such directory of runs")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--max-tokens", "0",
                              capsys=capsys), "--max-tokens 0")
    for n in ("0", "-3"):  # committed every batch, silently (a review)
        assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--commit-every", n,
                                  capsys=capsys), f"--commit-every {n}: must be >= 1")
    empty = tmp_path / "empty.txt"  # a document without a token: no BOS-only window, no "complete" run of 1 token
    empty.write_text("")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", str(empty), "--out", str(out), capsys=capsys),
                          "empty.txt: corpus has no text")
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--world-size", "2",
                              capsys=capsys), "use them with --dry-run")
    # a directory the OS refuses only when the run is created (procfs takes no new entries, even from root)
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", "/proc/dsv3-probe-run",
                              "--max-tokens", "64", capsys=capsys), "--out /proc/dsv3-probe-run: cannot create the run")
    assert not out.exists()


def test_vocab_mismatch_is_refused(probe_env, tmp_path):
    from helpers import make_tokenizer

    from tokenizers import Tokenizer

    big = make_tokenizer(probe_env["corpus"], tmp_path / "big.json")
    tok = Tokenizer.from_file(str(big))
    tok.add_tokens([f"<extra{i}>" for i in range(600 - tok.get_vocab_size())])
    tok.save(str(big))
    with pytest.raises(RecordError, match="600 tokens but the checkpoint's vocab_size is 512"):
        rec(probe_env, tmp_path / "o", tokenizer=str(big))
    assert not (tmp_path / "o").exists()


def test_existing_out_needs_a_flag(probe_env, tmp_path):
    out = rec(probe_env, tmp_path / "r", max_tokens=200, kv_stats=False)
    with pytest.raises(RecordError, match="exists: pass --overwrite"):
        rec(probe_env, out, max_tokens=200)
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "precious.txt").write_text("keep")
    with pytest.raises(RecordError, match="not a run directory"):
        rec(probe_env, tmp_path / "notrun", overwrite=True)
    assert (tmp_path / "notrun" / "precious.txt").exists()
    rec(probe_env, out, max_tokens=100, kv_stats=False, overwrite=True)
    assert probe.open_run(out).info["recorded"]["tokens"] == 100
    # reading back: a file, an unknown table or column is a RunError naming it (not an OSError or
    # Arrow's "No match for FieldRef")
    with pytest.raises(RunError, match="precious.txt: not a run directory"):
        probe.open_run(tmp_path / "notrun" / "precious.txt")
    run = probe.open_run(out)
    with pytest.raises(RunError, match=r"tokens: no column 'lost'; its columns are \['doc_id', "):
        run.df("tokens", columns=["loss", "lost"])
    with pytest.raises(RunError, match="unknown table 'token'"):
        run.df("token")
    assert list(run.df("tokens", columns=["loss"]).columns) == ["loss"]  # the control
    # SQL naming no table, and a run.json that is JSON but not an object: one line each (DuckDB's two
    # lines suggesting its own catalogue, and an AttributeError at the first repr; a review)
    with pytest.raises(RunError, match=r"r: Table with name nosuch does not exist!.*a run's tables are \['tokens'"):
        run.sql("select * from nosuch")
    assert run.sql("select count(*) from tokens").fetchall()[0][0] == 100
    import shutil

    bad = shutil.copytree(out, tmp_path / "bad")
    for text, kind in (("[]", "list"), ("null", "NoneType")):
        (bad / "run.json").write_text(text)
        with pytest.raises(RunError, match=rf"bad/run.json: unreadable \(a JSON {kind}, not an object\)"):
            probe.open_run(bad)


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


def test_readme_table_reference_is_generated_from_schema():
    """The README's run-table reference is `probe.schema.markdown()` verbatim (regenerate it when a
    column changes)."""
    import probe.schema as sch
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert sch.markdown() in readme, "README 'Run tables' is stale: paste probe.schema.markdown() there"


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

    from probe.record import _write_kv_tables
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
        _write_kv_tables(tmp_path, acc, args)
    stats = pq.read_table(tmp_path / "kv_stats").to_pandas().set_index("layer")
    assert stats.loc[0, "effective_rank"] > 1 and stats.loc[0, "energy90"] >= 1
    assert np.isnan(stats.loc[1, "effective_rank"]) and pd_isna(stats.loc[1, "energy90"])
    assert stats.loc[1, "tokens"] == 19
    spec = pq.read_table(tmp_path / "kv_spectrum").to_pandas()
    assert spec.layer.tolist() == [0, 0, 0, 0]


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def test_dry_run_refuses_the_devices_the_job_refuses(probe_env, tmp_path):
    """--dry-run planned any --device value as the CPU and exited 0, while the job refuses it (a
    review): a mistyped GPU passed the plan. cuda and cuda:N plan a GPU run from any machine."""
    from model.parallel import ParallelError
    from model.ranks import _pick_device
    from probe.plan import plan_device

    with pytest.raises(RecordError, match=r"--device 'cdua': choose cpu, cuda \(or cuda:N\) or auto"):
        record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "o"),
                             dry_run=True, device="cdua", max_tokens=200, progress=False))
    assert [plan_device(d) for d in ("cpu", "cuda", "cuda:3")] == ["cpu", "cuda", "cuda"]
    with pytest.raises(ParallelError, match=r"--device 'cudax': choose cpu"):  # it was torch's own error
        _pick_device("cudax")


def test_out_inside_the_corpus_and_a_symlinked_out_are_refused_before_anything_is_written(probe_env, tmp_path):
    """--out inside --corpus: the run was made, then its own Parquet files were read as documents, and
    --resume failed the same way; --overwrite of a symlink failed at rmtree, after the model load
    (a review). Both are refused up front now, and nothing is written."""
    import shutil

    corpus = Path(shutil.copytree(probe_env["corpus"], tmp_path / "corpus"))
    with pytest.raises(RecordError, match=r"lies inside --corpus .*, whose every file is read as a document"):
        rec(probe_env, corpus / "myrun", corpus=corpus, max_tokens=200)
    assert not (corpus / "myrun").exists()
    rec(probe_env, tmp_path / "r", max_tokens=200)
    (tmp_path / "link").symlink_to(tmp_path / "r")
    with pytest.raises(RecordError, match=r"--out .*link: a symbolic link .*pass the directory itself"):
        rec(probe_env, tmp_path / "link", max_tokens=200, overwrite=True)
    assert (tmp_path / "r" / "run.json").exists()


def test_overwrite_refuses_a_run_that_holds_the_jobs_own_inputs(probe_env, tmp_path):
    """Recording into a training run (its model at runs/NAME/model) with --overwrite deleted the model
    it was reading, and the new run.json named a checkpoint that no longer existed (a review)."""
    import shutil

    out = tmp_path / "train-run"
    rec(probe_env, out, max_tokens=200)
    ckpt = Path(shutil.copytree(probe_env["ckpt"], out / "model"))
    corpus = Path(shutil.copy(probe_env["corpus"], out / "texts.jsonl")) if Path(probe_env["corpus"]).is_file() \
        else Path(shutil.copytree(probe_env["corpus"], out / "texts"))
    inside = probe_env | {"ckpt": ckpt}
    for flag, env, kw in (("--ckpt", inside, {}), ("--corpus", probe_env, {"corpus": corpus}),
                          ("--tokenizer", probe_env, {"tokenizer": str(ckpt / "tokenizer.json")})):
        with pytest.raises(RecordError, match=rf"--out .*train-run: --overwrite would delete it, and {flag} "
                                              r".* lies inside it; write the run elsewhere"):
            rec(env, out, max_tokens=200, overwrite=True, **kw)
        assert (ckpt / "config.json").exists() and corpus.exists()
    rec(probe_env, out, max_tokens=200, overwrite=True)  # the control: inputs elsewhere, the run is replaced
    assert not ckpt.exists()


def test_resume_keeps_other_commands_tables_and_takes_an_explicit_default_dtype(probe_env, tmp_path):
    """A resume replaced run.json's table list with its own (an ablation's table dropped out of it),
    and refused --dtype float32 for a run recorded without --dtype, saying '--dtype None' (a review)."""
    import json

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=200)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"tables": info["tables"] + ["ablations"], "status": "interrupted"}))
    rec(probe_env, out, max_tokens=200, resume=True, dtype="float32")
    assert "ablations" in json.loads((out / "run.json").read_text())["tables"]
    with pytest.raises(RecordError, match=r"--dtype float32, this command gives bfloat16"):  # the control
        rec(probe_env, out, max_tokens=200, resume=True, dtype="bfloat16")


def test_a_run_read_while_it_is_written_sees_each_call_what_is_on_disk(tmp_path):
    """A Run's SQL views were a snapshot of the parts its first query saw: a part committed later was
    in `df` but not in `sql`, a table appearing later stayed empty (a metric on the Run said so), a
    removed part was an IO error, and `status` never changed (a review)."""
    import json
    import shutil

    from helpers.synthetic_run import write_run

    src = tmp_path / "src"
    write_run(src)
    live = tmp_path / "live"
    shutil.copytree(src, live, ignore=shutil.ignore_patterns("expert_load"))
    parts = sorted((live / "tokens").glob("*.parquet"))
    held = parts[-1].rename(tmp_path / parts[-1].name)  # one part not committed yet
    run = probe.open_run(live)
    count = lambda: run.sql("select count(*) from tokens").fetchall()[0][0]  # noqa: E731
    first = count()
    held.rename(parts[-1])  # committed now
    assert count() == len(run.df("tokens")) > first
    assert run.sql("select count(*) from expert_load").fetchall()[0][0] == 0
    shutil.copytree(src / "expert_load", live / "expert_load")  # a table that appears later
    from analyses.metrics import balance_table

    assert run.sql("select count(*) from expert_load").fetchall()[0][0] == len(run.df("expert_load")) > 0
    assert len(balance_table(run))
    parts[0].unlink()  # a part removed (a resume truncating, an overwrite)
    assert count() == len(run.df("tokens"))
    info = json.loads((live / "run.json").read_text())
    (live / "run.json").write_text(json.dumps(info | {"status": "running"}))
    assert run.status == "running" and run.info["status"] == "running"


def test_a_full_disk_at_the_last_commit_marks_the_run_interrupted_with_no_table_half_committed(
        probe_env, tmp_path, monkeypatch):
    """`ulimit -f` hit at the final commit left run.json "running" for good (the commit sat outside
    the batches' error handling) with a half-written temporary file, and a failing commit left the
    tables renamed before it visible without the rest (a review)."""
    import json

    from probe.writer import PartWriter

    real = PartWriter._flush

    def full(self, table):
        if table == "expert_load":  # the third table: tokens and routing were already written out
            raise OSError(27, "File too large")
        real(self, table)

    monkeypatch.setattr(PartWriter, "_flush", full)
    out = tmp_path / "r"
    with pytest.raises(OSError, match="File too large"):
        rec(probe_env, out, max_tokens=300, commit_every=1000)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert not list(out.glob("*/r000-b*.parquet")), list(out.glob("*/r000-b*.parquet"))  # all or none
    monkeypatch.setattr(PartWriter, "_flush", real)
    rec(probe_env, out, max_tokens=300, commit_every=1000, resume=True)  # and it resumes to the end
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_second_record_into_a_run_being_recorded_is_refused(probe_env, tmp_path):
    """Two `record --resume` of one run at once shared their temporary part names, committed each
    other's rows (batches 15-16 lost, 17-18 twice) and a later --resume marked that complete (a
    review). The job holding the run's writer lock is the only one let in; a lock left by a
    finished or killed job is free (the process's end releases it)."""
    import json

    from probe.writer import WRITER_LOCK, writer_lock

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=300)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    with writer_lock(out):  # another process's job, as far as flock is concerned (its own open file)
        for kw in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RecordError, match=rf"another process is recording into this run \(it holds "
                                                  rf"{WRITER_LOCK}\)"):
                rec(probe_env, out, max_tokens=300, **kw)
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"  # untouched
    rec(probe_env, out, max_tokens=300, overwrite=True)  # the control: released, it goes ahead
    assert (out / WRITER_LOCK).exists() and json.loads((out / "run.json").read_text())["status"] == "complete"


def test_records_closing_run_json_update_keeps_what_other_jobs_note_meanwhile(probe_env, tmp_path):
    """record's last run.json write read and rewrote the file without the lock the other jobs take to
    note their parts: 23 of 300 entries noted meanwhile were lost (a review)."""
    import json
    import threading
    from types import SimpleNamespace

    from probe.record import finish
    from probe.writer import updating_run_json

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=200)
    n = 150
    world = SimpleNamespace(size=1, model_parallel=1)
    args = SimpleNamespace(n_layers=2, kv_lora_rank=8)
    opts = SimpleNamespace(kv_stats=False)

    def closing():
        for _ in range(n):
            finish(out, {}, "interrupted", opts, args, world, 1.0)

    def noting():
        for i in range(n):
            with updating_run_json(out) as info:
                info.setdefault("ablation_parts", {})[f"p{i}"] = {}

    threads = [threading.Thread(target=closing), threading.Thread(target=noting)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads((out / "run.json").read_text())["ablation_parts"]) == n


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
    from probe.corpus import Window
    from probe.recorders import Batch, Recorder

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
