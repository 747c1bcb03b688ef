"""The notebooks' helpers (analyses/notebook_utils.py) without a kernel or a recording: the latent
conclusion's numbers, the integer settings, the token-balanced corpus sample on a word-level
tokenizer, and the options a small run and a variant run are recorded with (`record` stubbed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analyses import notebook_utils


def test_the_latent_conclusion_names_the_extreme_layers_and_the_cache_ratio():
    # layers 0 and 1 finite (ranks 12 and 30 of 32 channels), layer 2 NaN
    kv = pd.DataFrame({"layer": [0, 1, 2], "latent_dim": 32, "effective_rank": [12.0, 30.0, np.nan],
                       "energy90": pd.array([4, 9, None], dtype="Int64"),
                       "energy99": pd.array([10, 20, None], dtype="Int64")})
    kv["rank_share"] = kv.effective_rank / kv.latent_dim
    stats = pd.DataFrame({"bytes_absorb": [100], "bytes_naive": [400], "bytes_mha": [1500]})
    lines = notebook_utils.latent_summary(kv, stats).splitlines()
    assert lines[0].startswith("- Layer 2: non-finite latents")
    share = (12 / 32 + 30 / 32) / 2
    assert lines[1] == f"- Effective rank of c_kv ranges from 12.0 (layer 0) to 30.0 (layer 1) out of 32 channels " \
                       f"({share:.0%} on average)."
    assert lines[2] == "- 99% of the energy needs 10 to 20 components; 90% needs 4 to 9."
    assert lines[3].endswith(f"({1500 / 100:.1f}x smaller than MHA).")  # MHA over the absorbed cache


def test_the_latent_conclusion_gives_no_rank_for_one_token_a_layer():
    """A covariance of one token is zero: the conclusion said the effective rank "ranges from 0.0"
    (a tour); it says n/a and why, as the dashboard's Latent KV page does, and ranges over the
    layers of two tokens or more only."""
    kv = pd.DataFrame({"layer": [1, 2], "tokens": 1, "latent_dim": 32, "effective_rank": 0.0,
                       "energy90": 0, "energy99": 0})
    kv["rank_share"] = kv.effective_rank / kv.latent_dim
    stats = pd.DataFrame({"bytes_absorb": [100], "bytes_naive": [400], "bytes_mha": [1500]})
    lines = notebook_utils.latent_summary(kv, stats).splitlines()
    assert lines[0] == ("- Layers 1, 2: no effective rank or energy components (n/a): a covariance needs two tokens "
                        "or more, and the run recorded 1 token a layer (record with a larger `--max-tokens`).")
    assert len(lines) == 2 and lines[1].startswith("- Cache per token and layer")
    kv.loc[1, ["tokens", "effective_rank", "energy90", "energy99"]] = [5, 3.0, 2, 4]  # layer 2: five tokens
    kv["rank_share"] = kv.effective_rank / kv.latent_dim
    lines = notebook_utils.latent_summary(kv, stats).splitlines()
    assert lines[0].startswith("- Layer 1: no effective rank")
    assert "ranges from 3.0 (layer 2) to 3.0 (layer 2)" in lines[1]


def test_latent_rank_gives_no_rank_under_two_tokens_and_the_conclusion_says_why(tmp_path):
    """latent_rank (the notebook's table) gave the zero covariance of a layer of one token an
    effective rank of 0.0 and 0 components, as if measured (a tour): NaN there, and the conclusion
    on that table says n/a for too few tokens, not 'non-finite latents'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from analyses.report import latent_rank
    from helpers.synthetic_run import write_run
    from probe.schema import TABLES

    write_run(tmp_path / "r")
    rows = {f.name: [None, None] for f in TABLES["kv_stats"]}
    rows |= {"layer": [2, 1], "tokens": [5, 1], "latent_dim": [32, 32], "effective_rank": [3.0, 0.0],
             "energy90": [2, 0], "energy95": [3, 0], "energy99": [4, 0]}
    (tmp_path / "r" / "kv_stats").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=TABLES["kv_stats"]), tmp_path / "r" / "kv_stats" / "p.parquet")
    kv = latent_rank(tmp_path / "r")
    assert list(kv.layer) == [1, 2] and kv.effective_rank.iloc[1] == 3.0 and kv.energy99.iloc[1] == 4
    one = kv.iloc[0]
    assert all(np.isnan(one[c]) for c in ("effective_rank", "energy90", "energy95", "energy99", "rank_share")), one
    stats = pd.DataFrame({"bytes_absorb": [100], "bytes_naive": [400], "bytes_mha": [1500]})
    lines = notebook_utils.latent_summary(kv, stats).splitlines()
    assert lines[0].startswith("- Layer 1: no effective rank or energy components (n/a)"), lines
    assert "ranges from 3.0 (layer 2) to 3.0 (layer 2)" in lines[1] and "non-finite" not in lines[0], lines


