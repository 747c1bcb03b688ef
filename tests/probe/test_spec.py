"""`dsv3-probe spec`: MTP speculative-decoding acceptance recorded into a run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import model
import probe
from helpers.cli_errors import unwritable_msg, unwritable_out
from helpers.models import make_corpus
from probe.__main__ import main as cli_main
from probe.corpus import CorpusError
from probe.record import RecordError
from probe.speculative import SpecOptions, record_spec, spec_prompts


def test_spec_tables_match_a_direct_generate_call(probe_env, tmp_path):
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]),
                                  out=str(tmp_path / "spec"), prompt_tokens=12, new_tokens=10, max_prompts=6,
                                  batch_size=4, progress=False))
    run = probe.open_run(out)
    assert {"spec_decode", "spec_drafts"} <= set(run.tables)
    dec = run.df("spec_decode")
    drafts = run.df("spec_drafts")
    assert len(dec) == 6 and set(dec.domain) == {"code", "prose"}  # round-robin over domains
    assert (dec.prompt_tokens == 12).all()
    # the same prompts through generate() directly (one batch, another batch size): same counts
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(probe_env["ckpt"] / "tokenizer.json"))
    m = model.load(probe_env["ckpt"], dtype=torch.float32)
    prompts = spec_prompts(probe_env["corpus"], tok, m.args.bos_token_id, 12, 6)
    assert [p[0] for p in prompts] == list(dec.doc_id)
    from generate import generate

    with torch.no_grad():
        res = generate(m, [p for _, _, p in prompts], max_new_tokens=10, stop_ids=[m.args.eos_token_id], mtp=True)
    assert list(dec.new_tokens) == [len(t) for t in res.tokens]
    assert list(dec.drafts_proposed) == [sum(x) for x in res.drafts_proposed]
    assert list(dec.drafts_accepted) == [sum(x) for x in res.drafts_accepted]
    # per-draft rows add up to the per-prompt counts
    assert len(drafts) == dec.drafts_proposed.sum()
    assert drafts.accepted.sum() == dec.drafts_accepted.sum()
    assert drafts.position.between(1, 9).all()  # the first new token comes from the prefill, undrafted
    summary = run.info["spec_decode"]
    assert summary["drafts_proposed"] == dec.drafts_proposed.sum()
    proposed, accepted = sum(map(sum, res.drafts_proposed)), sum(map(sum, res.drafts_accepted))
    assert summary["mean_acceptance_length"] == pytest.approx(1 + accepted / proposed)
    print(f"random tiny model: acceptance {summary['acceptance_rate']}, "
          f"{summary['generated']} tokens in {summary['forward_passes']} passes")


@pytest.mark.slow  # 1.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_each_draft_is_the_mtp_guess_of_the_greedy_token_two_ahead(tmp_path):
    """spec_drafts against a computation that shares no decode loop with spec: the prompts continued by plain
    greedy decoding, the MTP module run once over each whole sequence (row i, from h_i and token i+1, guesses
    token i+2), and the drafting walked by hand: the first draft is for generated token 1 (token 0 comes from
    the prefill), an accepted draft also yields the main model's token after it, so the next draft is two
    further on, a rejected one only one; no draft once the row is done. The bundled model, whose MTP module is
    trained: the random test model's drafts are all rejected, which leaves the accepted branch unwalked."""
    from tokenizers import Tokenizer

    from generate import generate
    from probe.job import DEFAULT_CKPT, DEFAULT_CORPUS

    out = record_spec(SpecOptions(out=str(tmp_path / "spec"), prompt_tokens=16, new_tokens=12, max_prompts=5,
                                  batch_size=3, progress=False))
    run = probe.open_run(out)
    dec, drafts = run.df("spec_decode"), run.df("spec_drafts")
    m = model.load(DEFAULT_CKPT, dtype=torch.float32)
    tok = Tokenizer.from_file(str(DEFAULT_CKPT / "tokenizer.json"))
    want, want_rows = [], []
    for doc_id, domain, p in spec_prompts(DEFAULT_CORPUS, tok, m.args.bos_token_id, 16, 5):
        with torch.no_grad():
            g = generate(m, [p], max_new_tokens=12, stop_ids=[m.args.eos_token_id]).tokens[0]
            seq = torch.tensor([p + g])
            _, h = m(seq, return_hidden=True)
            guess = m.mtp_logits(h, seq)[0].argmax(-1).tolist()  # guess[i]: token i+2 of seq
        j, n, mine = 1, len(p), []
        while j < len(g):
            ok = guess[n + j - 2] == g[j]
            mine.append((doc_id, domain, j, guess[n + j - 2], ok))
            j += 2 if ok else 1
        want_rows += mine
        want.append((doc_id, len(g), 1 + len(mine), len(mine), sum(r[4] for r in mine)))
    got = list(zip(drafts.doc_id, drafts.domain, drafts.position, drafts.token, drafts.accepted))
    assert got == want_rows
    assert list(zip(dec.doc_id, dec.new_tokens, dec.forward_passes, dec.drafts_proposed, dec.drafts_accepted)) == want
    assert {r[4] for r in want_rows} == {True, False}  # both branches walked


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_spec_adds_to_a_recorded_run_and_refuses_to_clobber(probe_env, tmp_path, capsys):
    from probe.record import RecordOptions, record

    run_dir = tmp_path / "rec"
    record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(run_dir),
                         max_tokens=200, seq_len=32, progress=False))
    argv = ["spec", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out", str(run_dir),
            "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2", "--no-progress"]
    assert cli_main(argv) == 0
    assert "MTP draft acceptance" in capsys.readouterr().out
    run = probe.open_run(run_dir)
    assert {"tokens", "routing", "spec_decode"} <= set(run.tables) and run.status == "complete"
    # run.json lists them (the dashboard's health check reads that list; spec left them out, a review)
    assert {"tokens", "spec_decode", "spec_drafts"} <= set(run.info["tables"])
    assert cli_main(argv) == 2  # the tables exist: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0
    # without --ckpt and --corpus, spec runs the run's own model on its own corpus (not the bundled
    # ones, found by a review) and says which in run.json
    assert cli_main(["spec", "--out", str(run_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
                     "--no-progress", "--overwrite"]) == 0
    summary = probe.open_run(run_dir).info["spec_decode"]
    assert summary["corpus"] == str(probe_env["corpus"].resolve()) and summary["checkpoint"] == str(probe_env["ckpt"].resolve())
    assert set(summary["prompts_per_domain"]) <= {"code", "prose"}
    # the run's model or corpus moved or changed: refused, not the bundled ones in their place (the
    # tables would have described another model on another corpus, found by a review)
    short = ["spec", "--out", str(run_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
             "--no-progress", "--overwrite"]
    info = json.loads((run_dir / "run.json").read_text())
    for key, value, needle in (("checkpoint", {"path": str(tmp_path / "gone")}, "the run's checkpoint .*gone is no "
                                "longer there; pass --ckpt"),
                               ("checkpoint", info["checkpoint"] | {"fingerprint": "0" * 64}, "has changed since the "
                                "run was recorded"),
                               # the same layout, other weights (e.g. the no-router-bias variant put in its place)
                               ("checkpoint", info["checkpoint"] | {"sample": "0" * 64}, "has changed since the "
                                "run was recorded"),
                               ("corpus", {"path": str(tmp_path / "gone.jsonl")}, "the run's corpus .*gone.jsonl is no "
                                "longer there; pass --corpus")):
        (run_dir / "run.json").write_text(json.dumps(info | {key: value}))
        capsys.readouterr()
        assert cli_main(short) == 2
        err = capsys.readouterr().err
        assert re.search(needle, err) and err.count("\n") == 1, err
    (run_dir / "run.json").write_text(json.dumps(info | {"checkpoint": {"path": str(tmp_path / "gone")}}))
    assert cli_main(short + ["--ckpt", str(probe_env["ckpt"])]) == 0  # the flag names it: taken


def test_a_run_still_being_recorded_is_refused(probe_env, tmp_path, capsys):
    """spec adds its tables to a run; into one whose record is still writing (run.json says running),
    the record's commits would have gone on beside spec's, as ablate, importance and steer refuse such
    a run as their input (left alone by an earlier session, taken up by the next). A record that was
    killed gets the advice to --resume it."""
    from probe.record import RecordOptions, record
    from probe.writer import writer_lock

    run_dir = tmp_path / "rec"
    record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(run_dir),
                         max_tokens=100, seq_len=32, progress=False))
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(info | {"status": "running"}))
    argv = ["spec", "--out", str(run_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
            "--no-progress"]
    capsys.readouterr()
    assert cli_main(argv) == 2  # no record holds its lock: killed
    err = capsys.readouterr().err
    assert "its record stopped before the end" in err and "--resume" in err and err.count("\n") == 1, err
    # a record holding the run: its writer lock held through an open file of its own, as another
    # process's (flock locks an open file, not a process)
    with writer_lock(run_dir):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert f"{run_dir}: the run is still being recorded (status running)" in err and err.count("\n") == 1, err
    assert "spec_decode" not in probe.open_run(run_dir).tables  # nothing written by the refused runs
    (run_dir / "run.json").write_text(json.dumps(info))  # control: the finished run takes spec's tables
    assert cli_main(argv) == 0 and "spec_decode" in probe.open_run(run_dir).tables


@pytest.mark.parametrize("kw, msg", [
    (dict(prompt_tokens=500, new_tokens=100), "max_seq_len"),
    # the flag that is out of range, with its value, as the other commands say it (spec named all three)
    (dict(new_tokens=0), "^--new-tokens 0: must be >= 1$"),
    (dict(prompt_tokens=-2), "^--prompt-tokens -2: must be >= 1$"),
    # every prompt was the BOS alone, whatever its document, and the run was written without a word
    (dict(prompt_tokens=1), r"^--prompt-tokens 1: must be >= 2 \(BOS included: a prompt of 1 token is the model's "
                            r"BOS alone, the same for every document\)$"),
    (dict(batch_size=0), "^--batch-size 0: must be >= 1$"),
    (dict(prompt_tokens=200, new_tokens=8, corpus="short.txt"), "no document has 200 tokens"),
    # a path the user typed is named with its flag (both said only "PATH: ...")
    (dict(corpus="nope.jsonl"), "^--corpus .*nope.jsonl: corpus not found$"),
    (dict(tokenizer="short.txt"), "^--tokenizer .*short.txt: not a tokenizers JSON file"),
])
def test_spec_bad_input(probe_env, tmp_path, kw, msg):
    (tmp_path / "short.txt").write_text("a short text")
    if "tokenizer" in kw:
        kw["tokenizer"] = str(tmp_path / kw["tokenizer"])
    corpus = str(tmp_path / kw.pop("corpus")) if "corpus" in kw else str(probe_env["corpus"])
    opts = SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=corpus, out=str(tmp_path / "s"), progress=False, **kw)
    with pytest.raises((RecordError, CorpusError), match=msg):
        record_spec(opts)


