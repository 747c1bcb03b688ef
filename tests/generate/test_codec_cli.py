"""The tokenizer configs' edges (generate/text.py) and the command line's (generate/__main__.py):
BOS defaults, templates without BOS or with half of V3's markers, bad eos ids, empty JSONL prompts,
prompts of a checkpoint without a chat template, the default seed, blank interactive lines, a zero
budget, and Ctrl-C's count of appended lines."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from generate import ASSISTANT, BOS_TEXT, USER, GenerateError, load_codec, read_prompts
from helpers.generate_cli import run_cli


def tokenizer_dir(demo_dir: Path, tmp_path: Path, name: str, **cfg) -> Path:
    """The demo's tokenizer alone, its tokenizer_config.json updated with `cfg` (None removes a key)."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(demo_dir / "tokenizer.json", d)
    old = json.loads((demo_dir / "tokenizer_config.json").read_text())
    new = {k: v for k, v in (old | cfg).items() if v is not None}
    (d / "tokenizer_config.json").write_text(json.dumps(new))
    return d


# ------------------------------------------------------------------------------------ the codec
def test_a_config_without_add_bos_token_starts_raw_prompts_with_bos(demo_dir, tmp_path):
    # add_bos_token defaults to true, as in Hugging Face's LlamaTokenizer (DeepSeek-V3's tokenizer class)
    codec = load_codec(tokenizer_dir(demo_dir, tmp_path, "nokey", add_bos_token=None))
    tok = codec.tokenizer
    assert codec.encode("hi", chat=False) == [tok.token_to_id(BOS_TEXT)] + tok.encode("hi", add_special_tokens=False).ids


def test_a_chat_template_without_bos_token_sends_chat_prompts_without_bos(demo_dir, tmp_path):
    template = "{% for m in messages %}" + USER + "{{ m['content'] }}{% endfor %}" + ASSISTANT
    codec = load_codec(tokenizer_dir(demo_dir, tmp_path, "nobos", chat_template=template))
    tok = codec.tokenizer
    assert codec.chat and codec.encode("hi") == tok.encode(USER + "hi" + ASSISTANT, add_special_tokens=False).ids
    assert codec.encode("hi", chat=False)[0] == tok.token_to_id(BOS_TEXT)  # the control: raw prompts keep it


