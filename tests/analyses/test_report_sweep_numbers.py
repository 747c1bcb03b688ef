"""The findings report's ablation sweep against hand computations: its curve and per-domain table with
the ablation API replaced by known losses, and the masked counts it asks for (how fractions of the experts
round). The report's other numbers: test_report_numbers.py."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest

from analyses.report import data as rd
from helpers.synthetic_run import write_run


def _fake_delta(a) -> float:
    """Known loss deltas: top-n masks 0.1 n (ranked over the run 0.05 n), random ones 0.01 n (seed + 1)."""
    if a.random:
        return 0.01 * a.random * (a.seed + 1)
    return (0.05 if a.name.startswith("run-top") else 0.1) * a.top


# loss delta on (evaluated domain, domain whose own top experts are masked)
OWN = {("code", "code"): 0.5, ("prose", "code"): 0.1, ("code", "prose"): 0.3, ("prose", "prose"): 0.4}


def test_ablation_sweep_curve_and_domain_table_by_hand(tmp_path, monkeypatch):
    write_run(tmp_path / "r", E=32)
    seen = {}

    def fake(run, ablations, max_tokens, per_domain, batch_size, progress, loads_from, skipped, model_opts=None):
        seen.setdefault("per_domain", per_domain)
        rows = []
        for a in ablations:
            for dom in ("all", "code", "prose"):
                delta = OWN.get((dom, a.domain), 0.0) if a.domain else _fake_delta(a)
                rows.append({"ablation": a.name, "domain": dom, "tokens": 100, "baseline_loss": 2.0,
                             "loss": 2.0 + delta, "delta": delta})
        return pd.DataFrame(rows)

    monkeypatch.setattr(rd, "_ablate_skipping", fake)
    sw = rd.ablation_sweep(tmp_path / "r", max_tokens=600, fractions=(1 / 8,), seeds=(0, 1, 2),
                           compare_run_ranking=True)
    assert seen["per_domain"] == 300 and sw.options["domain_tokens"] == 300  # 600 tokens over two domains
    assert sw.options["domain_top"] == 4  # default E / 8 of 32 experts
    c = sw.curve.set_index("masked").loc[4]
    rnd = [0.04, 0.08, 0.12]  # 0.01 * 4 * (seed + 1)
    assert c.top_delta == pytest.approx(0.4) and c.random_delta == pytest.approx(statistics.mean(rnd))
    assert c.random_delta_std == pytest.approx(statistics.stdev(rnd))  # sample std (ddof 1)
    assert c.top_minus_random == pytest.approx(0.4 - statistics.mean(rnd))
    assert c.run_top_delta == pytest.approx(0.2)
    # rows: evaluated domain, columns: masked domain; by_others = the row's others, on_others = the column's
    ds = sw.domain_summary.set_index("domain")
    assert ds.loc["code", "own"] == 0.5 and ds.loc["code", "by_others"] == pytest.approx(OWN[("code", "prose")])
    assert ds.loc["code", "on_others"] == pytest.approx(OWN[("prose", "code")])
    assert ds.loc["prose", "by_others"] == pytest.approx(0.1) and ds.loc["prose", "on_others"] == pytest.approx(0.3)


def test_domain_table_means_skip_a_refused_cell_but_not_a_nan_delta():
    """by_others / on_others leave out a cell with no row (the ablation refused that domain's
    selection) but are NaN where a row's delta is NaN (the model's own NaN, which the ablate job keeps):
    they were the mean of the other cells, a normal-looking number."""
    def rows_of(cells: dict) -> pd.DataFrame:
        return pd.DataFrame([{"ablation": f"own2-{m}", "domain": d, "delta": v} for (d, m), v in cells.items()])

    doms = ["code", "math", "prose"]
    cells = {(d, m): 0.1 * (i + 1) + 0.01 * j for i, d in enumerate(doms) for j, m in enumerate(doms)}
    _, clean = rd._domain_table(rows_of(cells), doms, 2)
    clean = clean.set_index("domain")
    assert clean.loc["code", "by_others"] == pytest.approx((0.11 + 0.12) / 2)
    refused = {k: v for k, v in cells.items() if k != ("code", "math")}  # math's selection gave no row on code
    _, s = rd._domain_table(rows_of(refused), doms, 2)
    assert s.set_index("domain").loc["code", "by_others"] == pytest.approx(0.12)
    _, s = rd._domain_table(rows_of(cells | {("code", "math"): float("nan")}), doms, 2)
    s = s.set_index("domain")
    assert np.isnan(s.loc["code", "by_others"]) and np.isnan(s.loc["math", "on_others"])
    assert s.loc["prose", "by_others"] == pytest.approx(clean.loc["prose", "by_others"])  # the others as before


def test_masked_counts_round_but_mask_at_least_one_and_refuse_more_than_all():
    assert rd.masked_counts(32, [1 / 128, 1 / 64, 1 / 8]) == [0, 1, 4]  # 0.25 rounds to 0: still one expert
    with pytest.raises(ValueError, match="fraction 1.5 out of range"):
        rd.masked_counts(32, [1.5])


def test_masked_counts_round_a_half_up_so_fractions_an_expert_apart_stay_apart():
    """Python's round takes a half to the even number: 3/64 and 5/64 of 32 experts (1.5 and 2.5) both
    masked 2, and 0.7 and 0.9 of 5 (3.5 and 4.5) both 4, so a sweep asked for three fractions measured
    two (the curve's masked counts, and the ablations' n_disabled, one point where the options listed
    two), and 5/64 masked less than asked where 3/64 masked more. A half rounds up, a decimal fraction's
    half too (0.145 x 100 is 14.499999999999998 in floats)."""
    assert rd.masked_counts(32, [3 / 64, 5 / 64]) == [0, 2, 3]
    assert rd.masked_counts(5, [0.7, 0.9]) == [0, 4, 5]
    assert rd.masked_counts(100, [0.145]) == [0, 15]
    for E in range(1, 65):  # (k + 1/2) / E for every k: each its own count, k + 1
        assert rd.masked_counts(E, [(k + 0.5) / E for k in range(E)]) == list(range(E + 1))