def test_ctrl_c_is_one_line_and_writes_nothing(probe_env, tmp_path, capsys, monkeypatch):
    import probe.speculative as spec

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(spec, "record_spec", interrupted)
    assert cli_main(["spec", "--out", str(tmp_path / "s"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: nothing was written to" in err and "Traceback" not in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_an_overwrite_stopped_while_writing_leaves_the_run_as_it_was(probe_env, tmp_path, monkeypatch, stop):
    """spec deleted a table's old part before writing the new one, table by table: a Ctrl-C (or a
    full disk) at the second table left the new spec_decode, no spec_drafts and the old summary,
    and said nothing was written (found by a review). Both tables are now written first, then
    renamed with run.json's summary."""
    import probe.speculative as spec

    out = tmp_path / "run"
    kw = dict(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(out), prompt_tokens=8,
              new_tokens=4, progress=False)
    record_spec(SpecOptions(max_prompts=3, **kw))
    files = lambda: {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    real, calls = spec.pq.write_table, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise stop(28, "No space left on device") if stop is OSError else stop()
        return real(*a, **k)

    monkeypatch.setattr(spec.pq, "write_table", failing)
    with pytest.raises(RecordError if stop is OSError else stop):  # an OSError: the one-line "cannot write"
        record_spec(SpecOptions(max_prompts=2, overwrite=True, **kw))
    assert files() == before  # both tables, the summary, and no temporary file left
    monkeypatch.setattr(spec.pq, "write_table", real)
    record_spec(SpecOptions(max_prompts=2, overwrite=True, **kw))  # the control: it does replace them
    run = probe.open_run(out)
    assert run.info["spec_decode"]["prompts"] == len(run.df("spec_decode")) == 2


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_a_sigterm_while_the_tables_are_renamed_waits_for_the_summary(probe_env, tmp_path, monkeypatch, signum):
    """The renames and run.json's summary held off Ctrl-C but not SIGTERM (a scheduler's timeout,
    torchrun stopping a rank) nor SIGHUP (a closed terminal), whose default ends the process where it
    stands: one between the renames left the new spec_decode beside the old spec_drafts and the old
    summary (found by a tour). The handler here notes the run as a killed process would leave it."""
    import signal

    signum = getattr(signal, signum)
    import probe.speculative as spec

    out = tmp_path / "run"
    kw = dict(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(out), prompt_tokens=8,
              new_tokens=4, progress=False)
    record_spec(SpecOptions(max_prompts=3, **kw))
    left = []

    def killed(signum, frame):
        run = probe.open_run(out)
        left.append((run.info["spec_decode"]["prompts"], len(run.df("spec_decode")),
                     run.df("spec_drafts").doc_id.nunique()))
        raise KeyboardInterrupt("terminated")

    real_replace, calls = spec.os.replace, []

    def replace(src, dst):
        real_replace(src, dst)
        calls.append(Path(dst).parent.name)  # the tables' renames, then run.json's
        if len(calls) == 1:
            signal.raise_signal(signum)

    previous = signal.signal(signum, killed)
    try:
        monkeypatch.setattr(spec.os, "replace", replace)
        record_spec(SpecOptions(max_prompts=2, overwrite=True, **kw))
    finally:
        signal.signal(signum, previous)
    assert calls[:2] == ["spec_decode", "spec_drafts"] and left == [(2, 2, 2)]  # delivered once all were in


def test_binary_files_are_skipped_with_a_note(probe_env, tmp_path, capsys):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(probe_env["corpus"], corpus)
    domain = next(p for p in sorted(corpus.iterdir()) if p.is_dir())
    (domain / "w.bin").write_bytes(b"\x00\x01\x02" * 100)
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(corpus), out=str(tmp_path / "run"),
                                  prompt_tokens=8, new_tokens=4, max_prompts=2, progress=False))
    assert "note: 1 binary file(s) in the corpus skipped" in capsys.readouterr().err
    assert probe.open_run(out).info["spec_decode"]["skipped_binary_files"] == [f"{domain.name}/w.bin"]


def test_a_domain_without_a_long_enough_document_is_named(probe_env, tmp_path, capsys):
    """A domain whose documents are all shorter than --prompt-tokens gave no prompt, silently (a review)."""
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(probe_env["corpus"], corpus)
    (corpus / "tiny").mkdir()
    (corpus / "tiny" / "a.txt").write_text("hi")
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(corpus), out=str(tmp_path / "run"),
                                  prompt_tokens=8, new_tokens=4, max_prompts=4, progress=False))
    assert "note: no document of tiny has 8 tokens for a prompt (--prompt-tokens)" in capsys.readouterr().err
    assert "tiny" not in probe.open_run(out).info["spec_decode"]["prompts_per_domain"]


