"""An --out that is a run of another checkpoint: ablate, importance and steer refuse to write into it
(their `inputs.check_out`), before the model loads."""

from __future__ import annotations

import json
import shutil

import torch

from analyses.ablate.__main__ import main
from analyses.importance.__main__ import main as importance_main
from analyses.steer.__main__ import main as steer_main
from helpers.checkpoints import edit_tensors
from helpers.cli_errors import assert_one_line_error
from probe.ckpt_identity import checkpoint_identity

torch.set_num_threads(1)


def test_an_out_run_of_another_checkpoint_is_refused_by_name(probe_env, tmp_path, capsys):
    """`--out runs/a --ckpt B` wrote model B's rows into run a's `ablations` table beside its own model's,
    without a word, and the dashboard and the report showed them as run a's (a sweep scripted over
    several checkpoints into one folder). Refused, naming --out and both checkpoints; the run's own
    checkpoint still writes there, and --run with --ckpt stays the caller's choice."""
    ckpt = probe_env["ckpt"]
    other = shutil.copytree(ckpt, tmp_path / "other")
    edit_tensors(next(other.glob("*.safetensors")),
                 lambda t: {k: (v + 1 if k.endswith("e_score_correction_bias") else v) for k, v in t.items()})
    run = tmp_path / "run"
    run.mkdir()
    info = {"status": "complete", "format": 1, "checkpoint": checkpoint_identity(ckpt),
            "corpus": {"path": str(probe_env["corpus"])}, "options": {"seq_len": 32}}
    (run / "run.json").write_text(json.dumps(info))
    common = ["--corpus", str(probe_env["corpus"]), "--out", str(run), "--seq-len", "32", "--batch-size", "4",
              "--max-tokens", "200", "--no-progress"]
    argv = {main: ["--experts", "1:0"], importance_main: ["--layers", "1"], steer_main: ["--experts", "1:0"]}
    for cli, extra in argv.items():
        assert_one_line_error(cli(["--ckpt", str(other), *common, *extra]), capsys,
                              f"--out {run}: a run of another checkpoint ({ckpt}) than this job's {other}")
    assert not (run / "ablations").exists() and json.loads((run / "run.json").read_text()) == info
    assert main(["--ckpt", str(ckpt), *common, "--experts", "1:0"]) == 0  # the control: the run's own model
    capsys.readouterr()
    assert (run / "ablations").is_dir()
