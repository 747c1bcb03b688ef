"""`dsv3-probe import sglang` of dumps from a server that fuses the shared expert into the routed
experts' kernel: every token of a MoE layer also chooses one id past the routed ones (SGLang's
select_experts appends it last; docs/sglang.md). Built in SGLang's structures (tests/helpers/
sglang_dumps.py) from the same known routing as test_sglang.py's `world`: the fused import must equal
the routing without the slot, the slot said on stdout and in run.json; an unfused dump is the control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probe
from helpers import sglang_dumps as sg
from probe.sglang import SGLangError, import_sglang

P = sg.E + 4  # the world's physical slots (4 redundant)


def _loads_equal_the_routing(run, passes) -> None:
    want = sg.logical_counts(passes)
    got = sg.run_loads(run)
    assert [got[s][1:].tolist() for s in sorted(got)] == [want[fp][1:].tolist() for fp in sorted(want)]
    assert set(run.df("expert_load").expert) == set(range(sg.E))


def _moe_rows(passes) -> int:
    """(MoE layer, token) rows of the traffic: each chose the slot once."""
    return sum(len(p.input_ids) for p in passes) * (sg.L - len(sg.DENSE))


@pytest.mark.parametrize("with_config", [True, False])
def test_per_token_slot_past_the_map_is_set_aside(world, tmp_path, capsys, with_config):
    passes = world["passes"]
    d = sg.write_per_token(tmp_path / "fused", passes, world["map"], slots=1)[0].parent
    cfg = str(world["config"]) if with_config else None
    capsys.readouterr()
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=cfg))
    err = capsys.readouterr().err
    assert "fused shared expert found: physical id(s) [20]" in err
    assert len([x for x in err.splitlines() if "fused" in x]) == 1
    src = run.info["source"]
    assert src["shared_fused"] is True and src["shared_slots"] == [P] and src["shared_slot_ids_are"] == "physical"
    assert src["shared_selections_dropped"] == _moe_rows(passes)  # the tensor-parallel copies counted once
    assert src["shared_fused_assumed"] is False
    assert (run.info["model_args"]["n_activated_experts"], run.info["model_args"]["n_routed_experts"]) == (sg.K, sg.E)
    r = run.df("routing")
    assert set(r.expert_ids.map(len)) == {sg.K} and max(max(x) for x in r.expert_ids) < sg.E
    _loads_equal_the_routing(run, passes)


def test_the_fused_notes_go_to_stderr_with_the_imports_other_notes(world, tmp_path, capsys):
    """The fused-slot line and the stat hint were printed on stdout, every other note of the import on
    stderr: stdout is the command's result only (what it imported, where it wrote)."""
    from probe.__main__ import main

    token = sg.write_per_token(tmp_path / "t", world["passes"], world["map"], slots=1)[0].parent
    stat = sg.write_stat(tmp_path / "s", world["passes"], slot=True)
    for dump, note in ((token, "fused shared expert found"), (stat, "as a fused shared expert")):
        capsys.readouterr()
        assert main(["import", "sglang", str(dump), "--out", str(tmp_path / f"run-{dump.name}")]) == 0
        got = capsys.readouterr()
        assert note in got.err and "fused shared" not in got.out, (dump.name, got.out)
        assert [x.split()[0] for x in got.out.strip().splitlines()] == ["imported", "wrote"], got.out


def test_per_token_replicas_of_the_slot_are_all_set_aside(world, tmp_path):
    """SGLang's first fusion (n_share_experts_fusion) cloned the shared expert, tensor-parallel size times,
    and gave each token one of ids 256..256+n-1 at random: every such id is a slot."""
    passes = world["passes"]
    d = sg.write_per_token(tmp_path / "fused", passes, world["map"], slots=3)[0].parent
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    assert run.info["source"]["shared_slots"] == [P, P + 1, P + 2]
    assert run.info["source"]["shared_selections_dropped"] == _moe_rows(passes)
    _loads_equal_the_routing(run, passes)