def test_integer_settings_must_be_positive_and_blank_means_the_default(monkeypatch):
    monkeypatch.setenv("DSV3_T", "")
    assert notebook_utils.env_int("DSV3_T", 7) == 7
    monkeypatch.setenv("DSV3_T", "12")
    assert notebook_utils.env_int("DSV3_T", 7) == 12
    for bad, why in (("0", "must be >= 1"), ("-3", "must be >= 1"), ("x", "expected an integer")):
        monkeypatch.setenv("DSV3_T", bad)
        with pytest.raises(ValueError, match=why):
            notebook_utils.env_int("DSV3_T", 7)


@pytest.fixture
def word_corpus(tmp_path):
    """A JSONL corpus of two domains and a word-level tokenizer (one token per word, offsets by word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    docs = [("c1", "code", "a b c"), ("c2", "code", "one two three four five"), ("c3", "code", "x y"),
            ("p1", "prose", "s t u v w x y"), ("p2", "prose", "m n")]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "domain": d, "text": t}) + "\n" for i, d, t in docs))
    words = sorted({w for *_, t in docs for w in t.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tok.json"))
    return corpus, tmp_path / "tok.json"


def test_a_balanced_sample_takes_each_domains_first_tokens_and_interleaves_the_domains(word_corpus, tmp_path):
    corpus, tok = word_corpus
    out = notebook_utils.balanced_corpus(corpus, tok, 5, tmp_path / "samples")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # code: c1 (3 words) and c2's first 2 words; prose: p1's first 5 words; c3 and p2 are past the budget
    assert [(r["id"], r["domain"], r["text"]) for r in rows] == [
        ("c1", "code", "a b c"), ("p1", "prose", "s t u v w"), ("c2", "code", "one two")]
    assert notebook_utils.balanced_corpus(corpus, tok, 5, tmp_path / "samples") == out  # written once


def test_a_sample_size_that_is_not_a_whole_number_is_refused_by_name(word_corpus, tmp_path):
    """tokens_per_domain=0 was a plain ValueError, 2.5 or '3' a TypeError deep in the sampling, and NaN
    wrote a sample of whole documents (a tour): the module's CorpusError, naming the argument."""
    from probe.corpus import CorpusError

    corpus, tok = word_corpus
    for bad in (0, -1, 2.5, "3", None, True, float("nan")):
        with pytest.raises(CorpusError) as e:
            notebook_utils.balanced_corpus(corpus, tok, bad, tmp_path / "samples")
        assert str(e.value) == (f"tokens_per_domain={bad!r}: expected a whole number >= 1 (the tokens of each "
                                "domain to take)"), str(e.value)
    assert not (tmp_path / "samples").exists()
    assert notebook_utils.balanced_corpus(corpus, tok, 5.0, tmp_path / "samples").name.startswith("corpus-5per-")


def test_a_tokenizer_that_is_missing_or_unreadable_is_one_line_naming_it(word_corpus, tmp_path, monkeypatch):
    """A missing tokenizer was fingerprint()'s raw FileNotFoundError, a folder or a broken file the
    tokenizers library's bare Exception ('Is a directory (os error 21)'), and an empty path hashed the
    whole current folder first."""
    from probe.corpus import CorpusError

    corpus, _ = word_corpus
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.chdir(tmp_path)
    for tok, msg in ((tmp_path / "missing.json", f"{tmp_path / 'missing.json'}: tokenizer not found"),
                     (tmp_path, f"{tmp_path}: a folder, not a tokenizer.json file"),
                     ("", "tokenizer='': an empty path (for the current folder, give .)"),
                     (tmp_path / "broken.json", f"{tmp_path / 'broken.json'}: not a readable tokenizer (")):
        with pytest.raises(CorpusError) as e:
            notebook_utils.balanced_corpus(corpus, tok, 5, tmp_path / "samples")
        assert str(e.value).startswith(msg) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "samples").exists()


def test_a_small_run_splits_its_tokens_evenly_between_the_corpus_domains(word_corpus, tmp_path, monkeypatch):
    import probe.record

    corpus, tok = word_corpus
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "tokenizer.json").write_bytes(tok.read_bytes())
    asked = {}

    def sample(corpus, tokenizer, per, dest):
        asked["per"] = per
        return tmp_path / "s.jsonl"

    monkeypatch.setattr(notebook_utils, "balanced_corpus", sample)
    monkeypatch.setattr(probe.record, "record", lambda opts: asked.setdefault("opts", opts).out)
    notebook_utils.record_small(tmp_path / "run", 900, ckpt=ckpt, corpus=corpus)
    assert asked["per"] == 900 // 2  # two domains
    assert asked["opts"].corpus == str(tmp_path / "s.jsonl") and asked["opts"].ckpt == str(ckpt)


