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


def test_renormalised_and_shared_ablations_are_series_of_their_own_on_the_curve(tmp_path):
    """`--mode zero` beside `--mode zero --renormalise`, and `--top 2` beside `--top 2 --shared`, disable as
    many routed experts (n_disabled) by one mode and rule: the masked-fraction curve put each pair in one
    series and drew the mean of two different ablations as its point, as if they were two seeds of one (a
    sweep user's tour)."""
    from helpers.apptest import array, chart

    run = tmp_path / "a"
    write_run(run)
    write_ablations(run)
    rows = pq.read_table(run / "ablations" / "sweep.parquet").to_pandas()
    renorm = rows[rows.ablation == "zero-top2"].assign(ablation="zero-top2-renorm", renormalise=True,
                                                       delta=lambda d: d.delta + 1.0)
    shared = rows[rows.ablation == "top2"].assign(ablation="top2+shared", shared=True, delta=lambda d: d.delta + 2.0,
                                                  spec=lambda d: d.spec.str.replace('"top": 2', '"top": 2, "shared": '
                                                                                    "true"))
    _part(run, "sweep", pd.concat([rows, renorm, shared]))
    at = app(tmp_path, "a", page="ablations")
    assert not at.error and not at.exception
    lines = {t["name"]: t for t in chart(at, "masked_curve")["data"] if t["mode"] == "lines+markers"}
    assert set(lines) == {"reroute · top-N", "reroute · random", "zero · top-N", "zero renormalised · top-N",
                          "reroute · top-N + shared"}, set(lines)
    pooled = pd.concat([rows, renorm, shared]).query("domain == 'all'").set_index("ablation").delta
    for name, ablation in (("zero · top-N", "zero-top2"), ("zero renormalised · top-N", "zero-top2-renorm"),
                           ("reroute · top-N + shared", "top2+shared")):
        assert list(array(lines[name]["y"])) == [pooled[ablation]], name  # its own delta, no mean with another
    assert array(lines["reroute · top-N"]["y"])[0] == pooled["top2"]