def test_a_cap_below_one_prompt_per_domain_names_the_domains_it_left_out(probe_env, tmp_path, capsys):
    """A cap smaller than the domains kept the first ones by name and left the rest out of the run without a
    word, while the README said a cap keeps every domain (a tour): the note names them and the flag that capped."""
    argv = ["spec", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out",
            str(tmp_path / "s"), "--prompt-tokens", "8", "--new-tokens", "4", "--no-progress"]
    assert cli_main(argv + ["--max-prompts", "1"]) == 0
    err = capsys.readouterr().err
    assert ("note: --max-prompts 1 left 1 of 2 domains without a prompt (prose): prompts are taken round robin over "
            "the domains in name order; pass a --max-prompts of at least 2 to cover every domain") in err, err
    assert probe.open_run(tmp_path / "s").info["spec_decode"]["prompts_per_domain"] == {"code": 1}
    assert cli_main(argv + ["--max-tokens", "23", "--overwrite"]) == 0  # 23 // 12: one prompt
    err = capsys.readouterr().err
    assert ("note: --max-tokens 23 left 1 of 2 domains without a prompt (prose): prompts are taken round robin over "
            "the domains in name order; pass a --max-tokens of at least 24 to cover every domain") in err, err
    assert cli_main(argv + ["--max-tokens", "12", "--max-prompts", "1", "--overwrite"]) == 0  # both caps bind
    err = capsys.readouterr().err
    assert ("note: --max-prompts 1 and --max-tokens 12 left 1 of 2 domains without a prompt (prose): prompts are taken "
            "round robin over the domains in name order; pass a --max-prompts of at least 2 and a --max-tokens of at "
            "least 24 to cover every domain") in err, err
    assert cli_main(argv + ["--max-prompts", "2", "--overwrite"]) == 0  # control: one prompt a domain, no note
    assert "note" not in capsys.readouterr().err


