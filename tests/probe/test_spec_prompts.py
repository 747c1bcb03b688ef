"""`dsv3-probe spec`'s prompts and caps: which documents make a prompt, the prompt and token sizes it
refuses or takes at their edges, and the --max-prompts / --max-tokens caps as the API and the CLI read them.
The tables and the run they write are tested in test_spec.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import model
import probe
from probe.record import RecordError
from probe.speculative import SpecOptions, record_spec, spec_prompts


class _WordTokenizer:  # one id per word: prompt lengths are easy to reason about
    def encode(self, text, add_special_tokens=False):
        from types import SimpleNamespace

        return SimpleNamespace(ids=[len(w) for w in text.split()])


def test_a_document_of_exactly_the_prompt_length_makes_a_prompt(tmp_path):
    """spec_prompts takes documents with *at least* --prompt-tokens tokens (BOS counted): a document
    of exactly that many was dropped, and a domain of such documents named as too short (a review).
    By hand, prompt length 4 with BOS 0: a/d.txt has 3 words (4 tokens), b/d.txt 2 (3 tokens)."""
    c = tmp_path / "c"
    (c / "a").mkdir(parents=True)
    (c / "b").mkdir()
    (c / "a" / "d.txt").write_text("xx yyy z")
    (c / "b" / "d.txt").write_text("xx yyy")
    short = []
    assert spec_prompts(c, _WordTokenizer(), 0, 4, None, short=short) == [("a/d.txt", "a", [0, 2, 3, 1])]
    assert short == ["b"]
    assert spec_prompts(c, _WordTokenizer(), 0, 3, None) == [("a/d.txt", "a", [0, 2, 3]), ("b/d.txt", "b", [0, 2, 3])]


@pytest.mark.slow  # 2.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_one_token_prompt_is_refused_only_where_it_would_be_the_bos_alone(probe_env, tmp_path):
    """--prompt-tokens 1 counts the BOS: every prompt was [BOS], whatever its document, and the run was written
    as if the domains had been prompted. A model without a BOS takes it: the prompt is the document's first token."""
    import shutil

    kw = dict(corpus=str(probe_env["corpus"]), prompt_tokens=1, new_tokens=2, max_prompts=2, progress=False)
    with pytest.raises(RecordError, match=r"^--prompt-tokens 1: must be >= 2 \(BOS included"):
        record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), out=str(tmp_path / "s"), **kw))
    assert not (tmp_path / "s").exists()
    ck = Path(shutil.copytree(probe_env["ckpt"], tmp_path / "nobos"))
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(cfg | {"bos_token_id": None}))
    out = record_spec(SpecOptions(ckpt=str(ck), out=str(tmp_path / "s"), **kw))
    assert probe.open_run(out).info["spec_decode"]["prompts"] == 2


def test_a_negative_max_prompts_through_the_api_is_refused(tmp_path):
    # the API's max_prompts means what --max-prompts does (0: every document; test_the_api_caps_prompts_as_the_cli_does)
    with pytest.raises(RecordError, match="--max-prompts must be >= 1"):
        record_spec(SpecOptions(out=str(tmp_path / "s"), max_prompts=-1, progress=False))
    assert not (tmp_path / "s").exists()


def test_a_budget_of_exactly_one_prompt_makes_one_prompt(probe_env, tmp_path):
    # --max-tokens = prompt + new tokens is one prompt's worth: taken, not "less than one prompt"
    out = record_spec(SpecOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "s"),
                                  prompt_tokens=8, new_tokens=4, max_prompts=None, max_tokens=12, progress=False))
    assert probe.open_run(out).info["spec_decode"]["prompts"] == 1


def test_prompt_plus_new_tokens_may_fill_max_seq_len_exactly(probe_env, tmp_path):
    import shutil

    ck = shutil.copytree(probe_env["ckpt"], tmp_path / "short")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["max_position_embeddings"] = 16
    (ck / "config.json").write_text(json.dumps(cfg))
    assert model.ModelArgs.from_hf_config(ck).max_seq_len == 16  # precondition: the config key is the one read
    kw = dict(ckpt=str(ck), corpus=str(probe_env["corpus"]), max_prompts=1, progress=False)
    out = record_spec(SpecOptions(out=str(tmp_path / "fits"), prompt_tokens=8, new_tokens=8, **kw))  # 16 of 16
    assert probe.open_run(out).info["spec_decode"]["prompts"] == 1
    with pytest.raises(RecordError, match="= 17 exceeds the model's max_seq_len 16"):
        record_spec(SpecOptions(out=str(tmp_path / "over"), prompt_tokens=8, new_tokens=9, **kw))


def test_a_generation_config_naming_no_ids_is_refused_before_the_model_loads(probe_env, tmp_path, monkeypatch):
    import shutil

    import probe.speculative as spec

    ck = shutil.copytree(probe_env["ckpt"], tmp_path / "ck")
    (ck / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    monkeypatch.setattr(spec, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    with pytest.raises(spec.RecordError, match="eos_token_id='</s>' must be a token id"):
        record_spec(SpecOptions(ckpt=str(ck), corpus=str(probe_env["corpus"]), out=str(tmp_path / "s"),
                                prompt_tokens=8, new_tokens=2, max_prompts=1, progress=False))


def test_the_api_caps_prompts_as_the_cli_does():
    """SpecOptions(max_tokens=N) was still capped at 64 prompts, where the CLI's --max-tokens alone lifts
    that cap (a tour): the options mean what the flags mean, 0 every document."""
    from probe.speculative import prompt_limit

    assert prompt_limit(SpecOptions()) == 64
    assert prompt_limit(SpecOptions(max_tokens=64 * 100)) == 100  # 32 prompt + 32 new tokens a prompt
    assert prompt_limit(SpecOptions(max_tokens=64 * 100, max_prompts=10)) == 10
    assert prompt_limit(SpecOptions(max_prompts=0)) is None
    assert prompt_limit(SpecOptions(max_prompts=7)) == 7


def test_the_default_prompt_cap_is_said_to_be_the_default():
    """A corpus of more domains than the default 64 prompts: the note said '--max-prompts 64 left ...', a flag
    the user never typed (the default applied); it says the default, and still which flag raises it."""
    from probe.speculative import _cap_note

    capped = [f"d{i}" for i in range(64, 70)]
    note = _cap_note(SpecOptions(prompt_tokens=8, new_tokens=4), 70, capped)
    assert note.startswith("note: the default of 64 prompts (--max-prompts) left 6 of 70 domains without a prompt "
                           "(d64, d65, d66, ...)"), note
    assert note.endswith("pass a --max-prompts of at least 70 to cover every domain"), note
    typed = _cap_note(SpecOptions(prompt_tokens=8, new_tokens=4, max_prompts=64), 70, capped)  # the control
    assert typed.startswith("note: --max-prompts 64 left 6 of 70 domains"), typed


def test_ranks_that_typed_the_default_prompt_cap_and_none_run_the_same_job():
    """`default_prompts` (which of the two the cap note says) went into the options every rank compares
    under torchrun: a node typing `--max-prompts 64` beside one typing none, the same 64 prompts, was
    refused as "ranks run different jobs: --default-prompts ...", a flag there is none of (a review)."""
    from probe.job import job_options

    typed = job_options(SpecOptions(prompt_tokens=8, new_tokens=4, max_prompts=64))
    assert job_options(SpecOptions(prompt_tokens=8, new_tokens=4)) == typed
    assert job_options(SpecOptions(prompt_tokens=8, new_tokens=4, max_prompts=32)) != typed  # the control
