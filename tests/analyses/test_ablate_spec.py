"""Sweeps (analyses.ablate.spec): what a spec file, or a sweep built in Python, may not hold: one
ablation under two names. Each entry's own keys and values are in test_ablate_select.py."""

from __future__ import annotations

import pytest

from analyses.ablate import AblateOptions, Ablation, AblationError, ablate, load_spec
from analyses.ablate.__main__ import main
from helpers.cli_errors import assert_one_line_error, one_line


def test_one_ablation_under_two_names_is_refused(tmp_path, capsys):
    """`{name: a, experts: "1:3"}` and `{name: b, experts: "1:3"}` in one sweep computed the same
    deterministic pass twice and wrote its rows under both names, two points of one measurement on the
    dashboard's curve (a sweep user's tour); so did `top: 2` twice and a seed left at its default beside
    the same seed written out. Refused before any pass, however the selection is written."""
    repeats = {
        "experts": ('{name: a, experts: "1:3+5"}', '{name: b, experts: {1: [5, 3]}}', "experts-1:3+5"),
        "top": ("{name: a, top: 2}", "{name: b, top: 2}", "top2"),
        "seed": ("{name: a, random: 2}", "{name: b, random: 2, seed: 0}", "random2-s0"),
        "zero": ('{name: a, experts: "2:1", mode: zero}', '{name: b, mode: zero, experts: "2:1"}',
                 "experts-2:1-zero")}
    for kind, (first, second, label) in repeats.items():
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"- {{name: other, top: 1}}\n- {first}\n- {second}\n")
        with pytest.raises(AblationError) as e:
            load_spec(path)
        assert one_line(e) == (f"spec file {path}: ablations 'a' and 'b' are the same ablation ({label}): each "
                               "would be computed again under its own name; keep one")
    # controls: what tells two ablations apart is no repeat
    apart = ['{experts: "1:3"}', '{experts: "1:3", mode: zero}', '{experts: "1:3", mode: zero, renormalise: true}',
             '{experts: "1:3", shared: true}', "{random: 2, seed: 0}", "{random: 2, seed: 1}", "{top: 2}",
             "{top: 2, domain: code}", "{top: 2, layers: [1]}", "{token_top: 1}", "{token_top: 1, mode: zero}"]
    (tmp_path / "apart.yaml").write_text("".join(f"- {{name: n{i}, {x[1:]}\n" for i, x in enumerate(apart)))
    assert len(load_spec(tmp_path / "apart.yaml")) == len(apart)
    # the command names the file, and the job refuses the same sweep built in Python, before it reads anything
    assert_one_line_error(main(["--out", str(tmp_path / "o"), "--spec", str(tmp_path / "top.yaml")]), capsys,
                          f"spec file {tmp_path / 'top.yaml'}: ablations 'a' and 'b' are the same ablation (top2)",
                          tmp_path / "o")
    with pytest.raises(AblationError) as e:
        ablate(AblateOptions(out=str(tmp_path / "o"), progress=False),
               [Ablation(name="a", experts="1:3"), Ablation(name="b", experts={1: [3, 3]})])
    assert one_line(e).startswith("ablations 'a' and 'b' are the same ablation (experts-1:3)")
    assert not (tmp_path / "o").exists()


def test_keys_the_selection_ignores_are_refused_as_the_command_refuses_their_flags(tmp_path, capsys):
    """`seed: 3` beside `top: 2` drew nothing, and `layers: [2]` beside `experts: "1:3"` ablated layer 1,
    each without a word, where the command refuses `--seed` and `--layers` there (a sweep user's tour)."""
    drew = "seeds the draw of random, and this ablation draws nothing"
    bad = {"top-seed": ("{name: a, top: 2, seed: 3}", f"seed 3 {drew}"),
           "experts-seed": ('{name: a, experts: "1:3", seed: 2}', f"seed 2 {drew}"),
           "token-top-seed": ("{name: a, token_top: 1, seed: 1}", f"seed 1 {drew}"),
           "experts-layers": ('{name: a, experts: "1:3", layers: [2]}', "layers [2]: it chooses the layers of top, "
                              "random, token_top and shared; experts names its own (layer:expert, e.g. 2:3+5)")}
    for kind, (entry, msg) in bad.items():
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"- {{name: first, top: 1}}\n- {entry}\n")
        with pytest.raises(AblationError) as e:
            load_spec(path)
        who = "ablation #2: ablation 'a'" if kind == "experts-layers" else "ablation #2 ('a')"  # Ablation's check
        assert one_line(e) == f"spec file {path}: {who}: {msg}"
    assert_one_line_error(main(["--out", str(tmp_path / "o"), "--spec", str(tmp_path / "experts-layers.yaml")]),
                          capsys, "ablation #2: ablation 'a': layers [2]: it chooses the layers", tmp_path / "o")
    # and in Python: the same Ablation ablated layer 1 under Python's ablate as well
    with pytest.raises(AblationError) as e:
        Ablation(name="a", experts="1:3", layers=[2])
    assert one_line(e) == f"ablation 'a': {bad['experts-layers'][1]}"
    # controls: where the key does act, and the default seed an Ablation written out whole holds
    (tmp_path / "ok.yaml").write_text('- {name: a, random: 2, seed: 3}\n- {name: b, experts: "1:3", layers: [2], '
                                      "shared: true}\n- {name: c, top: 2, layers: [1], seed: 0}\n")
    assert [a.seed for a in load_spec(tmp_path / "ok.yaml")] == [3, 0, 0]