def test_max_prompts_below_zero_is_one_line(tmp_path, capsys):
    """-1 said "must be >= 1" while 0 is taken ("every document"; a review)."""
    assert cli_main(["spec", "--out", str(tmp_path / "o"), "--max-prompts", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --max-prompts -1: must be >= 0 (0 = every document)\n" and not (tmp_path / "o").exists()


def test_spec_needs_mtp_weights(tmp_path, probe_env):
    import shutil

    ck = tmp_path / "nomtp"
    shutil.copytree(probe_env["ckpt"], ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["num_nextn_predict_layers"] = 0
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecordError, match="no MTP"):
        record_spec(SpecOptions(ckpt=str(ck), corpus=str(probe_env["corpus"]), out=str(tmp_path / "s"),
                                progress=False))


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_token_budget_takes_prompts_round_robin_over_domains(probe_env, tmp_path, capsys):
    """--max-tokens N: N // (prompt + new tokens) prompts, round robin over the domains, with no default
    --max-prompts cap on top; run.json's summary counts prompts and tokens per domain; with both caps the
    smaller wins; a budget below one prompt is a one-line error naming the flag."""
    out = tmp_path / "s"
    argv = ["spec", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out", str(out),
            "--prompt-tokens", "8", "--new-tokens", "4", "--batch-size", "4", "--no-progress"]
    assert cli_main(argv + ["--max-tokens", "59"]) == 0  # 59 // 12 = 4 prompts
    run = probe.open_run(out)
    s, dec = run.info["spec_decode"], run.df("spec_decode")
    assert s["prompts"] == len(dec) == 4 and s["max_tokens"] == 59 and s["max_prompts"] is None
    assert s["prompts_per_domain"] == {"code": 2, "prose": 2}
    assert s["tokens_per_domain"] == {d: int((g.prompt_tokens + g.new_tokens).sum()) for d, g in dec.groupby("domain")}
    # more documents than --max-prompts' default of 64: a budget alone is not capped by it
    big = make_corpus(tmp_path / "big", docs_per_domain=40)
    bos = model.ModelArgs.from_hf_config(probe_env["ckpt"]).bos_token_id
    n_docs = len(spec_prompts(big, _tokenizer(probe_env), bos, 8, None))
    assert n_docs > 64
    wide = [a if a != str(probe_env["corpus"]) else str(big) for a in argv]
    assert cli_main(wide + ["--max-tokens", str(12 * (n_docs + 5)), "--batch-size", "16", "--overwrite"]) == 0
    assert probe.open_run(out).info["spec_decode"]["prompts"] == n_docs
    assert cli_main(argv + ["--max-tokens", "59", "--max-prompts", "3", "--overwrite"]) == 0
    assert probe.open_run(out).info["spec_decode"]["prompts"] == 3
    capsys.readouterr()
    assert cli_main(argv + ["--max-tokens", "11", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--max-tokens 11: less than one prompt's --prompt-tokens + --new-tokens = 12" in err
    assert len(err.strip().splitlines()) == 1


def _tokenizer(env):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(env["ckpt"] / "tokenizer.json"))


def test_an_out_that_cannot_be_written_is_a_one_line_error(probe_env, tmp_path, monkeypatch):
    """--out under a file, or where the OS refuses new entries though os.access says yes (procfs, for
    root: found only after every prompt was decoded, a review), is refused before the model loads."""
    (tmp_path / "afile").write_text("x")
    kw = dict(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), prompt_tokens=8, new_tokens=2,
              max_prompts=1, progress=False)
    with pytest.raises(RecordError, match=r"afile is a file, not a directory"):
        record_spec(SpecOptions(out=str(tmp_path / "afile" / "run"), **kw))
    out = unwritable_out(monkeypatch)
    with pytest.raises(RecordError, match=re.escape(unwritable_msg("--out", out))):
        record_spec(SpecOptions(out=str(out), **kw))


def test_an_out_inside_the_corpus_is_refused(probe_env, tmp_path):
    """The spec tables written into a folder of the corpus became its documents, and every later record
    over that corpus failed on them (a tour); record refuses such an --out too."""
    import shutil

    corpus = shutil.copytree(probe_env["corpus"], tmp_path / "corpus")
    files = sorted(corpus.rglob("*"))
    with pytest.raises(RecordError, match=re.escape(f"--out {corpus / 'spec'}: lies inside --corpus {corpus}")):
        record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(corpus), out=str(corpus / "spec"),
                                prompt_tokens=8, new_tokens=2, max_prompts=1, progress=False))
    assert sorted(corpus.rglob("*")) == files


