"""The command line of generation (python -m generate) and its codec: the chat format and stops, prompt
files, streaming, interactive turns, Ctrl-C, bad input and flags that change nothing (the library's
decoding and sampling: test_generate.py)."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from generate import ASSISTANT, USER, GenerateError, generate, load_codec, read_prompts, write_demo_checkpoint
from generate.__main__ import Streamer

from helpers.generate_cli import run_cli
from helpers.cli_errors import unwritable_msg, unwritable_out

ROOT = Path(__file__).resolve().parents[2]


def test_codec_chat_format_and_stops(demo_dir):
    from model import ModelArgs
    codec = load_codec(demo_dir, ModelArgs.from_hf_config(demo_dir))
    assert codec.chat and codec.bos_id == 0 and codec.stop_ids == [1]
    tok = codec.tokenizer
    chat = codec.encode("héllo")
    assert chat == [0] + tok.encode(USER + "héllo" + ASSISTANT, add_special_tokens=False).ids
    assert chat[1] == tok.token_to_id(USER) and chat[-1] == tok.token_to_id(ASSISTANT)
    assert codec.encode("héllo", chat=False) == [0] + tok.encode("héllo", add_special_tokens=False).ids
    assert codec.encode("x", system="Be brief.")[1:4] == tok.encode("Be ", add_special_tokens=False).ids
    assert codec.decode(chat) == "héllo"  # special tokens are not shown
    # a config that leaves BOS to the chat template (add_bos_token false, as DeepSeek's does): chat prompts
    # still start with it, raw ones do not (chat prompts went without it; a review)
    import shutil

    nobos = demo_dir.parent / "nobos"
    if not nobos.exists():
        shutil.copytree(demo_dir, nobos)
        cfg = json.loads((nobos / "tokenizer_config.json").read_text())
        (nobos / "tokenizer_config.json").write_text(json.dumps(cfg | {"add_bos_token": False}))
    c2 = load_codec(nobos, ModelArgs.from_hf_config(nobos))
    assert c2.encode("héllo") == chat and c2.encode("héllo", chat=False) == chat_free(tok, "héllo")
    (nobos / "generation_config.json").write_text('{"eos_token_id": "x"}')  # a traceback before (a review)
    with pytest.raises(GenerateError, match=r"generation_config.json: eos_token_id='x' must be a token id"):
        load_codec(nobos, ModelArgs.from_hf_config(nobos))
    (nobos / "generation_config.json").write_text('{"eos_token_id": [1, 5]}')
    assert load_codec(nobos, ModelArgs.from_hf_config(nobos)).stop_ids == [1, 5]
    # streaming holds back an incomplete UTF-8 character
    s = Streamer(codec, 1)
    b1, b2 = tok.encode("é", add_special_tokens=False).ids
    assert s.push(0, b1) == "" and s.push(0, b2) == "é"
    # a model's vocabulary may be wider than its tokenizer's (DeepSeek-V3's): an id past the tokenizer's has no
    # text, and the stream goes on (codec.decode refuses it; the stream does not ask it)
    past = tok.get_vocab_size(with_added_tokens=True)
    assert s.push(0, past) == "" and s.push(0, b1) == "" and s.push(0, b2) == "é" and s.text(0) == "éé"


def chat_free(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def test_read_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n  second  \n")
    assert read_prompts(f) == ["first prompt", "  second  "]
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n{"prompt": "b c", "id": 2}\n')
    assert read_prompts(j) == ["a", "b c"]
    # lines end at "\n" (and "\r\n") only: a form feed or U+2028 inside a prompt split it in two, and
    # broke a JSON line that holds one raw (found by a review)
    f.write_bytes("def a():\x0c    pass\r\nline\u2028two\x85\n".encode())
    assert read_prompts(f) == ["def a():\x0c    pass", "line\u2028two\x85"]
    j.write_text(json.dumps({"prompt": "p\u2028q\x85"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_prompts(j) == ["p\u2028q\x85"]
    for text, msg in [("", "no prompts \\(the file is empty\\)"),
                      ("\n  \n", "no prompts \\(the file is blank lines only\\)$"),  # it said 'empty'
                      ('{"prompt": "a"}\n{"text": "b"}\n',
                       ':2: each JSON line needs a non-empty string field "prompt"'),
                      ('{"prompt": "a"}\nnot json\n', ":2: not valid JSON")]:
        f.write_text(text)
        with pytest.raises(GenerateError, match=msg):
            read_prompts(f)
    with pytest.raises(GenerateError, match="missing.txt: no such file$"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(GenerateError, match="is a directory, not a prompt file$"):
        read_prompts(tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(GenerateError, match=r"latin1.txt: not UTF-8 text \(invalid continuation byte at byte 3\)$"):
        read_prompts(tmp_path / "latin1.txt")
    # a UTF-8 byte-order mark (some editors write one) is not prompt text, nor a JSON error (a review)
    f.write_bytes(b"\xef\xbb\xbffirst\nsecond\n")
    assert read_prompts(f) == ["first", "second"]
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a"}).encode() + b"\n")
    assert read_prompts(j) == ["a"]


def test_cli_batch_file_jsonl_output(demo_dir, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("hello\nsomething longer, with ünïcode\nx\n")
    out_file = tmp_path / "new" / "out.jsonl"  # a folder not there yet is made (it failed after generating)
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt-file", f, "--max-new-tokens", 6, "--mtp",
                             "--output", out_file)
    assert code == 0, err
    assert all(f"[{i}] " in out for i in range(3))
    assert "tokens per forward pass; MTP drafts accepted" in err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "something longer, with ünïcode", "x"]
    assert all(len(r["tokens"]) <= 6 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(r["drafts_proposed"][0] >= r["drafts_accepted"][0] for r in rows)


def test_cli_single_prompt_streams_and_matches_library(demo_dir, capsys):
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--max-new-tokens", 5,
                             "--no-chat-template")
    assert code == 0, err
    import model
    from model import ModelArgs
    codec = load_codec(demo_dir, ModelArgs.from_hf_config(demo_dir))
    m = model.load(demo_dir)
    res = generate(m, [codec.encode("hi", chat=False)], max_new_tokens=5, stop_ids=codec.stop_ids)
    assert out == codec.decode(res.tokens[0]) + "\n"


def test_a_prompt_near_max_seq_len_is_said_to_cut_max_new_tokens(demo_dir, capsys):
    """A prompt of 255 of max_seq_len=256 tokens got 1 of --max-new-tokens 4 (256: none) with nothing said."""
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "y" * 254, "--prompt", "short",
                             "--max-new-tokens", 4, "--no-chat-template")
    assert code == 0, err
    assert "note: --prompt #1: 255 tokens leave room for 1 of --max-new-tokens 4 (max_seq_len=256)" in err
    assert "--prompt #2" not in err


def test_cli_interactive(demo_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\n\nsecond\n/exit\nnever\n"))
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 3)
    assert code == 0, err
    assert err.count("tokens/s") == 2 and err.count("> ") == 4  # two prompts, one blank line, /exit
    # a line too long for the model is an error for that line; the session goes on (it ended; a review)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\n" + "word " * 1500 + "\nsecond\n"))
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 3)
    assert code == 0 and err.count("tokens/s") == 2, err
    assert "error: this prompt: 7,503 tokens, longer than max_seq_len=256\n" in err, err  # 'prompt 0' of a typed line


def test_cli_ctrl_c_is_one_line(demo_dir, capsys, monkeypatch):
    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", CtrlC())
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 3)
    assert code == 130 and err.rstrip().endswith("interrupted") and "Traceback" not in err, err


def test_cli_ctrl_c_after_turns_says_what_was_appended(demo_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C after an --interactive turn had been appended to --output said "nothing was appended"
    (found by a review)."""
    class TwoTurnsThenCtrlC(io.StringIO):
        def readline(self, *a):
            line = super().readline(*a)
            if not line:
                raise KeyboardInterrupt
            return line

    out = tmp_path / "turns.jsonl"
    monkeypatch.setattr(sys, "stdin", TwoTurnsThenCtrlC("first\nsecond\n"))
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 3, "--output", out)
    assert code == 130 and "interrupted (2 lines appended to" in err, err
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["first", "second"]


