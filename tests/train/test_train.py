"""train (python -m train): losses go down, the runs' balancing does what the report says, bad input.
(The balancing math alone: test_train_balance.py; resume and stops: test_train_resume.py.)"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_hf

import probe

from model import ConfigError, Transformer
from model import load as load_ckpt
from train import TrainError, parse_args, run
from train.__main__ import main as train_main

from helpers.cli_errors import unwritable_msg, unwritable_out
from helpers.processes import TORCHRUN
from helpers.training import WORDS, flags


# -------------------------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_training_reduces_loss_and_writes_the_run(corpus, tmp_path):
    out = tmp_path / "run"
    # the settling phase's 30 updates (the default), each pooling 2 fresh batches, not the default 8:
    # 60 forward passes, not 240 (~2 s here); the pooling itself is checked above (test_settle_biases_pool_*)
    info = run(parse_args(flags(corpus, out, "--steps", "40", "--eval-every", "20", "--checkpoint-every", "0",
                                 "--flush-every", "13", "--settle-batches", "2", settle=True)))
    assert info["status"] == "complete" and info["kind"] == "train"
    r = probe.open_run(out)  # a training run is a run like any other
    assert set(r.tables) == {"train_steps", "train_domains", "train_gates", "train_eval", "expert_load", "router_bias"}
    rows = r.df("train_steps").sort_values("step")
    assert rows.step.tolist() == list(range(1, 41))
    assert len(r.files("train_steps")) == 4  # committed at steps 13, 26, 39 and 40
    # step 40's rows and the final evaluation's at step 40 are two commits of one step, into one part
    # file: the second replaced the first's rows (a review)
    assert len(r.files("train_gates")) == 4 and len(r.files("train_domains")) == 4
    first, last = rows.lm_loss.head(5).mean(), rows.lm_loss.tail(5).mean()
    assert last < first - 0.5, (first, last)
    dom = r.df("train_domains")
    assert set(dom.domain) == {"math", "literature", "chinese"} and set(dom.split) == {"train", "val"}
    assert set(dom[dom.split == "train"].step) == set(range(1, 41))
    gates = r.df("train_gates")
    assert set(gates.layer) == {1, 2, 3}  # the MTP block's router is layer n_layers = 3
    assert set(gates[gates.split == "train"].step) == set(range(1, 41)) and len(gates[gates.step == 40]) == 6
    trained = gates[(gates.split == "train") & (gates.step == 40)].set_index("layer")
    assert trained.bias_norm.loc[1] > 0  # aux-free: the biases moved
    ev = r.df("train_eval").sort_values("step")
    assert ev.step.tolist() == [20, 40] and ev.val_loss.iloc[1] < ev.val_loss.iloc[0]
    assert len(r.df("expert_load")) == 40 * 3 * 16 == len(r.df("router_bias"))  # steps x gates x experts
    # tokens x K assignments per gate and step; the MTP router routes all but each window's last token
    # (its rows said the main model's count; a review)
    per = r.df("expert_load").groupby(["step", "layer"]).agg(count=("count", "sum"), tokens=("tokens", "first"))
    assert (per["count"] == per.tokens * 4).all() and set(per.xs(3, level="layer").tokens) == {4 * 31}
    val = dom[(dom.split == "val") & (dom.step == 40)].set_index("domain")
    assert info["final"]["val_loss_math"] == val.loss.loc["math"]

    # the final model: our loader gives the trained weights back (the gate biases settled after the
    # last step, everything else as trained), with the tokenizer beside it
    m = load_ckpt(out / "model", dtype=torch.float32)
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"]
    final = m.state_dict()
    settled = {k for k in state if k.endswith("gate.bias")}
    assert len(settled) == 3 and all(not torch.equal(final[k], state[k]) for k in settled)
    for k, v in state.items():
        if k not in settled:
            assert torch.equal(final[k], v), k
    settle = info["bias_settle"]
    assert settle["updates"] == 30 and settle["batches_per_update"] == 2
    assert set(settle["maxvio_pooled"]) == {"layer1", "layer2", "mtp0"}
    ref = Transformer(m.args, dtype=torch.float32)
    ref.load_state_dict(state | {k: final[k] for k in settled})
    tokens = torch.randint(0, m.args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m(tokens), ref.eval()(tokens), rtol=0, atol=0)
    assert (out / "model" / "tokenizer.json").read_bytes() == (corpus / "tokenizer.json").read_bytes()
    # trained on <|bos|> document <|eos|>: generation must prepend BOS too
    assert json.loads((out / "model" / "tokenizer_config.json").read_text())["add_bos_token"] is True
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["vocab_size"] == 320 and cfg["num_nextn_predict_layers"] == 1
    # transformers reads the same directory and computes the same logits
    with torch.no_grad():
        want = load_hf(out / "model")(tokens).logits
    torch.testing.assert_close(m(tokens), want, rtol=1e-4, atol=1e-4)
    _analyses_take_the_runs_own_model(out, corpus, info)


def _analyses_take_the_runs_own_model(out: Path, corpus: Path, info: dict) -> None:
    """importance, steer, spec and report on a training run took the bundled model silently, and
    `--top` failed on the MTP router's loads (found by a review). run.json now names the run's model
    and held-out text; the loads of the MTP router (layer n_layers) are left out of ablations."""
    from analyses.ablate import AblateOptions, AblationError
    from analyses.ablate.inputs import job_defaults
    from analyses.ablate.loads import loads_from_run
    from analyses.ablate.select import RouterShape

    assert info["checkpoint"]["path"] == str((out / "model").resolve()) and info["checkpoint"]["sample"]
    assert info["corpus"]["path"] == str((corpus / "val.jsonl").resolve())
    opts, _ = job_defaults(AblateOptions(run=str(out)))
    assert (opts.ckpt, opts.corpus) == (info["checkpoint"]["path"], info["corpus"]["path"])
    m = load_ckpt(out / "model", dtype=torch.float32)
    loads = loads_from_run(out, RouterShape.of(m.args))
    el = probe.open_run(out).df("expert_load")
    assert set(el.layer) == {1, 2, 3} and loads["all"].shape == (2, 16)  # the MTP router's layer 3 left out
    assert loads["all"].sum() == el[el.layer < 3]["count"].sum()
    running = out.parent / "running"
    running.mkdir()
    (running / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k not in ("checkpoint", "corpus")}
                                                 | {"status": "running"}))
    # no job holds it: killed, interrupted (not 'not written yet (status running)', a tour)
    with pytest.raises(AblationError, match="a training run interrupted before it wrote its model .its job was killed"
                                            ".*python -m train ... --resume.*or pass --ckpt"):
        job_defaults(AblateOptions(run=str(running)))


@pytest.mark.slow  # two training runs
def test_balance_none_keeps_bias_zero_and_switch_adds_loss(corpus, tmp_path):
    none = run(parse_args(flags(corpus, tmp_path / "none", "--steps", "3", "--balance", "none", "--eval-every", "0")))
    assert none["status"] == "complete"
    r = probe.open_run(tmp_path / "none")
    gates = r.df("train_gates")
    assert (r.df("train_steps").aux_loss == 0).all() and (gates[gates.split == "train"].bias_norm == 0).all()
    run(parse_args(flags(corpus, tmp_path / "sw", "--steps", "3", "--balance", "switch", "--eval-every", "0")))
    r = probe.open_run(tmp_path / "sw")
    # three gates, each loss near 1 (>= 1 unless perfectly balanced), weight 0.01
    gates = r.df("train_gates")
    assert (gates[gates.split == "train"].bias_norm == 0).all() and r.df("train_steps").aux_loss.between(0.02, 0.2).all()


@pytest.mark.slow  # 2.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
# --------------------------------------------------------------------------------------- bad input
def test_bad_input_errors(corpus, tmp_path, capsys, monkeypatch):
    with pytest.raises(TrainError, match="corpus too small for one batch"):
        run(parse_args(flags(corpus, tmp_path / "x", "--batch-size", "5000", "--steps", "1")))
    # an empty train.jsonl was "too small for one batch ... lower --batch-size / --seq-len"
    empty = tmp_path / "empty_corpus"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    with pytest.raises(TrainError, match=rf"^{empty / 'train.jsonl'}: holds no documents \(build the corpus"):
        run(parse_args(flags(corpus, tmp_path / "x", "--corpus", str(empty), "--steps", "1")))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="n_routed_experts=15 must be a positive multiple of n_expert_groups=4"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", "n_routed_experts=15")))
    with pytest.raises(ConfigError, match=r"n_activated_experts=12 must be in \[1, 8\]"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", "n_activated_experts=12")))
    # a --config file the architecture forbids is named, as the flag (it said "config dict"; a review)
    hf = json.loads((Path(__file__).resolve().parents[2] / "data" / "model" / "config.json").read_text())
    (tmp_path / "hf.json").write_text(json.dumps(hf | {"n_routed_experts": 30}))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TrainError, match=rf"^--config {tmp_path / 'hf.json'}: n_routed_experts=30 must be a "
                                         r"positive multiple of n_group=4"):
        run(parse_args(flags(corpus, tmp_path / "x", "--config", str(tmp_path / "hf.json"))))
    with pytest.raises(TrainError, match=rf"^--config {tmp_path / 'list.json'}: a JSON list, not a config object"):
        run(parse_args(flags(corpus, tmp_path / "x", "--config", str(tmp_path / "list.json"))))
    with pytest.raises(TrainError, match="ModelArgs has no field 'bogus'"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", "bogus=1")))
    # a name that is neither a file nor a shipped config: ModelArgs.from_name's message named neither the flag
    # nor that a file was looked for
    with pytest.raises(TrainError, match=r"^--config nope: neither a config file nor a shipped config \(available: "
                                         r"16B, 236B, 671B, V3\.1, tiny\)$"):
        run(parse_args(flags(corpus, tmp_path / "x", "--config", "nope")))
    # the name OUT/model/config.json shows: the message named only the miss
    with pytest.raises(TrainError, match=r"no field 'num_nextn_predict_layers' \(the Hugging Face name of "
                                         r"n_mtp_layers: --set n_mtp_layers=0\)$"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", "num_nextn_predict_layers=0")))
    # --resume into a run another job made (a record's): training's tables would have gone in beside its own
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "run.json").write_text('{"status": "complete", "format": 1}')
    with pytest.raises(TrainError, match=rf"^--out {rec} holds a record run, not a training run: --resume"):
        run(parse_args(flags(corpus, rec, "--resume", str(tmp_path / "elsewhere"))))
    # without --resume it said "already holds a run: pass --resume to continue it", which the line above refuses
    with pytest.raises(TrainError, match=rf"^--out {rec} holds a record run, not a training run: pass another --out$"):
        run(parse_args(flags(corpus, rec)))
    (rec / "run.json").write_text('{"status": "complete", "kind": "ablations"}')
    with pytest.raises(TrainError, match="holds an ablations run, not a training run"):
        run(parse_args(flags(corpus, rec, "--resume")))
    assert sorted(p.name for p in rec.iterdir()) == ["run.json"]  # nothing written
    with pytest.raises(TrainError, match=rf"^--tokenizer {tmp_path / 'none.json'}: no tokenizer"):
        run(parse_args(flags(corpus, tmp_path / "x") + ["--tokenizer", str(tmp_path / "none.json")]))
    # a folder, or a file that is not one, named with the flag (a folder read "/tmp: not a readable
    # tokenizer.json (Is a directory (os error 21))"; a review)
    with pytest.raises(TrainError, match=rf"^--tokenizer {tmp_path}: a directory; give the tokenizer.json file itself$"):
        run(parse_args(flags(corpus, tmp_path / "x") + ["--tokenizer", str(tmp_path)]))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TrainError, match=rf"^--tokenizer {tmp_path / 'bad.json'}: not a readable tokenizer.json"):
        run(parse_args(flags(corpus, tmp_path / "x") + ["--tokenizer", str(tmp_path / "bad.json")]))
    with pytest.raises(TrainError, match="exceeds the config's max_seq_len=256"):
        run(parse_args(flags(corpus, tmp_path / "x", "--seq-len", "512")))
    # a softmax router (DeepSeek-V2 style) has no bias for the default aux-free balancing to move: it
    # was an AttributeError after the first step (a review); --balance switch takes the same config
    soft = ["--set", "score_func=softmax", "--set", "model_type=deepseek_v2", "--set", "norm_topk_prob=false",
            "--set", "n_expert_groups=1", "--set", "n_limited_groups=1", "--set", "n_mtp_layers=0"]
    with pytest.raises(TrainError, match=r"--balance aux-free moves the routers' bias.*'softmax': pass --balance switch"):
        run(parse_args(flags(corpus, tmp_path / "soft", *soft)))
    assert not (tmp_path / "soft").exists()
    from train.steps import model_args
    assert model_args(parse_args(flags(corpus, tmp_path / "soft", *soft, "--balance", "switch")), 512).score_func == "softmax"
    # resume from a checkpoint of another shape
    run(parse_args(flags(corpus, tmp_path / "r", "--steps", "2", "--eval-every", "0")))
    with pytest.raises(TrainError, match=r"cannot resume from .*checkpoint: it holds a model with dim=64.*"
                                         r"this run builds dim=48") as e:
        run(parse_args(flags(corpus, tmp_path / "r", "--steps", "4", "--set", "dim=48", "--resume")))
    saved_with = parse_args(flags(corpus, tmp_path / "r"))  # the run's own flags name its config (a train hunt)
    sets = "".join(f" --set {x}" for x in saved_with.overrides)
    assert str(e.value).endswith(f"; its run was given --config {saved_with.config}{sets}: pass the same to resume it")
    for flag, value, msg in (("--lr", "nan", "--lr=nan must be a finite number"),
                             ("--beta1", "1.5", r"--beta1=1.5 must be in \[0, 1\)"),
                             ("--stop-at", "-1", "--stop-at=-1 must be a step of at least 1"),
                             ("--time-limit", "0", "--time-limit=0.0 must be a positive number of minutes"),
                             ("--threads", "0", "--threads=0 must be at least 1"),
                             # a traceback at the first step, after the run directory was made (a review)
                             ("--seed", "-1", r"--seed=-1 must be a whole number from 0 to 2\*\*64 - 1"),
                             ("--seed", str(2**64), rf"--seed={2**64} must be a whole number")):
        with pytest.raises(TrainError, match=msg):
            run(parse_args(flags(corpus, tmp_path / "x", flag, value)))
        assert not (tmp_path / "x").exists()
    # the same --out again without --resume: its tables would hold both runs' rows (found by a review)
    with pytest.raises(TrainError, match=r"--out .*/r already holds a run: pass --resume to continue it"):
        run(parse_args(flags(corpus, tmp_path / "r", "--steps", "2", "--eval-every", "0")))
    assert probe.open_run(tmp_path / "r").df("train_steps").step.tolist() == [1, 2]
    # a learning rate that blows the weights up: the run stops at the first loss that is not a number,
    # before a checkpoint could save the broken weights; the row that showed it is in the tables
    with pytest.raises(TrainError, match=r"the training (loss|gradient norm) became (nan|inf) at step \d \(loss .*\): "
                                         r"the run diverged"):
        run(parse_args(flags(corpus, tmp_path / "div", "--steps", "6", "--lr", "1e30", "--eval-every", "0",
                              "--checkpoint-every", "0")))
    diverged = probe.open_run(tmp_path / "div")
    assert diverged.info["status"] == "interrupted" and "diverged" in diverged.info["error"]
    last = diverged.df("train_steps").sort_values("step").iloc[-1]
    assert not (np.isfinite(last.loss) and np.isfinite(last.grad_norm)) and not (tmp_path / "div" / "checkpoint").exists()
    with pytest.raises(TrainError, match="no checkpoint there"):
        run(parse_args(flags(corpus, tmp_path / "empty", "--resume")))
    (tmp_path / "junk" / "checkpoint").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="state.pt is not a training checkpoint"):
        run(parse_args(flags(corpus, tmp_path / "junk", "--resume")))
    with pytest.raises(ConfigError, match="n_mtp_layers=2: MTP depth 0 or 1 only"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", "n_mtp_layers=2")))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrainError, match=r"--out .*afile/run: .*afile is a file, not a directory"):
        run(parse_args(flags(corpus, tmp_path / "afile" / "run")))
    # --token-cache naming a file was a FileExistsError traceback after the corpus was tokenised (a review)
    with pytest.raises(TrainError, match=r"--token-cache .*afile: .*afile is a file, not a directory"):
        run(parse_args(flags(corpus, tmp_path / "tc", "--token-cache", str(tmp_path / "afile"))))
    proc = unwritable_out(monkeypatch, "dsv3-train-run")  # os.access says yes; the OS refuses new entries
    with pytest.raises(TrainError, match=re.escape(unwritable_msg("--out", proc))):
        run(parse_args(flags(corpus, proc)))
    with pytest.raises(TrainError, match=r"nowhere/train.jsonl: not found \(build the corpus with"):
        run(parse_args(flags(corpus, tmp_path / "x") + ["--corpus", str(tmp_path / "nowhere")]))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text('{"domain": "x"}\n')
    with pytest.raises(TrainError, match=r"train.jsonl:1: a document needs string fields"):
        run(parse_args(flags(corpus, tmp_path / "x") + ["--corpus", str(tmp_path / "bad")]))
    # the command line: one line on stderr, exit status 2
    with pytest.raises(SystemExit) as e:
        train_main(flags(corpus, tmp_path / "x", "--set", "n_routed_experts=15"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid ModelArgs") and "\n" not in err


def test_a_mistyped_gemm_switch_is_one_line_before_the_run_begins(corpus, tmp_path, capsys, monkeypatch):
    """DSV3_ONEDNN=2 is refused where the world starts (model.ranks.init_world), before --out is made:
    one line and exit status 2, not the KernelError's traceback."""
    monkeypatch.setenv("DSV3_ONEDNN", "2")
    with pytest.raises(SystemExit) as e:
        train_main(flags(corpus, tmp_path / "x", "--steps", "1"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: DSV3_ONEDNN='2': set 1") and "\n" not in err, err
    assert not (tmp_path / "x").exists()


def test_a_corpus_file_is_refused_as_not_a_folder(corpus, tmp_path, capsys):
    """--corpus data/corpus/val.jsonl (a file) said ".../val.jsonl/train.jsonl: not found (build the corpus
    ...)", after a note that the token cache could not go under the file: one line saying what --corpus is."""
    with pytest.raises(SystemExit) as e:
        train_main(flags(corpus, tmp_path / "x") + ["--corpus", str(corpus / "val.jsonl")])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: --corpus {corpus / 'val.jsonl'}: is a file; --corpus must be a folder "
                                       "holding train.jsonl (and val.jsonl), e.g. data/corpus\n")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo) x batch 2 takes the same steps as 1 process x batch 4."""
    import os
    import subprocess

    common = ("--steps", "3", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(flags(corpus, tmp_path / "one", *common)))
    argv = flags(corpus, tmp_path / "two", *common)
    argv[argv.index("--batch-size") + 1] = "2"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")} | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "train", *argv], cwd=Path(__file__).resolve().parents[2], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = probe.open_run(tmp_path / "one"), probe.open_run(tmp_path / "two")
    s1, s2 = one.df("train_steps").sort_values("step"), two.df("train_steps").sort_values("step")
    assert s2.tokens.tolist() == s1.tokens.tolist() == [4 * 32] * 3
    np.testing.assert_allclose(s2.loss, s1.loss, atol=1e-5)
    key = ["step", "layer"]
    g1 = one.df("train_gates").sort_values(key).reset_index(drop=True)
    g2 = two.df("train_gates").sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(g2.bias_norm, g1.bias_norm, atol=1e-6)
    assert (g2.maxvio == g1.maxvio).all()
    assert two.info["world"]["size"] == 2
    # what a resume compares its global batch with (train.state.changed_flags)
    assert torch.load(tmp_path / "two" / "checkpoint" / "state.pt", weights_only=False)["world"] == 2


def test_the_bias_schedule_follows_the_lr_shape_even_at_lr_0():
    """--bias-schedule cosine divided the bias speed by --lr (a ZeroDivisionError after step 1 with
    --lr 0, which the flags accept; found by a review); it takes the schedule's shape instead."""
    from argparse import Namespace

    from train.steps import bias_speed_at, lr_at

    ns = Namespace(lr=3e-3, bias_schedule="cosine", warmup_steps=2, steps=10, min_lr_ratio=0.1, bias_update_speed=1e-3)
    for step in range(10):
        assert bias_speed_at(step, ns) == pytest.approx(1e-3 * (1 if step < 2 else lr_at(step, ns) / 3e-3), rel=1e-12)
    assert bias_speed_at(9, ns) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8))))
    zero = Namespace(**vars(ns) | {"lr": 0.0})
    assert [bias_speed_at(s, zero) for s in range(10)] == [bias_speed_at(s, ns) for s in range(10)]
    assert lr_at(5, zero) == 0.0