def test_the_summary_counts_are_the_tables_sums(probe_env, tmp_path):
    """run.json's spec_decode summary: `generated`, `forward_passes` and `acceptance_rate` were not
    checked against the spec_decode rows (a copy-paste of new_tokens for forward_passes, a rate per
    prompt instead of per draft, would have gone unnoticed; a review). Expected: sums of the rows."""
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]),
                                  out=str(tmp_path / "s"), prompt_tokens=12, new_tokens=10, max_prompts=6,
                                  batch_size=4, progress=False))
    run = probe.open_run(out)
    s, dec, drafts = run.info["spec_decode"], run.df("spec_decode"), run.df("spec_drafts")
    assert s["prompts"] == len(dec) == 6
    assert s["generated"] == dec.new_tokens.sum() and s["forward_passes"] == dec.forward_passes.sum()
    assert s["drafts_proposed"] == len(drafts) > 0 and s["drafts_accepted"] == drafts.accepted.sum()
    assert s["acceptance_rate"] == pytest.approx(drafts.accepted.sum() / len(drafts))
    assert s["mean_acceptance_length"] == pytest.approx(1 + drafts.accepted.sum() / len(drafts))
    # --overwrite with another --ckpt: a spec-only run's run.json names the model of its tables, which a
    # later plain --overwrite then takes (it kept the first model's, and went back to it; a review)
    import shutil

    other = shutil.copytree(probe_env["ckpt"], tmp_path / "other")
    for ckpt in (str(other), None):
        record_spec(SpecOptions(ckpt=ckpt, out=str(out), prompt_tokens=12, new_tokens=2, max_prompts=2,
                                batch_size=2, progress=False, overwrite=True))
        info = probe.open_run(out).info
        assert info["checkpoint"]["path"] == info["spec_decode"]["checkpoint"] == str(other.resolve())