def test_cli_errors(demo_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    no_tok = Path(shutil.copytree(demo_dir, tmp_path / "no_tok"))
    (no_tok / "tokenizer.json").unlink()
    afile = tmp_path / "afile"
    afile.write_text("x")
    long = tmp_path / "long.txt"
    long.write_text("ok\n\n" + "y" * 300 + "\n")
    run_dir = tmp_path / "run"
    shutil.copytree(demo_dir, run_dir / "model")
    cases = [
        (["--ckpt", demo_dir, "--prompt-file", empty], f"--prompt-file {empty}: no prompts (the file is empty)"),
        (["--ckpt", demo_dir, "--prompt-file", tmp_path / "none.txt"], f"--prompt-file {tmp_path / 'none.txt'}: no such file"),
        (["--ckpt", no_tok, "--prompt", "hi"], "no tokenizer.json (generation needs the checkpoint's tokenizer)"),
        # named as given, counted from 1 (it said 'prompt 0 has 301 tokens', counted over all sources)
        (["--ckpt", demo_dir, "--prompt", "y" * 300], "--prompt #1: 301 tokens, longer than max_seq_len=256"),
        (["--ckpt", demo_dir, "--prompt", "a", "--prompt-file", long],
         f"--prompt-file {long}: prompt 2: 301 tokens, longer than max_seq_len=256"),
        (["--ckpt", demo_dir], "give --prompt, --prompt-file or --interactive"),
        (["--ckpt", tmp_path / "nowhere", "--prompt", "a"], f"--ckpt {tmp_path / 'nowhere'}: no such directory"),
        (["--ckpt", afile, "--prompt", "a"], f"--ckpt {afile}: not a checkpoint directory"),
        # a training run's --out folder (its model is in model/): the error pointed at config.json alone
        (["--ckpt", run_dir, "--prompt", "a"], f"a training run keeps its model in {run_dir / 'model'}"),
        # a bad sampling value names the flag typed, not SamplingParams' field (it said "top_p=1.5")
        (["--ckpt", demo_dir, "--prompt", "a", "--top-p", "1.5"], "--top-p 1.5 must be in (0, 1]"),
        (["--ckpt", demo_dir, "--prompt", "a", "--temperature", "-1"], "--temperature -1.0 must be >= 0 and finite"),
        (["--ckpt", demo_dir, "--prompt", "a", "--top-k", "-2"], "--top-k -2 must be an integer >= 0"),
        (["--ckpt", demo_dir, "--prompt", "a", "--seed", str(2**64)], f"--seed {2**64} is out of range"),
        (["--ckpt", demo_dir, "--prompt", "a", "--gemm", "fp8"],
         "gemm_impl='fp8' (--gemm fp8) needs an FP8 checkpoint"),
        # where nothing can be written: refused before the model loads, not a traceback after generating
        (["--ckpt", demo_dir, "--prompt", "a", "--output", afile / "x.jsonl"], "afile is a file, not a directory"),
        (["--ckpt", demo_dir, "--prompt", "a", "--output", tmp_path], "is a directory, not a file"),
        (["--demo", afile / "demo", "--prompt", "a"], f"--demo {afile / 'demo'}: {afile} is a file"),
        # a checkpoint kept without its tokenizer had its config.json and weights replaced by the demo's
        (["--demo", no_tok, "--prompt", "a"], f"--demo {no_tok}: the folder holds config.json but no tokenizer.json"),
    ]
    before = {f.name: f.read_bytes() for f in no_tok.iterdir()}
    for argv, msg in cases:
        code, out, err = run_cli(capsys, *argv, "--no-chat-template")
        assert code == 2, argv
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
    assert {f.name: f.read_bytes() for f in no_tok.iterdir()} == before


def test_the_demo_is_written_whole_into_a_new_or_empty_folder_only(tmp_path, monkeypatch):
    """write_demo_checkpoint wrote into any folder without config.json and tokenizer.json (a review),
    over what it held, and a write cut short left a half checkpoint there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_demo_checkpoint(empty) == empty and (empty / "tokenizer.json").exists()
    kept = (empty / "config.json").stat().st_mtime_ns
    assert write_demo_checkpoint(empty) == empty and (empty / "config.json").stat().st_mtime_ns == kept

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep")
    with pytest.raises(GenerateError, match=f"{notes}: the folder holds files, not a demo checkpoint"):
        write_demo_checkpoint(notes)
    assert [f.name for f in notes.iterdir()] == ["mine.txt"]

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("model.save", full_disk)
    with pytest.raises(OSError):
        write_demo_checkpoint(tmp_path / "cut")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty", "notes"]  # no half demo, no temporary


def test_an_output_the_os_refuses_is_refused_before_the_model_loads(demo_dir, capsys, monkeypatch):
    """--output where os.access says yes but the OS refuses new entries (procfs, for root) failed only
    after generating (a review): one line naming --output, before the model loads."""
    out = unwritable_out(monkeypatch, "dsv3-generate.jsonl")
    code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "a", "--output", out, "--no-chat-template")
    assert code == 2 and err.startswith(f"error: {unwritable_msg('--output', out)}") and err.count("\n") == 1, err


def test_a_bad_kernel_setting_is_one_line(tmp_path, capsys, monkeypatch):
    """DSV3_KERNELS=bogus was a traceback from generate (record and ablate said it in one line; a review)."""
    from helpers.models import REPO
    from model.saving import fp8_copy

    fp8 = fp8_copy(REPO / "data" / "model", tmp_path / "fp8")  # whole 128-blocks: its GEMMs run the kernels
    monkeypatch.setenv("DSV3_KERNELS", "bogus")
    code, out, err = run_cli(capsys, "--ckpt", fp8, "--gemm", "fp8", "--prompt", "a", "--no-chat-template")
    assert code == 2 and err.startswith("error: DSV3_KERNELS='bogus': choose one of") and err.count("\n") == 1, err


def test_text_that_is_not_utf8_and_crlf_lines_and_a_foreign_chat_template(demo_dir, tmp_path, capsys, monkeypatch):
    """Bytes that are not UTF-8 (lone surrogates in argv, stdin or JSON) were a TypeError traceback and
    ended an interactive session; an interactive CRLF line kept its \\r; a chat template whose markers
    the tokenizer lacks sent V3's markers as plain text (a review)."""
    import shutil

    codec = load_codec(demo_dir)
    assert codec.encode("caf\udce9") == codec.encode("caf\ufffd")
    monkeypatch.setattr(sys, "stdin", io.StringIO("caf\udce9\nsecond\n"))
    code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 3)
    assert code == 0 and err.count("tokens/s") == 2, err
    seen = []
    import generate.__main__ as cli

    real = cli._run_batch
    monkeypatch.setattr(cli, "_run_batch",
                        lambda m, c, lines, *a, **k: seen.append(lines) or real(m, c, lines, *a, **k))
    monkeypatch.setattr(sys, "stdin", io.StringIO("The cat\r\n"))
    assert run_cli(capsys, "--ckpt", demo_dir, "--interactive", "--max-new-tokens", 2)[0] == 0
    assert seen == [["The cat"]]
    other = Path(shutil.copytree(demo_dir, tmp_path / "v2chat"))
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"[UNK]": 0, "User:": 1}, unk_token="[UNK]"))
    tok.save(str(other / "tokenizer.json"))
    cfg = json.loads((other / "tokenizer_config.json").read_text()) | {"chat_template": "User: {{ m }} Assistant:"}
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    c2 = load_codec(other)
    assert not c2.chat and "its chat template is not DeepSeek-V3's" in capsys.readouterr().err


