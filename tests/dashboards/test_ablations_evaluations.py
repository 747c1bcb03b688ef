"""The Ablations page on a sweep scripted as one command per ablation: the commands that evaluated the
same tokens with the same model are one evaluation, shown together; others stay apart."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.apptest import app
from helpers.dashboard_runs import write_ablations
from helpers.synthetic_run import write_run
from probe.schema import TABLES


def _part(run, name: str, rows) -> None:
    pq.write_table(pa.Table.from_pandas(rows, schema=TABLES["ablations"], preserve_index=False),
                   run / "ablations" / f"{name}.parquet")


def test_commands_on_the_same_tokens_are_one_evaluation_and_a_remeasured_name_shows_its_latest(tmp_path):
    """`for L in 1 2 3; do python -m analyses.ablate --run R --experts $L:7; done` wrote a part per
    command, and the page showed one part at a time: one ablation each, never the sweep's heatmap or
    curve (a sweep user's tour). Parts whose run.json entries name the same windows, model and precision
    are shown together, the latest command's rows where a name was measured twice; a part of other
    windows is still its own evaluation."""
    run = tmp_path / "a"
    write_run(run)
    write_ablations(run)
    every = pq.read_table(run / "ablations" / "sweep.parquet").to_pandas()
    (run / "ablations" / "sweep.parquet").unlink()
    _part(run, "p1", every[every.ablation.isin(["top2", "top4"])])
    again = every[every.ablation == "top4"].assign(delta=lambda d: d.delta + 1.0)  # top4 measured again, later
    _part(run, "p2", pd.concat([every[every.ablation.isin(["rand2", "rand4"])], again]))
    _part(run, "p3", every[every.ablation == "zero-top2"])
    same = {"windows_digest": "d1", "checkpoint": {"fingerprint": "f", "sample": "s"}, "options": {"dtype": "float32"}}
    info = json.loads((run / "run.json").read_text())
    info["ablation_parts"] = {"p1": same | {"written": 100.0}, "p2": same | {"written": 200.0},
                              "p3": same | {"windows_digest": "d2", "written": 50.0}}
    (run / "run.json").write_text(json.dumps(info))
    at = app(tmp_path, "a", page="ablations")
    assert not at.error and not at.exception
    box = at.selectbox(key="abl_part")
    assert len(box.options) == 2 and box.value == "p2", box.options
    assert box.options[0].startswith("4 ablations on 1,000 tokens") and "(p2, 2 commands)" in box.options[0]
    assert "3 commands wrote ablations" in " ".join(c.value for c in at.caption)
    shown = at.dataframe[0].value
    assert sorted(set(shown.ablation)) == ["rand2", "rand4", "top2", "top4"] and len(shown) == 12
    top4 = shown[shown.ablation == "top4"].set_index("domain").delta.sort_index()
    assert list(top4) == list(again.set_index("domain").delta.sort_index())  # the latest, not both
    box.set_value("p3").run()
    assert list(at.dataframe[0].value.ablation.unique()) == ["zero-top2"]
