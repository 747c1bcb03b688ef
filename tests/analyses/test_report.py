"""`python -m analyses.report`: every section on a small run, the ablation numbers come from the
ablation API, and what the report says of runs that lack something (its command line's refusals:
test_report_cli.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from helpers.analysis_runs import TOKENS, small_run
from helpers.cli_errors import assert_one_line_error
from analyses.report import __main__ as report
from analyses.report import ablation_sweep, masked_counts
from analyses.report.render import SECTIONS
from probe.speculative import SpecOptions, record_spec

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)  # the ablations run in this process: one thread is steady on a shared CPU


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return small_run(tmp_path_factory)


@pytest.mark.slow
def test_report_has_every_section(run_dir, tmp_path, capsys):
    from analyses.notebook_utils import compare_run

    out, findings = tmp_path / "r" / "report.html", tmp_path / "FINDINGS.md"
    # a copy of the run with `dsv3-probe spec`'s tables added (the Speculative decoding section's), the shared
    # run left as the other tests read it
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))
    record_spec(SpecOptions(ckpt=str(probe.open_run(run_dir).info["checkpoint"]["path"]),
                            corpus=str(probe.open_run(run_dir).info["corpus"]["path"]), out=str(run_dir),
                            prompt_tokens=12, new_tokens=10, max_prompts=4, batch_size=4, progress=False))
    # the same windows with the router bias removed: the run's first windows, a few per domain (run vs run
    # compares the windows both runs hold; the whole run took twice as long)
    other = compare_run(probe.open_run(run_dir), out=tmp_path / "no-bias", max_tokens=TOKENS // 2)
    t = time.perf_counter()
    # --importance-tokens: per domain, for importance (every routed expert removed in turn) and steering
    rc = report.main([str(run_dir), "--out", str(out), "--findings", str(findings), "--max-tokens", "600",
                      "--fractions", "1/8", "--seeds", "2", "--importance-tokens", "40", "--compare",
                      str(other.path), "--no-progress"])
    print(f"report: {time.perf_counter() - t:.1f} s")
    text = capsys.readouterr().out
    assert rc == 0
    doc = out.read_text()
    for sec in SECTIONS:
        assert f">{sec}</h2>" in doc
        assert f"## {sec}" in text  # every figure is printed as a table too
    # self-contained: plotly.js inlined exactly once, nothing fetched from a CDN
    from plotly.offline import get_plotlyjs

    assert doc.count(get_plotlyjs()[:300]) == 1 and "<script src=" not in doc
    assert doc.count('class="plotly-graph-div"') >= 12
    assert "(skipped" not in doc and "(not in this run" not in doc and "(not measured" not in doc
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, no temporary left
    md = findings.read_text()
    assert "python -m analyses.report" in md and "--max-tokens 600" in md
    for sec in ("Loss vs masked experts", "Per-domain ablation", "Consecutive-token repetition", "MTP agreement",
                "Speculative decoding", "Latent KV effective rank", "Causal vs observed importance", "Expert paths", "Token-id dependence",
                "Run vs run", "Steering"):
        assert f"## {sec}" in md
    for needle in ("Spearman(load share, loss delta)", "Speculative decoding with MTP drafts (", "Expert paths (top-1", "Token-id dependence (held-out",
                   "Run vs run (", "Steering (", "tokens scored: "):
        assert needle in md, needle  # a summary sentence per research section, with its numbers
    # the curve's numbers come from the run's ablations table, written by the ablation API
    rows = probe.open_run(run_dir).df("ablations")
    E = json.loads((run_dir / "run.json").read_text())["model_args"]["n_routed_experts"]
    assert {"top0", f"top{E // 8}", f"random{E // 8}-s0", f"random{E // 8}-s1"} <= set(rows.ablation)


@pytest.mark.slow  # 1.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_only_the_writing_rank_computes_the_table_sections(run_dir, monkeypatch):
    """Under torchrun every rank runs the model sections (ablations, importance, steering) together;
    the sections read from the run's tables alone are computed by the rank that writes (rank 0) only."""
    from analyses.report import render, research

    scans = []
    real = research.M.routes_from_run
    monkeypatch.setattr(research.M, "routes_from_run", lambda *a, **k: scans.append(1) or real(*a, **k))
    ns = report.parser().parse_args([str(run_dir), "--skip-ablation"])
    other = render.compute(run_dir, ns, writer=False)
    assert scans == [] and set(other) == {"run", "label", "skip_reason", "specialisation", "lift", "sweep"}
    assert other["lift"]  # steering picks its experts from it on every rank
    first = render.compute(run_dir, ns)
    assert scans == [1] and {"balance", "repetition", "paths", "token_dependence", "summary"} <= set(first)


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_loss_vs_masked_comes_from_the_ablation_api(run_dir):
    # 200 tokens (40 a domain): the top experts still move the loss; 1,000 took twice the CPU
    sw = ablation_sweep(run_dir, max_tokens=200, fractions=(1 / 8,), seeds=(0, 1))
    info = json.loads((run_dir / "run.json").read_text())["model_args"]
    E, moe = info["n_routed_experts"], info["n_layers"] - info["n_dense_layers"]
    c = sw.curve.set_index("masked")
    assert list(c.index) == masked_counts(E, (1 / 8,)) == [0, E // 8]
    assert c.loc[0, "top_loss"] == c.loc[0, "baseline_loss"] and c.loc[0, "top_delta"] == 0  # nothing masked
    pooled = sw.rows[sw.rows.domain == "all"].set_index("ablation")
    n = E // 8
    if f"top{n}" not in sw.skipped:
        assert pooled.loc[f"top{n}", "n_disabled"] == n * moe  # n experts in every MoE layer
        assert c.loc[n, "top_loss"] == pooled.loc[f"top{n}", "loss"] != c.loc[n, "baseline_loss"]
    rnd = [pooled.loc[f"random{n}-s{s}", "loss"] for s in (0, 1)]
    assert c.loc[n, "random_loss"] == pytest.approx(np.mean(rnd))
    assert c.loc[n, "random_seeds"] == 2
    # the per-domain table: one column per domain, each from that domain's own-top ablation
    doms = sorted(sw.rows.loc[sw.rows.domain != "all", "domain"].unique())
    assert list(sw.domains.columns) == doms == list(sw.domain_summary.domain)
    for d in doms:
        r = sw.rows[(sw.rows.ablation == f"own{sw.options['domain_top']}-{d}") & (sw.rows.domain == d)]
        assert sw.domains.loc[d, d] == pytest.approx(float(r.delta.iloc[0]))


@pytest.mark.slow  # 1.2 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_domain_top_out_of_range_is_refused_before_any_pass(run_dir, capsys, tmp_path):
    """--domain-top 99 on 32 experts ran the report with every per-domain selection refused by the
    routing guard, and the text said the run had fewer than two domains (a review)."""
    E = json.loads((run_dir / "run.json").read_text())["model_args"]["n_routed_experts"]
    with pytest.raises(ValueError, match=rf"--domain-top {E + 1}: .* 1..{E}"):
        ablation_sweep(run_dir, max_tokens=100, fractions=(1 / 8,), seeds=(0,), domain_top=E + 1)
    out = ["--out", str(tmp_path / "r.html")]
    assert_one_line_error(report.main([str(run_dir), "--domain-top", "0", *out]), capsys, "--domain-top 0: must be >= 1")
    assert_one_line_error(report.main([str(run_dir), "--domain-top", str(E + 1), *out]), capsys, f"--domain-top {E + 1}",
                          tmp_path / "r.html")


@pytest.mark.slow  # a command in a fresh process
def test_a_reader_that_stops_early_does_not_cost_the_files(run_dir, tmp_path):
    """`python -m analyses.report ... | head` printed the text before writing the files, caught the
    broken pipe as an OSError and exited 2 with neither file written (a review)."""
    import os
    import subprocess
    import sys

    html, md = tmp_path / "r.html", tmp_path / "r.md"
    # a reader gone before the first line (`| head -0`): reading a line and then closing, as `head -1` does,
    # raced the report's ~18 KB of text into the pipe's 64 KiB buffer, which a slow reader let it finish
    # (exit 0, once on a loaded machine); with no reader at all, every write fails, at any speed
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run([sys.executable, "-m", "analyses.report", str(run_dir), "--skip-ablation", "--no-progress",
                            "--importance-tokens", "0", "--out", str(html), "--findings", str(md)],
                           cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
                           env=os.environ | {"PYTHONPATH": str(REPO)})
    finally:
        os.close(write)
    err = p.stderr
    assert p.returncode == 141 and "error" not in err, err
    assert html.stat().st_size > 0 and md.stat().st_size > 0


@pytest.mark.slow  # 1.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_one_domain_run_is_reported_as_such(tmp_path, capsys):
    """Domain specialisation and the per-domain ablation need two domains: the report says so."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", domains=("code",))
    rc = report.main([str(tmp_path / "one"), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Domain specialisation: not measured, the run has one domain (code)" in text
    doc = (tmp_path / "r.html").read_text()
    assert doc.count("not measured: the run has one domain (code)") == 2  # specialisation, per-domain ablation
    assert "Lift P(domain | expert)" not in doc


def test_markdown_cells_keep_generated_text_on_one_row():
    """Generated continuations hold line breaks and pipes: the FINDINGS tables must not break."""
    import pandas as pd
    from analyses.report.render import md_table

    t = md_table(pd.DataFrame({"text": ["a\nb|c"], "x": [1.5]}))
    assert t.splitlines()[2] == "| a⏎b\\|c | 1.5000 |" and len(t.splitlines()) == 3


def test_markdown_cells_keep_a_token_texts_backslashes():
    """Markdown reads a backslash before punctuation as an escape: the token text of a code's own
    `\\x8a`, written `\\\\x8a` by token_texts, rendered as `\\x8a`, the escape of a byte that is no
    character, which token_texts writes apart from it. Each backslash is doubled in the cell."""
    import pandas as pd
    from analyses.report.render import md_table

    own, byte, pipe = "\\\\x8a", "\\xe5", "\\\\|"  # as token_texts writes them: text_of(quoted=True)
    t = md_table(pd.DataFrame({"token": [own, byte, pipe]}))
    assert t.splitlines()[2:] == ["| \\\\\\\\x8a |", "| \\\\xe5 |", "| \\\\\\\\\\| |"]


def test_the_run_label_fingerprints_the_weights_not_their_file_times(tmp_path):
    """The label names the checkpoint by its weights' contents: the same in a copy with other file
    times (a fresh clone), different when a weight changes."""
    import json
    import os
    import shutil

    from analyses.report import run_label

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(bytes(range(256)) * 20_000)  # 5 MB: head and tail both read
    runs = {}
    for name, path in (("a", ck), ("b", tmp_path / "copy")):
        if name == "b":
            shutil.copytree(ck, path)
            os.utime(path / "model.safetensors", (0, 0))
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"status": "complete", "checkpoint": {"path": str(path)}}))
        runs[name] = run_label(tmp_path / name)
    assert runs["a"].startswith(f"{ck} (weights ") and runs["a"].split()[-1] == runs["b"].split()[-1]
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-1] ^= 1  # the last byte: within the tail that is read
    (ck / "model.safetensors").write_bytes(bytes(data))
    assert run_label(tmp_path / "a").split()[-1] != runs["a"].split()[-1]


def test_path_sentences_without_held_out_figures():
    """Too few windows to hold some out gives NaN held-out accuracies; the report says so instead of
    failing on an argmax over NaN (pandas' "Encountered all NA values")."""
    import numpy as np
    import pandas as pd

    from analyses.report.research import _path_sentences

    units = ["layer 1", "layer 2", "path"]
    info = pd.DataFrame({"unit": units * 2, "target": ["top1"] * 3 + ["top4 set"] * 3,
                         "ami": [0.3, 0.5, 0.8, 0.6, 0.7, 0.9], "values": [32, 32, 900, 400, 380, 5000],
                         "heldout_accuracy": np.nan, "majority_baseline": np.nan})
    summary = pd.DataFrame({"domain": ["all"], "distinct_paths": [900], "perplexity": [300.0], "top10_share": [0.1]})
    text = " ".join(_path_sentences({"summary": summary, "information": info, "layers": [1, 2], "E": 32, "K": 4}))
    assert text.count("held-out domain accuracy not measured") == 2 and "AMI 0.900" in text and "nan" not in text
    # nothing held out: no held-out token to follow an unseen path (the sentence said "many" did)
    assert "5,000 distinct set paths." in text and "held-out tokens follow" not in text
    held = info.assign(heldout_accuracy=[0.6, 0.7, 0.8, 0.5, 0.6, 0.4], majority_baseline=0.5)
    text = " ".join(_path_sentences({"summary": summary, "information": held, "layers": [1, 2], "E": 32, "K": 4}))
    assert ("held-out domain accuracy 0.400 vs 0.600 (layer 2); 5,000 distinct set paths, so many held-out tokens "
            "follow a path never seen in training.") in text
    # the chart's title and axis name only the AMI bars it draws (they named the accuracy as well)
    from analyses.report.research import figures

    paths = {"information": info, "summary": summary, "common": summary}
    (title, fig, _, _), *_ = figures({"paths": paths})["Expert paths"]
    assert "held-out domain accuracy not measured" in title and fig.layout.yaxis.title.text == "AMI"
    assert [b.name for b in fig.data] == ["top1: ami", "top4 set: ami"]
    info["heldout_accuracy"] = [0.4, 0.5, 0.7, 0.5, 0.6, 0.8]
    (title, fig, _, _), *_ = figures({"paths": paths})["Expert paths"]
    assert title.endswith("and held-out domain accuracy") and fig.layout.yaxis.title.text == "AMI / accuracy"


def test_the_load_importance_verdict_reads_the_sign_and_the_counts():
    """|rho| classifies, a negative one is named so, and the verdict follows the counts (it called
    -0.85 'weak' and printed 'only partly' over three strong layers; found by a review)."""
    import pandas as pd

    from analyses.report.research import _load_predicts

    def verdict(rhos):
        return _load_predicts(pd.DataFrame({"spearman": rhos, "spearman_p": [0.001] * len(rhos)}))

    assert verdict([0.85, 0.75, 0.9]).startswith("load predicts causal importance well: rank correlation 3 strong")
    assert "1 strong, 2 strong negative" in verdict([-0.85, -0.75, 0.9])
    assert verdict([-0.85, 0.1]).startswith("load does not predict causal importance")
    assert verdict([0.61, 0.41, 0.5]).startswith("load predicts causal importance only partly: rank correlation "
                                                 "3 moderate")


def test_the_path_verdict_is_held_out_accuracy_with_ami_beside_it():
    from analyses.report.research import _path_verdict

    assert _path_verdict(True, True) == ("paths carry more domain information than any single layer's expert "
                                         "(held-out accuracy; AMI agrees).")
    assert _path_verdict(False, True).endswith("expert (held-out accuracy; AMI, which also charges the path for its "
                                               "many values, does not).")
    assert _path_verdict(True, False).startswith("paths do not carry more")
    assert _path_verdict(True, None).startswith("by AMI, paths carry more")


def test_run_notes_name_interrupted_runs_and_imports():
    """The report's opening notes: a run that is not complete, and an import whose model sections it
    leaves out (turning them off); a complete recorded run gets none."""
    from types import SimpleNamespace as NS

    from analyses.report.render import run_notes

    ns = NS(skip_ablation=False)
    assert run_notes(NS(path="r", status="complete", info={}, lost_tables=[]), ns) == [] and not ns.skip_ablation
    assert "is 'interrupted', not complete" in run_notes(NS(path="r", status="interrupted", info={}, lost_tables=[]),
                                                         ns)[0]
    notes = run_notes(NS(path="p", status="complete", info={"kind": "import", "source": {"name": "sglang"}},
                         lost_tables=[]), ns)
    assert "p is an import (sglang)" in notes[0] and ns.skip_ablation
    # the skipped sections say why in their place (they blamed --skip-ablation, not given; a review)
    from analyses.report import research
    from analyses.report.render import _missing

    r = {"skip_reason": ns.skip_reason, "sweep": None, "domains": ["a", "b"]}
    for sec in ("Loss vs masked experts", "Causal vs observed importance", "Steering"):
        got = _missing(sec, r) if sec == "Loss vs masked experts" else research.missing(sec, r)
        assert got == "(skipped: an import has no checkpoint or corpus to run the model on)", (sec, got)


def test_the_sweep_sentence_counts_measured_fractions_and_no_spread_of_one_seed():
    """A fraction refused as unroutable (NaN) counted in "at k of N fractions", and one seed printed
    "± 0.0000", a spread it never measured (found by a review)."""
    from types import SimpleNamespace

    import pandas as pd

    from analyses.report.render import _sweep_summary

    curve = pd.DataFrame({"masked": [0, 4, 32], "top_delta": [0.0, 0.05, np.nan],
                          "random_delta": [0.0, 0.01, np.nan], "random_delta_std": [np.nan, np.nan, np.nan],
                          "random_seeds": [0, 1, 0]})
    sw = SimpleNamespace(curve=curve, options={"rank_by": "eval", "tokens": 1000, "domain_tokens": 200,
                                               "n_experts": 32, "domain_top": 4},
                         domain_summary=pd.DataFrame(columns=["domain", "own", "on_others", "by_others",
                                                              "own_above_on_others_mean"]))
    first = _sweep_summary(sw)[0]
    assert "4/32 -> +0.0500 (random +0.0100, 1 seed)" in first and "±" not in first and "32/32" not in first
    assert first.endswith("top-used hurts more than random at 1 of 1 fractions.")
    curve.loc[1, ["random_delta_std", "random_seeds"]] = [0.002, 3]
    assert "(random +0.0100 ± 0.0020, 3 seeds)" in _sweep_summary(sw)[0]


def _research(run, **kw) -> dict:
    """The research sections computed from a run's tables, their summary and figures (no model run)."""
    from types import SimpleNamespace

    from analyses.report import research

    out = {"run": probe.open_run(run)}
    research.compute_tables(out["run"], SimpleNamespace(compare=None), out)
    return {"summary": research.summary(out), "figures": research.figures(out), **out}


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_too_few_windows_to_hold_out_is_not_measured_not_nan(tmp_path):
    """One window a domain (record --max-tokens 600): nothing left to train on, so every held-out
    accuracy is NaN. The summary printed `L1 nan (previous token nan, ...)` and the token-id chart drew
    six all-NaN bar series, the paths chart two (a review)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=2, seq_len=30)  # code and prose: one window each
    r = _research(tmp_path / "r")
    text = " ".join(r["summary"])
    assert "Token-id dependence (held-out windows, top-1 expert predicted by the token id alone): not measured (too " \
           "few windows to hold some out and train on the rest); vocabulary specialisation" in text
    assert "nan" not in text and "The whole top-k set" not in text
    [(_, fig, table, _)] = r["figures"]["Token-id dependence"]
    assert fig is None and table.token_id.isna().all()  # the table keeps the vocabulary specialisation
    path_fig = r["figures"]["Expert paths"][0][1]
    assert {b.name for b in path_fig.data} == {"top1: ami", "top2 set: ami"}  # no all-NaN accuracy bars


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_one_domain_leaves_out_the_path_information_figure(tmp_path):
    """One domain (a corpus of one .jsonl file, an SGLang per_token import): the summary said domain
    information is not measured, yet "Path vs single layer" drew four all-NaN series over an all-NaN
    table (a review)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", domains=("code",), n_seq=12)
    r = _research(tmp_path / "r")
    assert "Domain information: not measured (the run has one domain)." in r["summary"][0]
    titles = [t for t, *_ in r["figures"]["Expert paths"]]
    assert titles and not any(t.startswith("Path vs single layer") for t in titles)
    # nor the common paths' domain columns, the one domain and a share of 1 on every row
    assert list(_common_paths(r).columns) == ["path", "count", "share", "examples"]
    write_run(tmp_path / "two", domains=("code", "prose"), n_seq=12)  # the control: two domains draw it
    two = _research(tmp_path / "two")
    fig = two["figures"]["Expert paths"][0][1]
    assert fig is not None and len(fig.data) == 4
    assert list(_common_paths(two).columns) == ["path", "count", "share", "top_domain", "top_domain_share", "examples"]


def _common_paths(r: dict):
    """The report's table of the most common paths, from `_research`'s figures."""
    found = [t for title, _, t, _ in r["figures"]["Expert paths"] if title.startswith("The ten most common")]
    assert len(found) == 1
    return found[0]


def test_a_sweep_whose_every_masked_count_was_refused_says_not_measured():
    """--fractions 1 --seeds 1: the routing guard refused every masked count and the summary said
    `loss delta ; top-used hurts more than random at 0 of 0 fractions` (a review)."""
    from types import SimpleNamespace

    import pandas as pd

    from analyses.report.render import _sweep_summary

    curve = pd.DataFrame({"masked": [0, 32], "top_delta": [0.0, np.nan], "random_delta": [0.0, np.nan],
                          "random_delta_std": [np.nan, np.nan], "random_seeds": [0, 0], "run_top_delta": [0.0, np.nan]})
    sw = SimpleNamespace(curve=curve, options={"rank_by": "eval", "tokens": 297, "domain_tokens": 100,
                                               "n_experts": 32, "domain_top": 4},
                         domain_summary=pd.DataFrame(columns=["domain", "own", "on_others", "by_others",
                                                              "own_above_on_others_mean"]))
    s = _sweep_summary(sw)
    assert s[0] == ("Masking the most-used experts (ranked by load on the evaluated tokens; reroute, 297 tokens, at "
                    "most 100 per domain): not measured (the routing guard refused every selection; see the refused "
                    "selections).")
    assert not any("0 of 0" in x or "loss delta ;" in x for x in s)


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_report_shows_vocabulary_specialisation_as_the_dashboard_does_beside_its_baseline(tmp_path):
    """The report counted every id (min_count 1: an id seen once scores 1) and showed no baseline;
    the dashboard counts ids seen VOCAB_MIN_COUNT times and shows the shuffled baseline (a review)."""
    from analyses import metrics as M
    from analyses.metrics.specialisation import vocabulary_specialisation as vs
    from analyses.metrics.specialisation import vocabulary_specialisation_baseline as base
    from helpers.synthetic_run import write_run

    a = write_run(tmp_path / "r", n_seq=40, vocab=60)  # layer 1: first choice = token id % 8 (specialised)
    r = _research(tmp_path / "r")
    td = r["token_dependence"].set_index(["layer", "target"])
    seq, tok, n = a["seq"], a["token_id"], M.VOCAB_MIN_COUNT
    nxt = seq[1:] == seq[:-1]  # the token after each one in its window
    for layer in a["layers"]:
        e = a["ids"][layer][:, 0]
        row = td.loc[(layer, "top1")]
        assert row.vocab_spec_input == pytest.approx(vs(tok, e, n)) and row.vocab_spec_input_baseline == base(tok, e, n)
        assert row.vocab_spec_next == pytest.approx(vs(tok[1:][nxt], e[:-1][nxt], n))
        assert row.vocab_spec_next_baseline == base(tok[1:][nxt], e[:-1][nxt], n)
    x = td.loc[(1, "top1")]
    assert x.vocab_spec_input == 1.0 and x.vocab_spec_input_baseline < 0.5  # specialised: far above its baseline
    [line] = [s for s in r["summary"] if s.startswith("Token-id dependence")]
    assert (f"vocabulary specialisation input/next over the ids seen at least {n} times (no specialisation: the "
            "first choices shuffled across the same tokens): L1 1.000/") in line
    assert f"(no specialisation {x.vocab_spec_input_baseline:.3f}/{x.vocab_spec_next_baseline:.3f})" in line
    # the library's default is unchanged: every id counted (the rare ones too), no baseline columns
    plain = M.token_dependence_from_run(tmp_path / "r").set_index(["layer", "target"])
    assert "vocab_spec_input_baseline" not in plain
    assert plain.loc[(2, "top1"), "vocab_spec_input"] == pytest.approx(vs(tok, a["ids"][2][:, 0]))
    assert plain.loc[(2, "top1"), "vocab_spec_input"] > td.loc[(2, "top1"), "vocab_spec_input"] + 0.05


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_an_import_is_labelled_and_told_it_has_one_stream(tmp_path, capsys):
    """An SGLang import's header said `checkpoint ?` and its one-domain line advised recording a corpus
    with sub-folders, which an import cannot do (a review)."""
    from helpers import sglang_dumps as sg
    from probe.sglang import import_sglang

    passes = sg.traffic(seed=3)
    dumps = sg.write_per_token(tmp_path / "dumps", passes, sg.physical_map())[0].parent
    run = import_sglang(dumps, tmp_path / "run", config=str(sg.config(tmp_path / "model")))
    assert report.main([str(run), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == f"# Findings report: {run} — checkpoint none (imported from SGLang)"
    assert ("Domain specialisation: not measured, the run is imported serving traffic, one stream (sglang): domains "
            "are compared in a run recorded from a corpus of two or more (`dsv3-probe record`).") in text
    assert "sub-folder" not in text and "checkpoint ?" not in text


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_importance_scatter_has_its_own_table_of_every_expert(tmp_path, monkeypatch):
    """README: the report prints every figure as a table. The load share vs loss delta scatter was paired
    with the per-layer correlation table, and its per-expert points appeared nowhere (a review)."""
    from types import SimpleNamespace

    import pandas as pd

    import analyses.importance
    from analyses.report import research_model

    rng = np.random.default_rng(0)
    df = pd.DataFrame([{"layer": layer, "expert": e, "domain": d, "tokens": 100, "load": 10,
                        "load_share": rng.random(), "baseline_loss": 2.0, "loss": 2.1, "delta": rng.random()}
                       for layer in (1, 2) for e in range(6) for d in ("all", "code")])
    monkeypatch.setattr(analyses.importance, "importance", lambda opts: (opts.run, df))
    ns = SimpleNamespace(importance_tokens=100, progress=False, batch_size=None)
    figs = research_model.importance(SimpleNamespace(path=tmp_path), ns)["figures"]  # the measurement: `df`
    title, fig, table, _ = figs[0]
    assert title.startswith("Load share vs loss delta") and fig is not None
    want = df[df.domain == "all"][["layer", "expert", "load_share", "delta"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(table, want)
    assert "spearman" in figs[1][2] and figs[1][1] is None  # the correlation: an entry of its own


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_recorded_mtp_table_without_rows_is_told_from_a_missing_one(tmp_path, capsys):
    """record --max-tokens 1 makes the mtp table and no window gives it a row: the section said
    '(not in this run: the table was not recorded)', which reads as a record made with --no-mtp (a tour)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=2, seq_len=1)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": ["mtp"]}))
    (tmp_path / "r" / "mtp").mkdir()
    argv = [str(tmp_path / "r"), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"]
    assert report.main(argv) == 0
    doc = (tmp_path / "r.html").read_text()
    assert ("(not measured: the run recorded the mtp table, but none of its windows has a position with two more "
            "tokens after it") in doc and "the mtp table was not recorded" not in doc
    (tmp_path / "r" / "mtp").rmdir()  # recorded with --no-mtp: no folder, not listed
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": []}))
    assert report.main(argv) == 0
    assert "(not in this run: the mtp table was not recorded)" in (tmp_path / "r.html").read_text()


def test_one_domain_under_a_cap_within_the_first_window_is_told_to_record_more_tokens():
    """record --max-tokens 5 of the five-domain bundled corpus: one domain, and the report advised
    recording 'a corpus with two or more' and that --max-tokens takes tokens from every domain, which
    that record had done (a tour); the cap was within the first window."""
    from types import SimpleNamespace as NS

    from analyses.report.render import ONE_DOMAIN, _one_domain

    run = NS(info={"options": {"max_tokens": 5, "seq_len": 256, "order": "domains"}})
    assert _one_domain({"run": run, "domains": ["chinese"]}) == (
        "the run has one domain (chinese): it was recorded with --max-tokens 5, within the first window (--seq-len "
        "256), and each domain takes a window in turn; record with a --max-tokens over 256 from a corpus of two or "
        "more domains.")
    for opts in ({"max_tokens": 3000, "seq_len": 256, "order": "domains"},  # a cap past one window: one domain
                 {"max_tokens": None, "seq_len": 256, "order": "domains"}, {}):  # in the corpus, or unknown
        assert _one_domain({"run": NS(info={"options": opts}), "domains": ["code"]}) == ONE_DOMAIN.format("code")


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_findings_say_why_a_section_is_missing_as_the_html_does(tmp_path, capsys):
    """--findings left a section without numbers out, heading and all (a run without routing lost paths,
    probes and token-id dependence without a word), where the HTML says why in its place (a tour)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", domains=("code",))
    md = tmp_path / "f.md"
    assert report.main([str(tmp_path / "one"), "--out", str(tmp_path / "r.html"), "--findings", str(md),
                        "--skip-ablation", "--no-progress"]) == 0
    text = md.read_text()
    assert "## Domain specialisation\n\n(not measured: the run has one domain (code)" in text
    assert "## Loss vs masked experts\n\n(skipped: --skip-ablation)" in text
    assert "## Run vs run\n\n(not measured: pass --compare RUN" in text
    assert "## Load balance\n\nBalance metrics per MoE layer" in text  # a measured section: its tables


def test_a_section_without_its_table_names_the_record_flag_that_left_it_out():
    """A record of --router-logits none --no-kv-stats --no-mtp: every section without its table read
    '(not in this run: the table was not recorded)', which left the user to guess which table and why
    (a tour); the dashboard tells a run of --router-logits none to record with routing."""
    from types import SimpleNamespace as NS

    from analyses.report import research
    from analyses.report.render import _missing

    run = NS(info={"options": {"router_logits": "none", "kv_stats": False, "mtp": False}}, status="complete",
             path="nowhere", files=lambda t: [])
    r = {"run": run, "domains": ["a", "b"], "sweep": None}
    routing = ("(not in this run: the run was recorded with --router-logits none, which keeps no per-token routing; "
               "record it again with --router-logits topk (the default))")
    for sec in ("Consecutive-token repetition", "Expert paths", "Domain probes", "Token-id dependence"):
        got = _missing(sec, r) if sec.startswith("Consecutive") else research.missing(sec, r)
        assert got == routing, sec
    assert _missing("MTP agreement", r) == "(not in this run: the run was recorded with --no-mtp)"
    assert _missing("Latent KV effective rank", r) == "(not in this run: the run was recorded with --no-kv-stats)"
    run.info = {"options": {"mtp": True}, "mtp_module": False}  # a checkpoint without MTP weights
    assert _missing("MTP agreement", r) == "(not in this run: the checkpoint has no MTP weights)"
    run.info = {"kind": "import", "source": {"name": "sglang"}}
    assert _missing("Latent KV effective rank", r) == "(not in this run: an import (sglang) holds no kv_stats table)"
    run.info = {}  # nothing to say why: the table is named
    assert _missing("Latent KV effective rank", r) == "(not in this run: the kv_stats table was not recorded)"