@pytest.mark.parametrize("with_config", [True, False])
def test_per_token_slot_inside_the_map_is_told_by_being_every_tokens_last(world, tmp_path, capsys, with_config):
    """A slot id that the map covers (a server with more physical slots than experts), in SGLang's layout
    (the NOTE above sglang_fused._last_alike): the trivial map over P slots, the routed ids the logical
    ones (such a server dispatches to no replica), the slot's id E, every token's last in every MoE
    layer and in no other column."""
    passes = world["passes"]
    d = sg.write_per_token(tmp_path / "routed", passes, np.tile(np.arange(sg.E), (sg.L, 1)), inside=sg.E)[0].parent
    d = sg.edited_copy(d, tmp_path / "fused", lambda data: data.update(
        last_physical_to_logical_map=torch.from_numpy(np.tile(np.arange(P) % sg.E, (sg.L, 1)))))
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"]) if with_config else None))
    src = run.info["source"]
    assert src["shared_fused"] is True and src["shared_slots"] == [sg.E]
    assert "the same id last" in src["shared_fused_found_by"] and "fused shared expert" in capsys.readouterr().err
    assert set(run.df("routing").expert_ids.map(len)) == {sg.K}
    _loads_equal_the_routing(run, passes)


@pytest.mark.parametrize("hot, copy, ordered", [(3, P - 1, "sorted"), (0, sg.E, "by score")])
def test_a_hot_experts_replica_every_tokens_last_is_not_a_slot_without_config(tmp_path, hot, copy, ordered):
    """Negative control: an unfused server with redundant slots that dispatches to them, every token of
    every MoE layer choosing expert `hot` last, sent to its replica `copy` (the trivial map holds it
    there). A copy past the logical count, the only replica any token was sent to (ids sorted), was
    taken for a slot, and so was one at the logical count among tokens sent to other replicas too (ids
    in score order, `hot` the lowest): SGLang's slot inside the map comes from a server that dispatches
    nothing, and its id is the logical count."""
    passes = sg.traffic(seed=3, passes=3, ranks=1)
    for p in passes:
        for layer in set(range(sg.L)) - set(sg.DENSE):
            for row in p.logical[layer]:
                others = [x for x in row if x != hot][:sg.K - 1]
                row[:] = others + [hot]
    m = np.tile(np.arange(P) % sg.E, (sg.L, 1))
    d = sg.write_per_token(tmp_path / "routed", passes, m, ranks=1)[0].parent

    def dispatched(data):
        for r in data["records"]:
            ids = r["topk_ids_of_layer"]
            moe = ids[:, :, 0] >= 0
            ids[:, :, sg.K - 1][moe] = copy
            if ordered == "sorted":  # the others sent to their first slots (the trivial map's p % E)
                ids[:, :, :sg.K - 1] = torch.where(moe[..., None], ids[:, :, :sg.K - 1] % sg.E, ids[:, :, :sg.K - 1])
                ids[:, :, :sg.K] = torch.where(moe[..., None], ids[:, :, :sg.K].sort(-1).values, ids[:, :, :sg.K])
    d = sg.edited_copy(d, tmp_path / "hot", dispatched)
    ids = np.concatenate([r["topk_ids_of_layer"].numpy().reshape(-1, sg.WIDTH)
                          for r in torch.load(next(d.glob("*.pt")), weights_only=True)["records"]])
    moe = ids[:, 0] >= 0
    assert (ids[moe, sg.K - 1] == copy).all()  # the copy is every MoE row's last
    assert (ids[moe, :sg.K - 1] >= sg.E).any() == (ordered == "by score")  # other tokens sent to other replicas
    run = probe.open_run(import_sglang(d, tmp_path / "run"))
    assert run.info["source"]["shared_fused"] is False
    assert run.info["model_args"]["n_activated_experts"] == sg.K
    assert set(run.df("routing").expert_ids.map(len)) == {sg.K}
    _loads_equal_the_routing(run, passes)


def test_unfused_dumps_are_read_as_before(world, tmp_path, capsys):
    """The control: SGLang's dumps of an unfused server find no slot and say nothing of one; a stat
    dump without --config cannot tell, and says what it assumed."""
    for mode in ("per_token", "per_pass", "stat"):
        for cfg in (str(world["config"]), None):
            capsys.readouterr()
            run = probe.open_run(import_sglang(world[mode], tmp_path / f"{mode}-{cfg is None}", config=cfg))
            src = run.info["source"]
            assert src["shared_fused"] is False and "shared_slots" not in src, mode
            assert src["shared_fused_assumed"] is (mode == "stat" and cfg is None), (mode, cfg)
            assert "fused" not in capsys.readouterr().err, mode
            _loads_equal_the_routing(run, world["passes"])


