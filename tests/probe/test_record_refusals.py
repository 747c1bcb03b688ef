"""The record job's refusals: bad flags, inputs and run directories give one-line errors and write
nothing; --overwrite and --resume refuse what they must. (Tables: test_record.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import probe
from probe.record import RecordError, RecordOptions, record
from probe.writer import RunError

from helpers.cli_errors import unwritable_msg, unwritable_out
from helpers.records import rec

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.slow  # a command in a fresh process, then in this one
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
    assert_one_line_error(cli("record", "--ckpt", str(tmp_path / "typo"), "--corpus", corpus, "--out", str(out),
                              capsys=capsys), f"--ckpt {tmp_path / 'typo'}: no such directory")
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
    assert not out.exists()


def test_a_mistyped_gemm_switch_is_refused_before_the_run_is_created(probe_env, tmp_path, capsys, monkeypatch):
    """DSV3_ONEDNN=2 stopped a record at its first large float32 GEMM, after the run was created, and
    left it "interrupted" (the next try asked for --overwrite); on a model too small to choose a path
    the typo went unsaid, and --dry-run passed it. Both switches are now checked before anything is written."""
    ck, corpus, out = str(probe_env["ckpt"]), str(probe_env["corpus"]), tmp_path / "out"
    for name, value in (("DSV3_ONEDNN", "2"), ("DSV3_GEMM_CACHE", "yes")):
        monkeypatch.setenv(name, value)
        for plan in ([], ["--dry-run"]):  # the plan "checks everything": it passed the typo
            assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--max-tokens",
                                      "128", *plan, capsys=capsys), f"{name}={value!r}")
            assert not out.exists()
        monkeypatch.delenv(name)


def test_an_out_the_os_refuses_is_refused_before_the_model_loads(probe_env, tmp_path, capsys, monkeypatch):
    """An --out os.access calls writable (procfs, for root) where nothing can be created was refused
    only after the model loaded and the corpus was counted (a review). --dry-run tries the same write
    and leaves nothing behind."""
    ck, corpus, out = str(probe_env["ckpt"]), str(probe_env["corpus"]), unwritable_out(monkeypatch)
    assert_one_line_error(cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(out), "--max-tokens", "128",
                              capsys=capsys), unwritable_msg("--out", out))
    p = cli("record", "--ckpt", ck, "--corpus", corpus, "--out", str(tmp_path / "run"), "--max-tokens", "128",
            "--dry-run", capsys=capsys)
    assert p.returncode == 0 and list(tmp_path.iterdir()) == [], p.stderr


def test_an_unwritable_out_names_the_os_reason_in_words_that_fit(tmp_path, monkeypatch):
    """Procfs refuses a new entry with ENOENT, and the check said "directory /proc is not writable (No
    such file or directory)", contradicting itself (a tour): each reason is now said as what it means."""
    import errno
    import tempfile

    from probe.job import check_out_parent

    with pytest.raises(RecordError) as e:
        check_out_parent(Path("/proc/foo"))
    assert str(e.value) == unwritable_msg("--out", Path("/proc/foo")) and "No such file" not in str(e.value)

    def refused(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(RecordError, match=rf"^--out {tmp_path}/x: directory {tmp_path} does not accept new files "
                                          r"\(it is on a read-only file system\)$"):
        check_out_parent(tmp_path / "x")


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


def test_a_missing_tokenizer_names_the_flag_that_named_it(probe_env, tmp_path):
    """--tokenizer naming a file that is not there said 'put tokenizer.json in the checkpoint or pass
    --tokenizer', to a user who had passed it (a checkpoint tour); the checkpoint's own is still asked for."""
    with pytest.raises(RecordError, match=r"^--tokenizer \S*nosuch.json: no tokenizer there \(the file does not exist\)$"):
        rec(probe_env, tmp_path / "o", tokenizer=str(tmp_path / "nosuch.json"))
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text((probe_env["ckpt"] / "config.json").read_text())
    with pytest.raises(RecordError, match=r"ck/tokenizer.json: no tokenizer \(put tokenizer.json in the checkpoint or pass --tokenizer\)$"):
        rec(probe_env | {"ckpt": ck}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_tokenizer_that_is_a_git_lfs_pointer_says_so(probe_env, tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize 7847119\n")
    with pytest.raises(RecordError, match=r"not a tokenizers JSON file \(.*\); it is a Git LFS pointer, not the file"):
        rec(probe_env, tmp_path / "o", tokenizer=str(p))
    assert not (tmp_path / "o").exists()


def test_existing_out_needs_a_flag(probe_env, tmp_path, capsys):
    out = rec(probe_env, tmp_path / "r", max_tokens=200, kv_stats=False)
    with pytest.raises(RecordError, match="exists: pass --overwrite"):
        rec(probe_env, out, max_tokens=200)
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "precious.txt").write_text("keep")
    with pytest.raises(RecordError, match="not a run directory"):
        rec(probe_env, tmp_path / "notrun", overwrite=True)
    assert (tmp_path / "notrun" / "precious.txt").exists()
    # what no run writes stays (all of it was deleted: a tour), and is said; the old run's own files go
    (out / "notes.md").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "run.json").write_text("{}")
    (out / "old_table").mkdir()  # a table folder of a name this version does not know
    (out / "old_table" / "part-0.parquet").write_bytes(b"PAR1")
    rec(probe_env, out, max_tokens=100, kv_stats=False, overwrite=True)
    assert probe.open_run(out).info["recorded"]["tokens"] == 100
    assert (out / "notes.md").read_text() == "mine" and (out / "sub" / "run.json").exists()
    assert not (out / "old_table").exists()
    assert f"note: --overwrite kept what no run writes in {out}: notes.md, sub/" in capsys.readouterr().err
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
    # a field of another type: AttributeErrors deep inside report and ablate before (a bad-input audit)
    import json

    info = json.loads((out / "run.json").read_text())
    for field, value, got, want in (("checkpoint", "/m", "string", "an object"), ("options", "oops", "string",
                                                                                 "an object"),
                                    ("tables", 3, "number", "an array"), ("status", ["complete"], "array", "a string")):
        (bad / "run.json").write_text(json.dumps(info | {field: value}))
        with pytest.raises(RunError, match=rf"bad/run.json: field '{field}' is a JSON {got}, not {want} \(a damaged"):
            probe.open_run(bad)
    (bad / "run.json").write_text(json.dumps(info | {"cpu_gemm": None, "checkpoint": {"path": "/m"}}))
    assert probe.open_run(bad).info["checkpoint"] == {"path": "/m"}  # the control: null and the right types pass



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


def test_the_folder_of_a_built_corpus_is_refused_naming_a_split(probe_env, tmp_path):
    """`--corpus corpora/mine`, the folder `data.build_corpus` wrote, instead of one of its splits: its
    manifest.json was recorded as a document of domain `default` beside both splits (a tour). A folder
    whose manifest.json is the user's own is a folder of texts as before."""
    from data.build_corpus import Doc, write_corpus

    built = tmp_path / "mine"
    docs = [Doc(f"d/x/{i:04d}", "d", "s", f"text {i} " * 40) for i in range(4)]
    write_corpus(built, docs, seed=0, val_fraction=0.3, max_chars=None, extra={"source": {}})
    with pytest.raises(RecordError) as e:
        rec(probe_env, tmp_path / "r", corpus=built, max_tokens=200)
    assert str(e.value) == (f"--corpus {built}: a corpus that data.build_corpus wrote, whose manifest.json would be "
                            "read as a document of domain 'default' and its two splits as one corpus; pass one "
                            f"split, e.g. --corpus {built / 'val.jsonl'}")
    assert not (tmp_path / "r").exists()
    (built / "manifest.json").write_text('{"files": "a note of my own"}')
    rec(probe_env, tmp_path / "r", corpus=built, max_tokens=200)
    assert "default" in probe.open_run(tmp_path / "r").info["planned"]["tokens_per_domain"]


def test_a_training_run_given_as_ckpt_names_its_model(probe_env, tmp_path):
    """`--ckpt runs/mine`, the training run, instead of its model/: "not a checkpoint directory" said
    nothing of the model inside it, nor that an unfinished run has none yet."""
    import shutil

    from probe.job import resolve_paths

    train_run, corpus = tmp_path / "mine", str(probe_env["corpus"])
    (train_run / "checkpoint").mkdir(parents=True)
    (train_run / "checkpoint" / "state.pt").write_bytes(b"")
    with pytest.raises(RecordError) as e:
        resolve_paths(str(train_run), corpus, str(tmp_path / "r"))
    assert str(e.value) == (f"--ckpt {train_run}: not a checkpoint directory (no config.json); a training run not "
                            "finished, whose model/ is written when it completes (continue it with python -m train "
                            f"--out {train_run} --resume and the flags it was started with, its run.json's)")
    shutil.copytree(probe_env["ckpt"], train_run / "model")
    with pytest.raises(RecordError) as e:
        resolve_paths(str(train_run), corpus, str(tmp_path / "r"))
    assert str(e.value).endswith(f"(no config.json); a training run: its model is {train_run / 'model'}")


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
    assert (ckpt / "config.json").exists()  # and what no run writes is kept (record --overwrite's rule)


def test_overwrite_refuses_a_training_run(probe_env, tmp_path):
    """`record --out runs/small --overwrite` (a name mistyped) deleted a training run, its trained model
    and checkpoint with it (a tour): --overwrite replaces a run no other command made at such a cost."""
    out = tmp_path / "small"
    for folder in ("train_steps", "model", "checkpoint"):
        (out / folder).mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": "train"}))
    with pytest.raises(RecordError, match=f"^--out {out}: is a training run .train_steps/.; --overwrite would "
                                          "delete its model and checkpoint too"):
        rec(probe_env, out, max_tokens=200, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "model", "run.json", "train_steps"]


def test_resume_keeps_other_commands_tables_and_takes_an_explicit_default_dtype(probe_env, tmp_path):
    """A resume replaced run.json's table list with its own (an ablation's table dropped out of it),
    and refused --dtype float32 for a run recorded without --dtype, saying '--dtype None' (a review)."""
    import json

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=200)
    info = json.loads((out / "run.json").read_text())
    # the dtype the forward ran in, beside the checkpoint's, which model.load takes by default (a researcher
    # reproducing a run in a notebook got bfloat16 numbers; run.json said float32 nowhere)
    assert info["compute_dtype"] == "float32" and info["options"]["dtype"] is None
    (out / "run.json").write_text(json.dumps(info | {"tables": info["tables"] + ["ablations"], "status": "interrupted",
                                                     "ablation_parts": {"p": {"experts": [1]}}}))
    rec(probe_env, out, max_tokens=200, resume=True, dtype="float32")
    after = json.loads((out / "run.json").read_text())
    assert after["compute_dtype"] == "float32"
    assert "ablations" in after["tables"] and after["ablation_parts"] == {"p": {"experts": [1]}}  # the part's entry too
    with pytest.raises(RecordError, match=r"--dtype float32, this command gives bfloat16"):  # the control
        rec(probe_env, out, max_tokens=200, resume=True, dtype="bfloat16")