def test_a_tokenizer_with_only_one_of_the_chat_markers_sends_prompts_raw(demo_dir, tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    d = tokenizer_dir(demo_dir, tmp_path, "half")
    Tokenizer(WordLevel({"[UNK]": 0, USER: 1}, unk_token="[UNK]")).save(str(d / "tokenizer.json"))
    assert not load_codec(d).chat
    assert "its chat template is not DeepSeek-V3's" in capsys.readouterr().err



def test_chat_true_is_refused_where_the_tokenizer_has_no_chat_template(demo_dir, tmp_path):
    """encode(text, chat=True) on a tokenizer without a chat template (the bundled model's) sent V3's
    markers as plain text in pieces, and no BOS: a prompt unlike any the model saw, and no error (a tour)."""
    codec = load_codec(tokenizer_dir(demo_dir, tmp_path, "notemplate", chat_template=None))
    assert not codec.chat
    with pytest.raises(GenerateError, match=r"^encode\(chat=True\): this tokenizer has no DeepSeek-V3 chat template "
                                            r".*; encode with chat=False$"):
        codec.encode("hi", chat=True)
    assert codec.encode("hi") == codec.encode("hi", chat=False)  # the control: the default is raw here


def test_a_system_text_is_refused_where_the_text_is_encoded_raw(demo_dir, tmp_path):
    """encode(text, system=...) with chat=False, or on a tokenizer without a chat template, dropped the
    system text without a word, where the command line refuses --system so (a tour)."""
    raw = load_codec(tokenizer_dir(demo_dir, tmp_path, "raw", chat_template=None))
    chat = load_codec(demo_dir)
    assert chat.chat and chat.encode("hi", system="Be brief.") != chat.encode("hi")  # the control: it is used
    for codec, kw in [(raw, {}), (chat, {"chat": False})]:
        with pytest.raises(GenerateError, match=r"^encode\(system=\.\.\.\): the text is encoded raw .* no turn to go "
                                                r"in$"):
            codec.encode("hi", system="Be brief.", **kw)

def test_a_boolean_eos_token_id_is_refused(demo_dir, tmp_path):
    d = tokenizer_dir(demo_dir, tmp_path, "booleos")
    (d / "generation_config.json").write_text('{"eos_token_id": true}')  # it stopped at token 1
    with pytest.raises(GenerateError, match=r"generation_config.json: eos_token_id=True must be a token id"):
        load_codec(d)


def test_an_empty_jsonl_prompt_is_refused(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    with pytest.raises(GenerateError, match=r'p.jsonl:2: each JSON line needs a non-empty string field "prompt"'):
        read_prompts(j)


# ------------------------------------------------------------------------------------- the CLI
def test_cli_sends_raw_prompts_for_a_checkpoint_without_a_chat_template(demo_dir, tmp_path, capsys, monkeypatch):
    import generate.decode as decode  # where the command takes generate() from once its flags parse

    ckpt = Path(shutil.copytree(demo_dir, tmp_path / "notemplate"))
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    seen, real = [], decode.generate
    monkeypatch.setattr(decode, "generate", lambda m, prompts, **kw: seen.append(prompts) or real(m, prompts, **kw))
    code, _, err = run_cli(capsys, "--ckpt", ckpt, "--prompt", "hi", "--max-new-tokens", 1)
    assert code == 0, err
    tok = load_codec(ckpt).tokenizer
    assert seen == [[[tok.token_to_id(BOS_TEXT)] + tok.encode("hi", add_special_tokens=False).ids]]


def test_cli_sampling_is_reproducible_without_a_seed_flag(demo_dir, capsys):
    argv = ["--ckpt", demo_dir, "--prompt", "hi", "--max-new-tokens", 12, "--temperature", 1.0, "--no-chat-template"]
    first, second = run_cli(capsys, *argv), run_cli(capsys, *argv)
    assert first[0] == 0 and first[1].strip() and first[1] == second[1]


def test_cli_interactive_skips_a_blank_line_of_spaces(demo_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("   \n\t\n/exit\n"))
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 2)
    assert code == 0 and "tokens/s" not in err and err.count("> ") == 3, err


def test_cli_max_new_tokens_0_prints_the_prompt_alone(demo_dir, capsys):
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--max-new-tokens", 0, "--no-chat-template")
    assert code == 0 and out == "[0] hi\n\n\n" and "[0 tokens in" in err, err


def test_cli_ctrl_c_counts_every_line_of_a_prompt_file_batch(demo_dir, tmp_path, capsys, monkeypatch):
    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(sys, "stdin", CtrlC())
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt-file", f, "--interactive", "--max-new-tokens", 1,
                           "--output", out)
    assert code == 130 and "interrupted (3 lines appended to" in err, err
    assert len(out.read_text().splitlines()) == 3


def test_cli_refuses_a_system_text_it_has_no_turn_for(demo_dir, tmp_path, capsys):
    """--system with raw prompts (--no-chat-template, or a checkpoint without a chat format) was dropped
    without a word; with the chat format it is kept (the control)."""
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--system", "Be brief.", "--no-chat-template")
    assert code == 2 and "--system: the prompts are sent raw (--no-chat-template)" in err, err
    ckpt = Path(shutil.copytree(demo_dir, tmp_path / "notemplate"))
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "--ckpt", ckpt, "--prompt", "hi", "--system", "Be brief.")
    assert code == 2 and "tokenizer has no chat format" in err, err
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--system", "Be brief.", "--max-new-tokens", 1)
    assert code == 0, err


@pytest.mark.slow  # a command end to end in a fresh process (the quick loop leaves these out)
# one prompt streamed, two printed per finished row; the alias (model/generate.py) runs the same cli(),
# so one of the two is enough for it (its pair with two prompts checked that code twice, ~2.5 s a process)
@pytest.mark.parametrize("module, prompts", [("generate", ["a"]), ("generate", ["a", "b"]),
                                             ("model.generate", ["a"])])
def test_a_closed_pipe_ends_the_command_quietly(demo_dir, module, prompts):
    from helpers.processes import reader_gone

    argv = [a for p in prompts for a in ("--prompt", p)]
    # the reader has gone (`| head`): it was a BrokenPipeError traceback
    code, err = reader_gone("-m", module, "--ckpt", str(demo_dir), *argv, "--max-new-tokens", "3")
    assert code == 141 and "Traceback" not in err, err


