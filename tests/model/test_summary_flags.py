"""`python -m model summary`: flags the run would not use are refused by name, before any model is
built (they were dropped silently), and a --ckpt that is not a directory is named as the flag."""

import pytest

from model.__main__ import main


@pytest.mark.parametrize("argv, msg", [
    (["--ckpt", "{ckpt}", "--config", "16B"], "--config 16B: random weights of a shipped config, not with --ckpt"),
    (["--ckpt", "{ckpt}", "--text", "hi", "--batch", "2"], "--batch 2: sizes the random tokens, not with --text"),
    (["--ckpt", "{ckpt}", "--text", "hi", "--seq-len", "8"], "--seq-len 8: sizes the random tokens, not with --text"),
    (["--ckpt", "{missing}"], "--ckpt {missing}: no such directory"),
    (["--ckpt", "{file}"], "--ckpt {file}: not a checkpoint directory"),
    (["--seq-len", "257"], "--seq-len 257: longer than the model's max_seq_len 256"),  # the tiny config's
    # read as "not given" (an unset shell variable): a summary of random tiny weights, not of the checkpoint
    (["--config", " "], "--config ' ': an empty name"),
])
def test_summary_refuses_unused_flags_and_names_ckpt(argv, msg, tmp_path, capsys):
    paths = {"ckpt": str(tmp_path), "missing": str(tmp_path / "nope"), "file": str(tmp_path / "f.txt")}
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["summary", *[a.format(**paths) for a in argv]])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"error: {msg.format(**paths)}") and err.count("\n") == 1, err


@pytest.mark.parametrize("value", ["", " "])
def test_summary_refuses_an_empty_ckpt_as_every_path_flag_is_refused(value, capsys):
    """--ckpt '' was read as "not given" (a summary of random tiny weights); its type is now the other
    commands' (probe.job.path_text), and so is the message."""
    with pytest.raises(SystemExit) as e:
        main(["summary", "--ckpt", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith("error: argument --ckpt: an empty path (for the current folder, give .)\n")


def test_summary_defaults_still_apply(capsys):
    main(["summary", "--batch", "2", "--seq-len", "8"])
    assert "forward: (2, 8) tokens" in capsys.readouterr().out
    main(["summary", "--config", "tiny", "--seq-len", "8"])  # --batch's default, 4
    assert "forward: (4, 8) tokens" in capsys.readouterr().out


def test_summary_text_runs_as_record_feeds_it(capsys):
    """--text went through the raw tokenizer: no BOS (record and generate put it first, so the loss
    printed was not a run's), and bytes that are not UTF-8 in argv were a TypeError traceback."""
    import torch

    import model
    from generate import load_codec
    from helpers.models import REPO

    ckpt = REPO / "data" / "model"
    ids = load_codec(ckpt).encode("def f(x):", chat=False)
    assert ids[0] == 0 and len(ids) > 2  # the bundled tokenizer config asks for BOS
    m = model.load(ckpt, dtype=torch.float32)
    with torch.no_grad():
        logits = m(torch.tensor([ids]))
    want = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids[1:])).item()
    main(["summary", "--ckpt", str(ckpt), "--text", "def f(x):"])
    out = capsys.readouterr().out
    assert f"forward: (1, {len(ids)}) tokens" in out and f"next-token loss on these tokens: {want:.3f} " in out, out
    main(["summary", "--ckpt", str(ckpt), "--text", "caf\udce9"])  # b"caf\xe9" in argv: not UTF-8
    assert "forward: (1, " in capsys.readouterr().out
    long = " word" * m.args.max_seq_len
    with pytest.raises(SystemExit):
        main(["summary", "--ckpt", str(ckpt), "--text", long])
    n = len(load_codec(ckpt).encode(long, chat=False))
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: --text: {n:,} tokens, longer than the model's max_seq_len 1024\n"


@pytest.mark.parametrize("text", ["def f(x):", "a"])
def test_summary_refuses_a_tokenizer_larger_than_the_checkpoints_vocabulary(text, tiny_dir, tmp_path, capsys):
    """A tokenizer.json of another model beside the weights: a text with an id past the vocabulary was the
    forward's 'tokens: token ids must be in [0, 512)' (naming neither the file nor the flag), and one whose
    ids all fell within it ran, its loss that of the wrong tokens. record refuses such a tokenizer by name."""
    import shutil

    from helpers.models import REPO

    ckpt = shutil.copytree(tiny_dir, tmp_path / "ckpt")  # vocab_size 512
    shutil.copy(REPO / "data" / "tokenizer.json", ckpt / "tokenizer.json")  # 4,096 tokens
    with pytest.raises(SystemExit) as e:
        main(["summary", "--ckpt", str(ckpt), "--text", text])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err == (f"error: {ckpt / 'tokenizer.json'} has 4096 tokens but the checkpoint's vocab_size is 512: "
                   "tokenizer and checkpoint do not belong together\n"), err


@pytest.mark.slow  # a command end to end in a fresh process (the quick loop leaves these out)
@pytest.mark.parametrize("argv", [["params", "--config", "tiny", "--world-size", "2"],
                                  ["summary", "--batch", "1", "--seq-len", "4"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    from helpers.processes import reader_gone

    code, err = reader_gone("-m", "model", *argv)
    assert code == 141 and err == "", err


def test_summary_refuses_a_batch_beyond_memory_and_a_seed_torch_cannot_take(capsys, monkeypatch):
    # both were tracebacks: the allocator's for 10**12 rows of random tokens, torch's overflow for the seed
    import model.commands as cli

    monkeypatch.setattr(cli, "available_memory", lambda: 2**30)
    for argv, msg in ((["--batch", str(10**12)], f"--batch {10**12} x --seq-len 128: the logits alone would take "),
                      (["--seed", str(10**23)], f"--seed {10**23}: out of range")):
        with pytest.raises(SystemExit) as e:
            main(["summary", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {msg}") and err.count("\n") == 1, err


def test_params_refuses_an_infinite_device_memory(capsys):
    # it printed "fits inf GB per rank with inf GB to spare"
    with pytest.raises(SystemExit) as e:
        main(["params", "--config", "tiny", "--world-size", "2", "--device-memory", "inf"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: --device-memory inf: must be a finite number of GB per rank\n", err


@pytest.mark.parametrize("command", ["params", "summary"])
def test_a_config_that_is_not_shipped_is_refused_naming_the_flag(command, capsys):
    # it was ModelArgs.from_name's "no shipped config 'nope'; available: [...]", which named no flag
    with pytest.raises(SystemExit) as e:
        main([command, "--config", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: --config nope: not a shipped config; available: 16B, 236B, 671B, " \
        "V3.1, tiny\n", err