def test_each_replica_generates_its_own_round_robin_share_of_batches(monkeypatch):
    """Under torchrun, replica r of R takes batches r, r+R, ... (of --batch-size prompts each); the
    other replicas' batches are never generated here. By hand: 7 prompts in batches of 2 are
    [0 1] [2 3] [4 5] [6]; replica 1 of 2 takes [2 3] and [6]."""
    from types import SimpleNamespace

    import generate as gen_pkg
    from probe.speculative import _generate

    calls = []

    def fake(m, prompts, **kw):
        calls.append([p[0] for p in prompts])
        n = len(prompts)
        return SimpleNamespace(tokens=[[5]] * n, forward_passes=[1] * n, drafts_proposed=[[0]] * n,
                               drafts_accepted=[[0]] * n, tokens_per_forward=[1.0] * n, finish_reasons=["length"] * n,
                               drafts=[[]] * n)

    monkeypatch.setattr(gen_pkg, "generate", fake)
    prompts = [(f"d{i}", "x", [i, 100 + i]) for i in range(7)]
    world = SimpleNamespace(replicas=2, replica=1, rank=1)
    done = _generate(None, prompts, SpecOptions(batch_size=2, progress=False), world, [])
    assert calls == [[2, 3], [6]]
    assert [i for i, _ in done] == [2, 3, 6]
    world0 = SimpleNamespace(replicas=2, replica=0, rank=0)
    calls.clear()
    assert [i for i, _ in _generate(None, prompts, SpecOptions(batch_size=2, progress=False), world0, [])] == [0, 1, 4, 5]