def test_a_git_lfs_pointer_for_tokenizer_json_is_named_as_one(demo_dir, tmp_path, capsys):
    """generate reads the tokenizer before the weights: a clone without git-lfs got 'not a readable
    tokenizer (expected value at line 1 column 1)', where record names the pointer and the fetch."""
    d = tokenizer_dir(demo_dir, tmp_path, "lfs")
    (d / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64
                                      + "\nsize 270139\n")
    with pytest.raises(GenerateError, match=r"tokenizer\.json: not a readable tokenizer \(.*\); it is a Git LFS "
                                            r"pointer, not the file: fetch it \(git lfs pull"):
        load_codec(d)
    (d / "tokenizer.json").write_text("{")  # control: a broken file that is no pointer gets no such advice
    with pytest.raises(GenerateError) as e:
        load_codec(d)
    assert "not a readable tokenizer" in str(e.value) and "LFS" not in str(e.value)


def test_an_empty_checkpoint_path_is_refused_by_name_not_read_as_the_current_folder(demo_dir, monkeypatch):
    """Path('') is '.': load_codec("") read the current folder's tokenizer, and elsewhere said
    '.: no tokenizer.json'."""
    monkeypatch.chdir(demo_dir)
    with pytest.raises(GenerateError, match=r"^ckpt='': an empty path \(for the current folder, give \.\)$"):
        load_codec("")
    assert load_codec(".").tokenizer is not None


def test_the_tokenizer_file_itself_is_told_to_give_its_folder(demo_dir):
    """load_codec(".../tokenizer.json") said '.../tokenizer.json: no tokenizer.json'."""
    with pytest.raises(GenerateError, match=rf"^{re.escape(str(demo_dir / 'tokenizer.json'))}: a file; load_codec "
                                            rf"takes the checkpoint's folder, .* \(here {re.escape(str(demo_dir))}\)$"):
        load_codec(demo_dir / "tokenizer.json")


def test_output_the_prompt_file_itself_is_refused(demo_dir, tmp_path, capsys, monkeypatch):
    """--output appended the results to the JSONL prompt file, whose next run read them back as prompts."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt-file", prompts, "--output", "./p.jsonl",
                           "--max-new-tokens", 1)
    assert code == 2 and err == ("error: --output ./p.jsonl: the same file as --prompt-file; give the results "
                                 "their own\n")
    assert prompts.read_text() == '{"prompt": "hi"}\n'


@pytest.mark.parametrize("argv", [["--demo", ""], ["--ckpt", " "], ["--ckpt", "{demo}", "--output", ""],
                                  ["--ckpt", "{demo}", "--prompt-file", ""]])
def test_an_empty_path_is_refused_by_its_flag(argv, demo_dir, capsys):
    # --demo '' was a TypeError traceback; --output '' and --prompt-file '' were dropped without a word.
    # Refused by the parser (probe.job.path_text), as every other command's path flags are
    argv = [a.format(demo=demo_dir) for a in argv]
    code, _, err = run_cli(capsys, *argv, "--prompt", "hi", "--max-new-tokens", 1)
    flag = argv[-2]
    assert code == 2 and err.endswith(f"error: argument {flag}: an empty path (for the current folder, give .)\n"), err


@pytest.mark.parametrize("prompt", ["a", "hello world"])
def test_cli_refuses_a_tokenizer_larger_than_the_checkpoints_vocabulary(prompt, demo_dir, tmp_path, capsys):
    """Another model's tokenizer.json beside the weights: a prompt with an id past the vocabulary was
    refused only after the weights were read, and one whose ids all fell within it was generated from,
    on the wrong tokens. record and `python -m model summary --text` refuse such a tokenizer by name."""
    from helpers.models import REPO

    ckpt = Path(shutil.copytree(demo_dir, tmp_path / "ckpt"))  # vocab_size 260
    shutil.copy(REPO / "data" / "tokenizer.json", ckpt / "tokenizer.json")  # 4,096 tokens
    code, out, err = run_cli(capsys, "--ckpt", ckpt, "--prompt", prompt, "--no-chat-template", "--max-new-tokens", 2)
    assert code == 2 and out == "", out
    assert err.endswith(f"error: {ckpt / 'tokenizer.json'} has 4096 tokens but the checkpoint's vocab_size is 260: "
                        "tokenizer and checkpoint do not belong together\n"), err