def test_a_variant_run_is_recorded_with_the_runs_own_window_options(tmp_path, monkeypatch):
    """The same windows need the run's seq_len, order, batch and BOS; max_tokens cuts them, never extends them."""
    import probe
    import probe.record

    opts = {"seq_len": 128, "max_tokens": 5000, "order": "corpus", "batch_size": 4, "add_bos": False, "sample": 0.5}
    run = SimpleNamespace(path=str(tmp_path / "run"), tables=["tokens", "routing"],
                          info={"checkpoint": {"path": "ck"}, "corpus": {"path": "c"}, "options": opts})
    (tmp_path / "run-no-router-bias-ckpt").mkdir()
    (tmp_path / "run-no-router-bias-ckpt" / "config.json").write_text("{}")  # the variant is there already
    recorded = []
    monkeypatch.setattr(probe.record, "record", recorded.append)
    monkeypatch.setattr(probe, "open_run", Path)
    for asked, want in ((1000, 1000), (9000, 5000), (None, 5000)):
        assert notebook_utils.compare_run(run, max_tokens=asked) == tmp_path / "run-no-router-bias"
        o = recorded.pop()
        assert (o.seq_len, o.order, o.batch_size, o.add_bos, o.max_tokens) == (128, "corpus", 4, False, want)
        assert o.ckpt == str(tmp_path / "run-no-router-bias-ckpt") and o.corpus == "c"


def test_a_variant_run_takes_the_runs_tokenizer_by_its_whole_path_or_says_it_is_gone(tmp_path, monkeypatch):
    """The run's --tokenizer as typed is relative to where it was recorded: from a notebook's kernel (in
    analyses/notebooks/) the variant's record said "--tokenizer rel/tok.json: no tokenizer there", a flag the
    notebook has none of, of a file that was there; one gone was said so after the variant was written (a tour)."""
    import probe
    import probe.record
    from probe.corpus import fingerprint

    import analyses.variants
    from analyses.metrics import MetricsError

    tok = tmp_path / "rel" / "tok.json"
    tok.parent.mkdir()
    tok.write_text('{"model": 1}')
    (tmp_path / "kernel").mkdir()
    monkeypatch.chdir(tmp_path / "kernel")  # not where the run was recorded
    run = SimpleNamespace(path=str(tmp_path / "run"), tables=["tokens", "routing"],
                          info={"checkpoint": {"path": "ck"}, "corpus": {"path": "c"},
                                "options": {"tokenizer": "rel/tok.json"},
                                "tokenizer": {"path": str(tok), "fingerprint": fingerprint(tok)}})
    (tmp_path / "run-no-router-bias-ckpt").mkdir()
    (tmp_path / "run-no-router-bias-ckpt" / "config.json").write_text("{}")  # the variant is there already
    recorded = []
    monkeypatch.setattr(probe.record, "record", recorded.append)
    monkeypatch.setattr(probe, "open_run", Path)
    notebook_utils.compare_run(run)
    assert recorded.pop().tokenizer == str(tok)  # run.json's whole path, not the option as typed
    run.info["options"] = {}  # the control: recorded with the checkpoint's own, none passed
    notebook_utils.compare_run(run)
    assert recorded.pop().tokenizer is None
    run.info |= {"options": {"tokenizer": "rel/tok.json"}, "tokenizer": {"path": str(tmp_path / "gone.json")}}
    written = []
    monkeypatch.setattr(analyses.variants, "without_router_bias", lambda *a, **k: written.append(a))
    with pytest.raises(MetricsError) as e:
        notebook_utils.compare_run(run, out=tmp_path / "other")
    assert str(e.value) == (f"{run.path}: the run's tokenizer {tmp_path / 'gone.json'} is no longer there; recording "
                            "the comparison run (the variant's checkpoint over the run's windows) runs the run's "
                            "checkpoint on its corpus, read with the tokenizer it was recorded with: point "
                            "$DSV3_NOTEBOOK_RUN at a run whose tokenizer is there, or restore the files where "
                            "run.json names them")
    assert not written and not recorded  # refused before the variant is written


