"""`dsv3-probe spec`: MTP speculative-decoding acceptance recorded into a run."""

from __future__ import annotations

import json

import pytest
import torch

import model
import probe
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
    assert drafts.position.between(0, 9).all()
    summary = run.info["spec_decode"]
    assert summary["drafts_proposed"] == dec.drafts_proposed.sum()
    print(f"random tiny model: acceptance {summary['acceptance_rate']}, "
          f"{summary['generated']} tokens in {summary['forward_passes']} passes")


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
    assert cli_main(argv) == 2  # the tables exist: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("kw, msg", [
    (dict(prompt_tokens=500, new_tokens=100), "max_seq_len"),
    (dict(new_tokens=0), ">= 1"),
    (dict(prompt_tokens=200, new_tokens=8, corpus="short.txt"), "no document has 200 tokens"),
])
def test_spec_bad_input(probe_env, tmp_path, kw, msg):
    (tmp_path / "short.txt").write_text("a short text")
    corpus = str(tmp_path / kw.pop("corpus")) if "corpus" in kw else str(probe_env["corpus"])
    opts = SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=corpus, out=str(tmp_path / "s"), progress=False, **kw)
    with pytest.raises((RecordError, CorpusError), match=msg):
        record_spec(opts)


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