@pytest.mark.slow  # 2.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_an_unwritable_default_token_cache_is_skipped_not_fatal(corpus, tmp_path, capsys):
    """The default cache (CORPUS/token_cache) of a corpus that cannot take it (read-only, or a file
    there) failed after the corpus was tokenised; now training goes on without the cache."""
    import shutil

    c = Path(shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("token_cache")))
    (c / "token_cache").write_text("not a folder")
    info = run(parse_args(flags(c, tmp_path / "run", "--steps", "1", "--eval-every", "0",
                                 "--checkpoint-every", "0")))
    assert info["status"] == "complete" and (c / "token_cache").is_file()
    assert "note: the tokenised corpus is not cached (--token-cache" in capsys.readouterr().err


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_non_finite_gradient_is_not_applied_and_the_advice_names_the_saved_step(corpus, tmp_path, monkeypatch):
    """A finite loss with a NaN gradient updated the weights to NaN, the next checkpoint kept them, and
    the error sent the user back to that checkpoint (a review). The step is not applied, the run stops
    there, and the message names the step the checkpoint holds, or says none was saved."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def nan_at_step_3(params, *a, **kw):
        calls.append(1)
        params = list(params)
        norm = real(params, *a, **kw)
        if len(calls) == 3:
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
            return torch.tensor(float("nan"))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"the training gradient norm became nan at step 3 .* --resume from .*"
                                         r"checkpoint, which holds step 2"):
        run(parse_args(flags(corpus, out, "--steps", "6", "--eval-every", "0", "--checkpoint-every", "1")))
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert probe.open_run(out).info["status"] == "interrupted"
    calls.clear()
    with pytest.raises(TrainError, match=r"at step 3 .* start again \(no checkpoint was saved before it"):
        run(parse_args(flags(corpus, tmp_path / "run2", "--steps", "6", "--eval-every", "0",
                              "--checkpoint-every", "0")))


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_without_mtp_its_loss_is_null_and_unseen_val_domains_get_rows(corpus, tmp_path, capsys):
    """train_steps.mtp_loss was NaN, not null, without MTP; a validation domain the training split
    lacks was averaged into val_loss but had no train_domains row (a review); the closing summary
    printed 'MTP agreement nan%'."""
    import shutil

    c = Path(shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("token_cache")))
    with open(c / "val.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "extra/0", "domain": "zzz", "text": " ".join(WORDS * 20)}) + "\n")
    info = run(parse_args(flags(c, tmp_path / "run", "--steps", "2", "--eval-every", "0", "--checkpoint-every", "0",
                                 "--mtp-weight", "0", "--set", "n_mtp_layers=0")))
    out, err = capsys.readouterr()
    assert "val loss " in out and "MaxVio_global layer1=" in out
    assert "nan" not in out and "MTP agreement" not in out
    assert "MTP module untrained" not in err  # none was built
    r = probe.open_run(tmp_path / "run")
    assert r.df("train_steps").mtp_loss.isna().all()
    assert r.sql("select count(*) from train_steps where mtp_loss is null").fetchall()[0][0] == 2
    val = r.df("train_domains").query("split == 'val'").set_index("domain")
    assert "zzz" in val.index and val.loss.loc["zzz"] == info["final"]["val_loss_zzz"]
    assert r.df("train_eval").val_loss.iloc[-1] == pytest.approx(val.loss.mean())


@pytest.mark.slow  # 1.2 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_mtp_weight_0_with_an_mtp_module_says_it_stays_untrained(corpus, tmp_path, capsys):
    """--mtp-weight 0 ('skip MTP') still built and saved the MTP module, untrained: generate --mtp then
    drafted from random weights, and nothing said so."""
    run(parse_args(flags(corpus, tmp_path / "run", "--steps", "1", "--eval-every", "0", "--checkpoint-every", "0",
                         "--mtp-weight", "0")))
    assert "note: --mtp-weight 0 leaves the MTP module untrained, and OUT/model keeps its random weights " \
        "(pass --set n_mtp_layers=0 to build the model without it)" in capsys.readouterr().err.splitlines()


@pytest.mark.slow  # 1.8 s: a training run (the AVX2-only EPYC, 2026-12-07)
def test_a_training_domain_shorter_than_one_window_is_named(corpus, tmp_path, capsys):
    """A domain whose training tokens do not fill one window is never sampled: its train_domains
    rows were NaN and the run said nothing of it."""
    import shutil

    c = Path(shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("token_cache")))
    with open(c / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "short/0", "domain": "short", "text": "the"}) + "\n")
    info = run(parse_args(flags(c, tmp_path / "run", "--steps", "1", "--eval-every", "0", "--checkpoint-every", "0")))
    assert "short" in info["domains"] and "short" not in info["domain_weights"]
    n = info["train_tokens"]["short"]
    assert f"note: never trained on (fewer training tokens than one window of --seq-len + 1 = 33): short ({n})" \
        in capsys.readouterr().err.splitlines()


@pytest.mark.slow  # 1.2-2.3 s: a training run (the AVX2-only EPYC, 2026-12-07)
def test_a_validation_domain_shorter_than_one_window_is_named(corpus, tmp_path, capsys):
    """A validation domain too short for one window was left out of every evaluation, silently (a
    split of only such domains gave a run with no validation figures at all)."""
    import shutil

    c = Path(shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("token_cache")))
    with open(c / "val.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "short/0", "domain": "short", "text": "the"}) + "\n")
    info = run(parse_args(flags(c, tmp_path / "run", "--steps", "1", "--eval-every", "0", "--checkpoint-every", "0")))
    assert "val_loss_short" not in info["final"]
    n = info["val_tokens"]["short"]
    assert f"note: never evaluated (fewer validation tokens than one window of --seq-len + 1 = 33): short ({n})" \
        in capsys.readouterr().err.splitlines()


@pytest.mark.slow  # a training run: 1.9-2.4 s on the AVX2-only EPYC (2026-12-07), the quick loop's longest
def test_a_corpus_with_an_empty_val_split_is_said_to_have_no_validation(corpus, tmp_path, capsys):
    """An empty (or missing) val.jsonl gave a run with no val loss and no train_eval rows, without a word."""
    import shutil

    c = Path(shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("token_cache")))
    (c / "val.jsonl").write_text("")
    info = run(parse_args(flags(c, tmp_path / "run", "--steps", "1", "--eval-every", "0", "--checkpoint-every", "0")))
    assert info["final"] == {}
    assert f"note: {c / 'val.jsonl'} is missing or holds no documents: the run has no validation " \
        "(no val loss, no train_eval rows)" in capsys.readouterr().err.splitlines()


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(corpus, tmp_path, monkeypatch):
    # --set dim=10**12 was the allocator's RuntimeError traceback, after the run directory was made
    import train.loop

    with pytest.raises(TrainError, match=r"^--config tiny --set dim=1000000000000: a model too large to build"):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", f"dim={10**12}")))
    # 10**12 layers: counted from two small models, not built layer by layer on the meta device (it hung)
    with pytest.raises(TrainError, match=r"^--config tiny --set n_layers=1000000000000: [\d,]+ parameters need "):
        run(parse_args(flags(corpus, tmp_path / "x", "--set", f"n_layers={10**12}")))
    from model import ModelArgs
    for layers in (3, 70):  # the count past 64 layers is the count of the model built whole
        args = dataclasses.replace(ModelArgs.from_name("tiny"), n_layers=layers)
        assert train.loop._param_count(args, built=2) == train.loop._param_count(args)
    monkeypatch.setattr(train.loop, "available_memory", lambda: 2**20)
    with pytest.raises(TrainError, match=r"^--config tiny: [\d,]+ parameters need 0.0 GiB for float32 weights, "
                                         r"gradients and AdamW's moments, more than the 0.0 GiB available here$"):
        run(parse_args(flags(corpus, tmp_path / "y")))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