def test_the_run_to_compare_may_be_given_by_its_path(tmp_path, monkeypatch):
    """compare_run('runs/model-val'), as the metrics take a run, was "'str' object has no attribute
    'tables'"; a path to no run is the reader's one-line error."""
    import probe
    import probe.record
    from probe.writer import RunError

    from helpers.synthetic_run import write_run

    write_run(tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps(info | {"checkpoint": {"path": "ck"}, "corpus": {"path": "c"},
                                                                   "options": {}}))
    (tmp_path / "run-no-router-bias-ckpt").mkdir()
    (tmp_path / "run-no-router-bias-ckpt" / "config.json").write_text("{}")  # the variant is there already
    recorded = []
    monkeypatch.setattr(probe.record, "record", lambda opts: recorded.append(opts) or Path(opts.out).exists()
                        or write_run(Path(opts.out)))
    for given in (str(tmp_path / "run"), tmp_path / "run"):
        got = notebook_utils.compare_run(given)
        assert Path(got.path) == tmp_path / "run-no-router-bias" and recorded.pop().corpus == "c"
    with pytest.raises(RunError, match="not a run directory"):
        notebook_utils.compare_run(str(tmp_path / "nope"))


def test_the_default_run_is_used_only_when_complete_else_a_small_run_is_recorded(tmp_path, monkeypatch):
    from helpers.synthetic_run import write_run

    def record_small(path, n, overwrite):
        write_run(path)
        (path / "run.json").write_text(json.dumps(json.loads((path / "run.json").read_text()) | {"status": "complete"}))

    monkeypatch.delenv("DSV3_NOTEBOOK_RUN", raising=False)
    monkeypatch.setattr(notebook_utils, "DEFAULT_RUN", tmp_path / "model-val")
    monkeypatch.setattr(notebook_utils, "record_small", record_small)
    record_small(tmp_path / "model-val", 0, False)
    (tmp_path / "model-val" / "run.json").write_text(json.dumps({"status": "interrupted"}))  # a recording cut short
    assert Path(notebook_utils.default_run(100).path) == tmp_path / "model-val-100tok"
    (tmp_path / "model-val" / "run.json").write_text(json.dumps({"status": "complete"}))
    assert Path(notebook_utils.default_run(100).path) == tmp_path / "model-val"  # the control: complete, so used


def test_cumulative_energy_leaves_out_a_layer_without_energy():
    """The latent_kv notebook drew each layer's cumulative energy as cumsum / sum: a layer of one token
    (a zero covariance) was 0 / 0, a NaN curve, and `record --max-tokens 1` got an empty chart with a
    RuntimeWarning (a tour). Such layers are left out; the others' shares are the cumulative sums."""
    import warnings

    spec = pd.DataFrame({"layer": [1, 1, 1, 0, 0, 0], "component": [2, 0, 1, 0, 1, 2],
                         "eigenvalue": [-1e-17, 3.0, 1.0, 0.0, 0.0, 0.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0
        curves = notebook_utils.cumulative_energy(spec)
    assert curves.layer.tolist() == [1, 1, 1]
    assert curves.component.tolist() == [1, 2, 3]
    assert curves.share.tolist() == pytest.approx([0.75, 1.0, 1.0])  # the negative rounding clipped to 0
    assert notebook_utils.cumulative_energy(spec[spec.layer == 0]).empty


@pytest.mark.parametrize("lose", ["folder", "a rank's parts"])
def test_the_domain_notes_of_a_run_that_lost_its_tokens_say_so(tmp_path, lose):
    """latent_kv's domain probe and mtp's domain ranking read tokens only through one_domain_note (latent_kv
    then heldout_note): a complete run that lost its tokens table (the folder, or one rank's parts) raised
    DuckDB's 'Invalid Input Error' wrapping the loss halfway through the notebook. The notes say the part is
    not measured and why; need_domains and need_heldout raise the RunError every metric raises."""
    import shutil

    import probe
    from helpers.synthetic_run import as_two_replicas, write_run
    from probe.writer import RunError

    run = tmp_path / "run"
    write_run(run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": ["tokens", "routing",
                                                                                      "expert_load"]}))
    as_two_replicas(run, ["tokens", "routing", "expert_load"])
    assert notebook_utils.one_domain_note(probe.open_run(run), "The domain probe") is None  # whole: two domains
    if lose == "folder":
        shutil.rmtree(run / "tokens")
    else:
        (run / "tokens" / "r002-b0000001-0000001.parquet").unlink()
    r = probe.open_run(run)
    for note in (notebook_utils.one_domain_note(r, "The domain probe"),
                 notebook_utils.heldout_note(r, "The domain probe")):
        assert note.startswith(f"The domain probe reads the run's tokens table, which it has lost ({run / 'tokens'}: "
                               ), note
        assert "\n" not in note and "Error" not in note
    for need in (notebook_utils.need_domains, notebook_utils.need_heldout):
        with pytest.raises(RunError, match=f"^{run / 'tokens'}: "):
            need(r, "this notebook (x)")