def test_a_routed_expert_every_token_chose_last_is_not_a_slot_under_its_config(world, tmp_path):
    """Negative control: tokens choosing exactly --config's top-k, whose last id is always the same
    slot (one no other column holds), route there: the slot makes top-k + 1."""
    passes = world["passes"]
    routed = np.tile(np.arange(P - 1) % sg.E, (sg.L, 1))
    d = sg.write_per_token(tmp_path / "routed", passes, routed)[0].parent

    def same_last(data):
        data["last_physical_to_logical_map"] = torch.from_numpy(np.concatenate([routed, routed[:, :1]], 1))
        for r in data["records"]:
            r["topk_ids_of_layer"][1:, :, sg.K - 1] = P - 1  # every token's last, expert 0 by the map
    d = sg.edited_copy(d, tmp_path / "same-last", same_last)
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    assert run.info["source"]["shared_fused"] is False
    assert set(run.df("routing").expert_ids.map(len)) == {sg.K}


@pytest.mark.parametrize("with_config", [True, False])
def test_per_pass_count_columns_past_the_map_are_set_aside(world, tmp_path, capsys, with_config):
    passes = world["passes"]
    d = sg.write_per_pass(tmp_path / "fused", passes, world["map"], slots=2)[0].parent
    capsys.readouterr()
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"]) if with_config else None))
    src = run.info["source"]
    assert src["shared_fused"] is True and src["shared_slots"] == [P, P + 1]
    assert src["shared_selections_dropped"] == _moe_rows(passes)
    assert src["topk_assumed"] is False  # the slot counts each token once: the dump gives its top-k
    assert run.info["model_args"]["n_activated_experts"] == sg.K
    assert "fused shared expert found" in capsys.readouterr().err
    _loads_equal_the_routing(run, passes)
    el = run.df("expert_load")
    want = {}
    for p in passes:
        want[p.fp] = want.get(p.fp, 0) + len(p.input_ids)
    assert [set(el[el.step == s].tokens) for s in range(len(want))] == [{want[fp]} for fp in sorted(want)]


def test_stat_experts_past_the_config_are_set_aside(world, tmp_path, capsys):
    passes = world["passes"]
    f = sg.write_stat(tmp_path / "fused", passes, slot=True)
    capsys.readouterr()
    run = probe.open_run(import_sglang(f, tmp_path / "run", config=str(world["config"])))
    src = run.info["source"]
    assert src["shared_fused"] is True and src["shared_slots"] == [sg.E] and src["shared_slot_ids_are"] == "logical"
    assert src["shared_selections_dropped"] == _moe_rows(passes) and src["shared_fused_assumed"] is False
    assert "fused shared expert found: logical id(s) [16]" in capsys.readouterr().err
    _loads_equal_the_routing(run, passes)


def test_stat_without_config_cannot_tell_and_says_what_it_assumed(world, tmp_path, capsys):
    f = sg.write_stat(tmp_path / "fused", world["passes"], slot=True)
    capsys.readouterr()
    run = probe.open_run(import_sglang(f, tmp_path / "run"))
    err = capsys.readouterr().err
    assert f"expert {sg.E}, the last, counts 1 per {sg.K}" in err and "pass --config" in err
    src = run.info["source"]
    assert src["shared_fused"] is False and src["shared_fused_assumed"] is True and src["topk_assumed"] is True
    assert run.info["model_args"]["n_routed_experts"] == sg.E + 1  # read as the dump holds it, as said


def _cfg(world, tmp_path, **kw) -> str:
    cfg = json.loads(world["config"].read_text()) | kw
    (tmp_path / "cfg").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path / "cfg" / "config.json")