def test_sampling_flags_at_temperature_0_are_said_to_change_nothing(demo_dir, capsys):
    """--top-p, --top-k and --seed at the default --temperature 0 (greedy) were dropped silently: a
    greedy answer could be taken for a sampled one (a review). One note names them; with a temperature
    there is none, and the greedy tokens are the same with or without them."""
    base = ["--ckpt", demo_dir, "--prompt", "ab", "--max-new-tokens", "3", "--no-chat-template"]
    code, plain, err = run_cli(capsys, *base)
    assert code == 0 and "note:" not in err
    code, out, err = run_cli(capsys, *base, "--top-p", "0.5", "--seed", "3")
    assert code == 0 and out == plain
    assert err.splitlines()[0] == ("note: --top-p, --seed have no effect at --temperature 0 (greedy decoding); "
                                   "give a temperature above 0 to sample")
    code, _, err = run_cli(capsys, *base, "--top-k", "2")
    assert code == 0 and "note: --top-k has no effect at --temperature 0" in err
    code, _, err = run_cli(capsys, *base, "--temperature", "0.7", "--top-p", "0.5")
    assert code == 0 and "note:" not in err


def test_replicate_in_one_process_is_said_to_change_nothing(demo_dir, capsys):
    """--replicate outside torchrun was dropped silently (a review): one process holds a whole model anyway."""
    base = ["--ckpt", demo_dir, "--prompt", "ab", "--max-new-tokens", "3", "--no-chat-template"]
    code, plain, _ = run_cli(capsys, *base)
    code, out, err = run_cli(capsys, *base, "--replicate")
    assert code == 0 and out == plain
    assert err.splitlines()[0] == ("note: --replicate has no effect in one process (under torchrun it loads a "
                                   "whole model on every rank)")


def test_cli_dtype_takes_the_names_model_load_takes(demo_dir, capsys, monkeypatch):
    """--dtype offered only bfloat16 and float32; it takes what model.load takes (short names too),
    and anything else is a one-line error naming the flag."""
    import model
    loaded = []
    real_load = model.load

    def spy(*a, **kw):
        m = real_load(*a, **kw)
        loaded.append(m.embed.weight.dtype)
        return m
    monkeypatch.setattr(model, "load", spy)
    for name, want in [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp64", torch.float64),
                       ("float64", torch.float64), ("fp32", torch.float32), ("bfloat16", torch.bfloat16)]:
        code, _, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--max-new-tokens", 2,
                               "--no-chat-template", "--dtype", name)
        assert code == 0 and loaded[-1] == want, (name, err)
    for bad in ["fp8", "int32", "float8_e4m3fn", "half-ish"]:
        code, out, err = run_cli(capsys, "--ckpt", demo_dir, "--prompt", "hi", "--dtype", bad)
        assert code == 2 and not out, err
        assert err.startswith(f"error: --dtype={bad!r}: expected a floating-point") and err.count("\n") == 1, err
