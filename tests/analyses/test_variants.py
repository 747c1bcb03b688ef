"""`python -m analyses.variants no-router-bias`: the router biases zeroed, every other tensor and file
unchanged, the variant routes differently from the original on the same windows (run vs run)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from analyses import variants
from helpers import make_corpus, make_probe_ckpt
from helpers.cli_errors import one_line, unwritable_msg, unwritable_out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("variant")
    corpus = make_corpus(d / "corpus", docs_per_domain=2)
    return make_probe_ckpt(d / "ckpt", corpus), corpus


def test_no_router_bias_zeroes_only_the_bias(ckpt, tmp_path):
    src, _ = ckpt
    out, n = variants.without_router_bias(src, tmp_path / "nb")
    a = {k: v for f in sorted(src.glob("*.safetensors")) for k, v in load_file(f).items()}
    b = {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert a.keys() == b.keys() and n == sum(k.endswith(variants.BIAS) for k in a) > 0
    for k in a:
        if k.endswith(variants.BIAS):
            assert a[k].abs().sum() > 0 and (b[k] == 0).all(), k  # negative control: the source had a bias
        else:
            assert torch.equal(a[k], b[k]), k
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))
    # the weights keep the source's mode (safetensors wrote 0600: unreadable to a serving account)
    assert {f.name: f.stat().st_mode for f in out.glob("*.safetensors")} == {
        f.name: f.stat().st_mode for f in src.glob("*.safetensors")}


def test_the_checkpoints_folders_and_other_files_are_copied_too(ckpt, tmp_path, capsys):
    """Only the top folder's files other than .safetensors were copied: a checkpoint's subfolders
    (DeepSeek-V3's inference/ code and configs) and a .safetensors file a load does not read were
    missing from the variant without a word (a tour). And as the folders are copied, an --out inside
    --ckpt (copied into itself) or holding it (--overwrite deleted the source) is refused."""
    import shutil

    src = shutil.copytree(ckpt[0], tmp_path / "src")
    (src / "inference" / "configs").mkdir(parents=True)
    (src / "inference" / "configs" / "config_671B.json").write_text('{"dim": 7168}')
    (src / "inference" / "generate.py").write_text("print('hi')\n")
    (src / "adapter.safetensors").write_bytes(b"not read by a load")
    out, _ = variants.without_router_bias(src, tmp_path / "nb")
    for rel in ("inference/configs/config_671B.json", "inference/generate.py", "adapter.safetensors"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(src / "nb")]) == 2
    err = capsys.readouterr().err
    want = f"error: --out {src / 'nb'}: is inside the checkpoint --ckpt {src}, which it would overwrite or add to"
    assert err == want + "; write elsewhere\n" and not (src / "nb").exists()
    inner = shutil.copytree(src, out / "base")
    assert variants.main(["no-router-bias", "--ckpt", str(inner), "--out", str(out), "--overwrite"]) == 2
    assert f"--overwrite would delete it, and --ckpt {inner} lies inside it" in capsys.readouterr().err
    assert (inner / "config.json").exists()


def test_overwrite_replaces_only_what_a_variant_is_made_of(ckpt, tmp_path, capsys):
    """--overwrite replaced the whole folder, deleting a user's notes and results kept beside the variant,
    where `record --overwrite` keeps what is not its own (a tour). What the new variant writes and an
    earlier variant's weights and index (another checkpoint's shards: a load would read the stale
    index) go; the rest stays and is named in one note."""
    out, _ = variants.without_router_bias(ckpt[0], tmp_path / "nb")
    (out / "notes.txt").write_text("mine")
    (out / "results").mkdir()
    (out / "results" / "agreement.csv").write_text("1,2")
    (out / "model-00002-of-00002.safetensors").write_bytes(b"an earlier variant's shard")
    argv = ["no-router-bias", "--ckpt", str(ckpt[0]), "--out", str(out), "--overwrite"]
    assert variants.main(argv) == 0
    err = capsys.readouterr().err
    assert err == f"note: --overwrite kept what no variant writes in {out}: notes.txt, results/\n", err
    assert (out / "notes.txt").read_text() == "mine" and (out / "results" / "agreement.csv").read_text() == "1,2"
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in ckpt[0].iterdir()] + ["notes.txt", "results"])
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*"))  # no temporary or old folder left


def test_overwrite_refuses_a_symlinked_out_as_record_does(ckpt, tmp_path, capsys):
    """--out LINK --overwrite, LINK a symbolic link to a variant, replaced the link by a folder and left
    the link under a hidden name for good; record and import sglang refuse such an --out (a tour)."""
    out, _ = variants.without_router_bias(ckpt[0], tmp_path / "nb")
    (tmp_path / "link").symlink_to(out)
    assert variants.main(["no-router-bias", "--ckpt", str(ckpt[0]), "--out", str(tmp_path / "link"), "--overwrite"]) == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'link'}: a symbolic link (to {out}); --overwrite "
                                       "replaces a checkpoint directory: pass the directory itself\n")
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["link", "nb"]


def test_errors_are_one_line(ckpt, tmp_path, capsys, monkeypatch):
    src, _ = ckpt
    (tmp_path / "exists").mkdir()
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(tmp_path / "exists")]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    (tmp_path / "exists" / "thesis.txt").write_text("keep")  # --overwrite replaces a checkpoint, nothing else
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(tmp_path / "exists"), "--overwrite"]) == 2
    assert "is not a checkpoint directory (no config.json): refusing to delete it" in capsys.readouterr().err
    assert (tmp_path / "exists" / "thesis.txt").read_text() == "keep"
    assert variants.main(["no-router-bias", "--ckpt", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and err.count("\n") == 1
    (tmp_path / "afile").write_text("x")
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(tmp_path / "afile" / "v")]) == 2
    want = f"error: --out {tmp_path / 'afile' / 'v'}: {tmp_path / 'afile'} is a file, not a directory\n"
    assert capsys.readouterr().err == want
    proc = unwritable_out(monkeypatch, "dsv3-variant")  # os.access says yes; the OS refuses new entries
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(proc)]) == 2
    assert unwritable_msg("--out", proc) in capsys.readouterr().err
    # --out the source itself with --overwrite replaced the bundled model with its variant (a review)
    before = {f.name: f.read_bytes() for f in src.glob("*.safetensors")}
    assert variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(src), "--overwrite"]) == 2
    assert "is the checkpoint the variant is made from" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in src.glob("*.safetensors")} == before
    nb, _ = variants.without_router_bias(src, tmp_path / "nb")
    from safetensors.torch import save_file
    for f in nb.glob("*.safetensors"):  # a V3 checkpoint whose biases were dropped is refused as a load does
        save_file({k: v for k, v in load_file(f).items() if not k.endswith(variants.BIAS)}, f)
    with pytest.raises(variants.VariantError) as e:
        variants.without_router_bias(nb, tmp_path / "nb2")
    assert one_line(e) == (f"{nb / 'model.safetensors'}: tensor model.layers.1.mlp.gate.{variants.BIAS} listed in "
                           "the index is not in the file")


def test_a_router_without_bias_has_nothing_to_remove(tmp_path):
    """A softmax router (DeepSeek-V2 style) has no balancing bias: refused before anything is written."""
    import model
    from helpers.models import random_model

    m = random_model("tiny", score_func="softmax", model_type="deepseek_v2", norm_topk_prob=False,
                     n_expert_groups=1, n_limited_groups=1, n_mtp_layers=0)
    model.save(m, tmp_path / "v2")
    (tmp_path / "out").mkdir()
    with pytest.raises(variants.VariantError) as e:
        variants.without_router_bias(tmp_path / "v2", tmp_path / "out" / "nb")
    assert one_line(e) == f"{tmp_path / 'v2'}: no `{variants.BIAS}` tensor: the checkpoint has no balancing bias to remove"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_compare_run_records_the_variant_over_the_same_windows(ckpt, tmp_path):
    import probe
    from analyses.metrics import routing_agreement_from_runs
    from analyses.notebook_utils import compare_run
    from probe.record import RecordOptions, record

    src, corpus = ckpt
    record(RecordOptions(ckpt=str(src), corpus=str(corpus), out=str(tmp_path / "run"), max_tokens=600, seq_len=64,
                         progress=False, kv_stats=False, mtp=False))
    run = probe.open_run(tmp_path / "run")
    other = compare_run(run)
    assert other.path.name == "run-no-router-bias" and (tmp_path / "run-no-router-bias-ckpt" / "config.json").exists()
    agr = routing_agreement_from_runs(run, other)
    assert (agr.share_of_a == 1).all() and (agr.share_of_b == 1).all()  # the same windows
    assert (agr.top1_same < 1).any()  # the bias decided some routes
    assert compare_run(run).path == other.path  # reused, not recorded again


def test_no_router_bias_keeps_every_other_file_and_the_weights_metadata(ckpt, tmp_path):
    import shutil

    from safetensors import safe_open

    src = shutil.copytree(ckpt[0], tmp_path / "src")
    (src / "tokenizer.model").write_bytes(b"\x00sentencepiece")  # files other than JSON come along too
    (src / "README.md").write_text("a model card")
    out, _ = variants.without_router_bias(src, tmp_path / "nb")
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
        else:  # the metadata ({"format": "pt"}, which transformers checks) kept
            with safe_open(str(f), "pt") as a, safe_open(str(out / f.name), "pt") as b:
                assert a.metadata() and b.metadata() == a.metadata()


def test_a_refused_variant_leaves_no_temporary_folder(ckpt, tmp_path):
    import shutil

    from safetensors.torch import save_file

    src = shutil.copytree(ckpt[0], tmp_path / "src")
    for f in src.glob("*.safetensors"):
        save_file({k: v for k, v in load_file(f).items() if not k.endswith(variants.BIAS)}, f)
    (tmp_path / "out").mkdir()
    with pytest.raises(variants.VariantError, match=f"tensor model.layers.1.mlp.gate.{variants.BIAS} listed in the index"):
        variants.without_router_bias(src, tmp_path / "out" / "nb")
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_while_copying_leaves_no_temporary_folder(ckpt, tmp_path, capsys, monkeypatch):
    """SIGTERM (`timeout`, a scheduler) ended the copy where it stood: its temporary folder, a copy of
    the checkpoint under a name with the process id that no later run removes, stayed (a tour)."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    real = variants.shutil.copymode

    def terminated(*a):
        real(*a)
        # without a handler of the command's own, SIGTERM would end the test process itself
        assert signal.getsignal(signal.SIGTERM) is not before, "SIGTERM is left to Python's default"
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(variants.shutil, "copymode", terminated)
    (tmp_path / "out").mkdir()
    assert variants.main(["no-router-bias", "--ckpt", str(ckpt[0]), "--out", str(tmp_path / "out" / "nb")]) == 130
    assert capsys.readouterr().err.strip() == "terminated"
    assert list((tmp_path / "out").iterdir()) == [] and signal.getsignal(signal.SIGTERM) is before