@pytest.mark.parametrize("eos, gen_eos, want", [(1, None, [1]), ([1, 2], None, [1, 2]), (1, [3, 1], [1, 3])])
def test_generation_stops_at_the_checkpoints_eos_ids(probe_env, tmp_path, monkeypatch, eos, gen_eos, want):
    # finish_reason `stop` means EOS: generate() gets the config's eos_token_id, one id or a list of them
    # (a list was passed on as one nested stop id: a TypeError after the model had loaded), and
    # generation_config.json's, as `python -m generate` stops (spec read only config.json's)
    import shutil

    import generate as gen_pkg

    ck = shutil.copytree(probe_env["ckpt"], tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(cfg | {"eos_token_id": eos}))
    if gen_eos is not None:
        (ck / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}))
    real, stops = gen_pkg.generate, []

    def spy(*a, **kw):
        stops.append(sorted(kw["stop_ids"]))
        return real(*a, **kw)

    monkeypatch.setattr(gen_pkg, "generate", spy)
    out = record_spec(SpecOptions(ckpt=str(ck), corpus=str(probe_env["corpus"]), out=str(tmp_path / "s"),
                                  prompt_tokens=8, new_tokens=2, max_prompts=1, progress=False))
    assert stops == [want]
    assert probe.open_run(out).info["spec_decode"]["prompts"] == 1


def test_tokens_per_forward_is_new_tokens_over_forward_passes(probe_env, tmp_path):
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "s"),
                                  prompt_tokens=8, new_tokens=6, max_prompts=2, progress=False))
    dec = probe.open_run(out).df("spec_decode")
    assert len(dec) == 2
    assert dec.tokens_per_forward.tolist() == pytest.approx((dec.new_tokens / dec.forward_passes).tolist(), rel=1e-12)
