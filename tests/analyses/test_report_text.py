"""The report's tables on stdout: an expert table (layers or domains x experts) prints one row per expert, and
past `WIDE_EXPERTS` experts (DeepSeek-V3's 256) each row's highest and lowest experts, not thousands of lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.report.render import STANDOUTS, WIDE_EXPERTS, _print_expert_table


def _lift(n_experts: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    t = pd.DataFrame(rng.gamma(2.0, 0.5, (3, n_experts)), index=pd.Index(["code", "math", "zh"], name="domain"))
    t.loc["code", 7], t.loc["zh", 3] = 9.0, 0.0  # one standout each way
    t.loc["math", 20], t.loc["math", 10] = 8.0, 8.0  # tied: the lower id first
    return t


def test_a_table_of_few_experts_prints_every_expert(capsys):
    _print_expert_table(_lift(WIDE_EXPERTS))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "(transposed: one row per expert)" and len(out) == 3 + WIDE_EXPERTS  # the two header lines


def test_a_table_of_many_experts_prints_each_rows_standouts(capsys):
    t = _lift(256)
    _print_expert_table(t)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"(256 experts: the {STANDOUTS} highest and the {STANDOUTS} lowest of each domain")
    assert len(out) == 3 + 3  # the sentence, two header lines, a line per domain
    code = next(line for line in out if line.startswith("code"))
    want = t.loc["code"].sort_values(ascending=False).head(STANDOUTS)
    assert code.split()[1:3] == ["7:", "9.00,"] and f"{want.index[1]}: {want.iloc[1]:.2f}" in code
    zh = next(line for line in out if line.startswith("zh"))
    assert zh.split("  ")[-1].strip().startswith("3: 0.00,")  # the lowest first, in the lowest column
    assert next(line for line in out if line.startswith("math")).split()[1:5] == ["10:", "8.00,", "20:", "8.00,"]