def test_what_is_no_fused_slot_or_contradicts_the_config_is_refused_in_one_line(world, tmp_path, capsys):
    from probe.__main__ import main

    passes, m = world["passes"], world["map"]
    token = sg.write_per_token(tmp_path / "t", passes, m, slots=1)[0].parent

    def some_rows(data):  # the slot id on some tokens only: no fused slot, an id outside the map
        data["records"][0]["topk_ids_of_layer"][1, 0, sg.K] = -1
    def two_on_one_row(data):  # one token with two slot ids, the others one: not one slot per token
        data["records"][0]["topk_ids_of_layer"][1, 0, sg.K - 1] = P
    per_pass = sg.write_per_pass(tmp_path / "p", passes, m, slots=1)[0].parent

    def uneven(data):  # a column past the map that does not count each token once
        data["records"][0]["global_physical_count"][1, P] += 1
    stat = sg.write_stat(tmp_path / "s", passes, slot=True)
    bad_stat = tmp_path / "s2" / stat.name
    bad_stat.parent.mkdir()
    d = torch.load(stat, weights_only=True)
    d["logical_count"][0, 1, sg.E] += 1
    torch.save(d, bad_stat)
    base = str(world["config"])
    cases = [
        (sg.edited_copy(token, tmp_path / "t2", some_rows), base, f"physical expert id {P} is outside the map's {P}"),
        (sg.edited_copy(token, tmp_path / "t3", two_on_one_row), base, "tokens hold [1, 2] of them"),
        (sg.edited_copy(per_pass, tmp_path / "p2", uneven), base,
         "the columns past it are no fused shared-expert slot"),
        (bad_stat, base, f"expert id {sg.E} is outside --config"),
        (token, _cfg(world, tmp_path / "a", n_shared_experts=0), "n_shared_experts=0"),
        (per_pass, _cfg(world, tmp_path / "b", num_experts_per_tok=2 * sg.K), f"choose {sg.K} experts each"),
        (stat, _cfg(world, tmp_path / "c", num_experts_per_tok=2 * sg.K), "no fused shared-expert slot"),
    ]
    for dump, cfg, msg in cases:
        code = main(["import", "sglang", str(dump), "--config", cfg, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and msg in err, (dump.name, err)
        assert not (tmp_path / "run").exists()
    with pytest.raises(SGLangError, match="no fused shared-expert slot"):
        import_sglang(sg.edited_copy(per_pass, tmp_path / "p3", uneven), tmp_path / "run")


def _every_token_chooses_the_last_expert_sorted(passes) -> None:
    """Every token of a MoE layer also chooses expert E - 1 (a popular one), its ids sorted: that routed
    expert is every token's last id, as a slot inside the map would be."""
    for p in passes:
        for layer in set(range(sg.L)) - set(sg.DENSE):
            for t in range(p.logical.shape[1]):
                row = p.logical[layer, t]
                if sg.E - 1 not in row:
                    row[-1] = sg.E - 1
                p.logical[layer, t] = np.sort(row)


def test_a_popular_routed_expert_every_tokens_last_is_not_a_slot_without_config(tmp_path, capsys):
    """Negative control without --config: in an unfused dump whose ids are sorted, a routed expert that
    every token chose is every token's last id. It is a logical expert's id (SGLang's slot id is
    n_routed_experts, past them), so it is routing, kept: its selections were dropped and the top-k
    read as K - 1."""
    passes = sg.traffic(seed=3, passes=3, ranks=1)
    _every_token_chooses_the_last_expert_sorted(passes)
    d = sg.write_per_token(tmp_path / "sorted", passes, np.tile(np.arange(sg.E), (sg.L, 1)), ranks=1)[0].parent
    capsys.readouterr()
    run = probe.open_run(import_sglang(d, tmp_path / "run"))
    assert "fused" not in capsys.readouterr().err
    assert run.info["source"]["shared_fused"] is False
    assert run.info["model_args"]["n_activated_experts"] == sg.K
    assert set(run.df("routing").expert_ids.map(len)) == {sg.K}
    _loads_equal_the_routing(run, passes)


def test_stat_note_of_a_popular_last_expert_says_when_config_sets_it_aside(world, tmp_path, capsys):
    """An unfused stat dump without --config whose last expert every token chose counts as a slot would:
    the note must not promise that --config sets it aside (the model's own config, of sg.E routed
    experts, keeps it: the import with it is the control)."""
    passes = sg.traffic(seed=1, passes=5, ranks=1)
    _every_token_chooses_the_last_expert_sorted(passes)
    f = sg.write_stat(tmp_path / "stat", passes)
    capsys.readouterr()
    import_sglang(f, tmp_path / "run")
    err = capsys.readouterr().err
    assert f"expert {sg.E - 1}, the last, counts 1 per {sg.K - 1}" in err
    assert f"sets it aside if its n_routed_experts is {sg.E - 1} and keeps it if {sg.E}" in err
    run = probe.open_run(import_sglang(f, tmp_path / "run2", config=str(world["config"])))
    assert run.info["source"]["shared_fused"] is False and "fused" not in capsys.readouterr().err
    _loads_equal_the_routing(run, passes)