@pytest.mark.parametrize("extra,want", [
    # it said "--batch-size must be >= 1 and --seq-len >= 2", naming neither the flag at fault nor its value
    (("--seq-len", "0"), "--seq-len 0: must be >= 2 (tokens per window)"),
    (("--seq-len", "1"), "--seq-len 1: must be >= 2 (tokens per window)"),
    (("--batch-size", "0"), "--batch-size 0: must be >= 1 (windows per forward pass)"),
])
def test_a_bad_window_flag_is_named_with_its_value(probe_env, tmp_path, capsys, extra, want):
    out = tmp_path / "out"
    p = cli("record", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out", str(out),
            *extra, capsys=capsys)
    assert (p.returncode, p.stderr) == (2, f"error: {want}\n")
    assert not out.exists()


def test_a_download_gone_wrong_is_one_line_and_leaves_the_run_it_would_overwrite(probe_env, tmp_path, capsys):
    """The ways a download of DeepSeek-V3's FP8 shards goes wrong, on a checkpoint in its layout (FP8
    projections with float32 block scales, bfloat16 elsewhere, several shards and their index, the MTP
    layer after the main ones): each is one line naming the file and the tensor or key, and an --overwrite
    of a complete run refused so leaves that run as it was (a checkpoint tour)."""
    import shutil

    import torch

    import model
    from helpers.checkpoints import edit_config, edit_tensors

    src = tmp_path / "ckpt"
    model.save(model.load(probe_env["ckpt"], dtype=torch.float32), src, fp8=True, dtype="bfloat16",
               max_shard_bytes=100_000)
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", src)
    shards = sorted(src.glob("model-*.safetensors"))
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    w = next(k for k in weight_map if k.endswith("mlp.experts.1.up_proj.weight"))
    shard = src / weight_map[w]
    assert len(shards) >= 3 and weight_map[w + "_scale_inv"] == shard.name
    out = tmp_path / "run"
    corpus = str(probe_env["corpus"])
    assert cli("record", "--ckpt", str(src), "--corpus", corpus, "--out", str(out), "--max-tokens", "64",
               capsys=capsys).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def index_naming(d):
        p = d / "model.safetensors.index.json"
        p.write_text(p.read_text().replace('"weight_map": {', f'"weight_map": {{"{w}.bias": "{shard.name}", '))

    cases = [
        (lambda d: (d / shard.name).unlink(), [shard.name, "is missing"]),
        (lambda d: os.truncate(d / shard.name, shard.stat().st_size - 1000), [shard.name, "it is truncated"]),
        (lambda d: (d / (shard.name + ".aria2")).write_bytes(b"\0" * 32), [shard.name, "download is not finished"]),
        (index_naming, [shard.name, f"tensor {w}.bias listed in the index is not in the file"]),
        (lambda d: edit_tensors(d / shard.name, lambda sd: {k: t for k, t in sd.items() if k != w + "_scale_inv"}),
         [shard.name, f"FP8 tensor {w} has no {w}_scale_inv"]),
        (lambda d: edit_tensors(d / shard.name, lambda sd: sd | {w + "_scale_inv": torch.ones(3, 3)}),
         [shard.name, f"tensor {w}_scale_inv has shape [3, 3], expected [1, 1]"]),
        (lambda d: edit_config(d, lambda c: {k: v for k, v in c.items() if k != "hidden_size"}),
         ["config.json", "missing required keys ['hidden_size']"]),
        (lambda d: edit_config(d, lambda c: c | {"model_type": "qwen2_moe"}),
         ["config.json", "unsupported model_type 'qwen2_moe'"]),
    ]
    for i, (damage, needles) in enumerate(cases):
        d = shutil.copytree(src, tmp_path / f"bad{i}")
        damage(d)
        assert_one_line_error(cli("record", "--ckpt", str(d), "--corpus", corpus, "--out", str(out), "--max-tokens",
                                  "64", "--overwrite", capsys=capsys), str(d), *needles)
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_writing_ranks_that_do_not_see_the_run_are_named_with_their_out(tmp_path):
    """Two replicas (two writers), rank 1 given a folder rank 0 did not create the run in: every rank
    stopped with rank 0's --out alone ("a writing rank does not see run.json there"), rank 0's line
    naming the one folder that held the run. Each now names the ranks that did not see it and where
    they looked (the paths may differ from node to node). The launch: tests/e2e/test_mp_resume.py."""
    from types import SimpleNamespace

    from helpers.thread_ranks import ThreadRanks
    from probe.record import _create, not_seen

    run, elsewhere = tmp_path / "run", tmp_path / "not-shared"

    def create() -> None:  # rank 0, as record's
        run.mkdir()
        (run / "run.json").write_text("{}")

    got = ThreadRanks(2).run(lambda world: _create(SimpleNamespace(out=(run, elsewhere)[world.rank]), world, create))
    assert got == [(str(run), [(1, str(elsewhere))])] * 2
    assert not_seen(*got[0]) == (f"--out {run}: rank 0 created the run there, but writing rank 1 (--out {elsewhere}) "
                                 "does not see its run.json: under several nodes the run directory must be on a "
                                 "filesystem every node shares (the run is marked interrupted: continue it with "
                                 "--resume once every node sees it)")
    assert not_seen("/a", [(1, "/b"), (3, "/c")]).startswith(
        "--out /a: rank 0 created the run there, but writing ranks 1 (--out /b) and 3 (--out /c) do not see its")
    assert ThreadRanks(2).run(lambda world: _create(SimpleNamespace(out=run), world, lambda: None)) == \
        [(str(run), [])] * 2  # a shared --out: every writer sees it