def _damage(src, kind: str):
    """Damage a copy of a checkpoint the way `kind` says; returns (the file or tensor named, extra)."""
    from helpers.checkpoints import edit_tensors

    f = sorted(src.glob("*.safetensors"))[0]
    names = list(load_file(f))
    if kind == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "header":
        data = f.read_bytes()
        f.write_bytes(data[:8] + b"}" + data[9:])  # the JSON header's first byte
    elif kind == "config":
        (src / "config.json").write_text('{"hidden_size": 64,')
    elif kind == "shape":
        edit_tensors(f, lambda t: t | {names[0]: torch.zeros(3, 5)})
    elif kind == "missing":
        edit_tensors(f, lambda t: {k: v for k, v in t.items() if k != names[0]})
    return f, names[0]


@pytest.mark.parametrize("kind,want", [
    ("truncated", "{f}: not a readable safetensors file ("),
    ("header", "{f}: not a readable safetensors file ("),
    ("config", "{src}/config.json: "),
    ("shape", "{f}: tensor {name} has shape [3, 5], expected "),
    ("missing", ": missing tensor {name}"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_nothing_is_written(ckpt, tmp_path, capsys, kind, want):
    """A truncated or header-corrupt shard was a SafetensorError traceback; a config.json that is not
    JSON, a tensor of the wrong shape or a missing one was copied and reported `wrote ...`. Each is now
    the loader's own one-line refusal (`model.load(..., device="meta")`), before anything is written."""
    import shutil

    src = shutil.copytree(ckpt[0], tmp_path / "src")
    f, name = _damage(src, kind)
    (tmp_path / "out").mkdir()
    code = variants.main(["no-router-bias", "--ckpt", str(src), "--out", str(tmp_path / "out" / "nb")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert want.format(f=f, src=src, name=name) in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_ckpt_that_is_not_a_checkpoint_names_the_flag(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    for ckpt, why in ((tmp_path / "nope", "no such directory"), (tmp_path / "afile", "not a checkpoint directory"),
                      (tmp_path / "empty", "not a checkpoint (needs config.json and *.safetensors)")):
        assert variants.main(["no-router-bias", "--ckpt", str(ckpt), "--out", str(tmp_path / "v")]) == 2
        assert capsys.readouterr().err == f"error: --ckpt {ckpt}: {why}\n"
    assert not (tmp_path / "v").exists()


def _signalled_on_import(module: str, signum: int, argv: list[str], as_command: bool = False):
    """`main(argv)` of analyses.variants in a process of its own (`python -m analyses.variants ARGV` with
    `as_command`) that sends itself `signum` (a real signal) when `module` is first looked for, that is
    as its import begins. SIGHUP starts at its default, as a terminal starts a command. Returns (exit
    status, stderr, whether torch was imported whole by the end)."""
    import json
    import os
    import subprocess
    import sys

    from helpers.models import REPO

    run = ("import runpy\nsys.argv = ['-m', *ARGV]\n"
           "try:\n    runpy.run_module('analyses.variants', run_name='__main__', alter_sys=True)\n"
           "finally:\n    report()\n") if as_command else (
           "from analyses.variants import main\ntry:\n    code = main(ARGV)\nfinally:\n    report()\nsys.exit(code)\n")
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
              f"ARGV = {json.dumps(argv)}\n"
              "def report():\n"
              "    print('torch whole:', hasattr(sys.modules.get('torch'), 'Tensor'), file=sys.stderr)\n"
              "class Stop:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              f"        if name == {module!r}:\n"
              "            sys.meta_path.remove(self)\n"
              f"            os.kill(os.getpid(), {int(signum)})\n"
              "        return None\n"
              "sys.meta_path.insert(0, Stop())\n" + run)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    lines = done.stderr.strip().split("\n")  # the last says whether torch is whole, unless it left at once (os._exit)
    whole = lines.pop() if lines[-1].startswith("torch whole: ") else ""
    return done.returncode, "\n".join(lines).strip(), whole == "torch whole: True"


@pytest.mark.slow  # 2.2-2.5 s each: a child process signalled while it imports torch (the AVX2-only EPYC, 2026-12-07)
@pytest.mark.parametrize("signum,said", [("SIGINT", "interrupted"), ("SIGTERM", "terminated"), ("SIGHUP", "hung up")])
def test_a_real_signal_while_torch_is_imported_is_met_once_it_is_in(ckpt, tmp_path, signum, said):
    """A real signal during the job's `import torch` raised KeyboardInterrupt inside it: the process
    then ended by torch's C++ abort (134: "terminate called after throwing ... KeyboardInterrupt"), or
    by SIGINT after its one line instead of exit status 130 (a review, `timeout` and Ctrl-C against
    `python -m analyses.variants`). Held until torch is in, it is the one line and 130, nothing written."""
    import signal

    (tmp_path / "out").mkdir()
    code, err, whole = _signalled_on_import("torch", getattr(signal, signum),
                                            ["no-router-bias", "--ckpt", str(ckpt[0]), "--out", str(tmp_path / "out" / "nb")])
    assert (code, err) == (130, said)
    assert whole, "the signal was met inside `import torch`"
    assert list((tmp_path / "out").iterdir()) == []


def test_ctrl_c_while_the_command_starts_is_one_line(ckpt, tmp_path):
    """`python -m analyses.variants` imports pyarrow before its main() (about a second): Ctrl-C there was
    a KeyboardInterrupt traceback from inside pyarrow's import."""
    import signal

    (tmp_path / "out").mkdir()
    code, err, _ = _signalled_on_import("pyarrow", signal.SIGINT, ["no-router-bias", "--ckpt", str(ckpt[0]), "--out",
                                                                    str(tmp_path / "out" / "nb")], as_command=True)
    assert (code, err) == (130, "interrupted while starting: nothing was done")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow  # 2.3-2.8 s each: a child that imports torch, signalled mid-copy (the AVX2-only EPYC, 2026-12-07)
@pytest.mark.parametrize("signum,said", [("SIGINT", "interrupted"), ("SIGTERM", "terminated"), ("SIGHUP", "hung up")])
def test_a_real_signal_mid_copy_of_an_overwrite_keeps_the_earlier_variant(ckpt, tmp_path, signum, said):
    """A real signal while the new variant is copied (its second file besides the weights): one line, 130,
    the temporary folder removed and --out as it was (the earlier variant whole, not half replaced)."""
    import signal

    from helpers.processes import signalled_at

    out = tmp_path / "out" / "nb"
    variants.without_router_bias(ckpt[0], out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    done = signalled_at("analyses.variants:main", "shutil:copy2", 1, getattr(signal, signum),
                        ["no-router-bias", "--ckpt", str(ckpt[0]), "--out", str(out), "--overwrite"])
    assert (done.returncode, done.stderr.strip()) == (130, said)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["nb"]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
