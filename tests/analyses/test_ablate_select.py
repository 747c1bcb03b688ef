"""Ablation selections (analyses.ablate.select): names, top-n and seeded random choices, the group
guard, how a selection is written (layers twice, ids of the wrong kind) and the sweep file's
entries. The hooks, the evaluation and the command are in test_ablate.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.ablate import (Ablation, AblationError, RouterShape, ablation_hooks, check_routable, load_spec,
                             parse_experts, resolve, top_vs_random)
from helpers import random_model

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ selections and guard
def test_one_selection_gets_one_name_however_it_is_written():
    names = {Ablation(experts=e).name for e in ("1:3,2:5+7", "2:7+5,1:3", "2:5+5+7,1:3", {2: [7, 5], "1": [3]})}
    assert names == {"experts-1:3,2:5+7"}
    assert Ablation(experts="2:5").name != Ablation(experts="2:7").name  # the control


def test_random_selection_is_seeded():
    shape = RouterShape.of(random_model("tiny").args)
    a = resolve(Ablation(random=3, seed=1), shape).disabled
    assert a == resolve(Ablation(random=3, seed=1), shape).disabled
    assert a != resolve(Ablation(random=3, seed=2), shape).disabled
    assert set(a) == {1, 2} and all(len(v) == 3 for v in a.values())
    # each layer's draw depends on (seed, layer) only
    assert resolve(Ablation(random=3, seed=1, layers=[2]), shape).disabled == {2: a[2]}


def test_top_n_per_layer_and_domain():
    shape = RouterShape.of(random_model("tiny").args)
    load = np.arange(32).reshape(2, 16)
    loads = {"all": load, "code": load[:, ::-1].copy()}
    assert resolve(Ablation(top=2), shape, loads).disabled == {1: [14, 15], 2: [14, 15]}
    assert resolve(Ablation(top=2, domain="code"), shape, loads).disabled == {1: [0, 1], 2: [0, 1]}
    with pytest.raises(AblationError, match="no loads for domain 'math'; domains are \\['code'\\]"):
        resolve(Ablation(top=2, domain="math"), shape, loads)
    sweep = top_vs_random([1, 2], seeds=(0, 1))
    assert [a.name for a in sweep] == ["top1", "random1-s0", "random1-s1", "top2", "random2-s0", "random2-s1"]
    assert Ablation(experts={"1": "3+5", 2: 7}).experts == {1: ["3", "5"], 2: ["7"]}
    assert resolve(Ablation(experts={"1": "3+5", 2: 7}), shape).disabled == {1: [3, 5], 2: [7]}


def test_top_n_ties_go_to_the_lower_expert_id():
    """Equal loads: the lower expert id is disabled first (the documented tie rule). A descending
    sort written as argsort(counts)[::-1] disables the higher ids of a tie instead (a review)."""
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    load = np.zeros((2, 16), np.int64)
    load[0, [2, 5, 9]] = 7  # a three-way tie for the top: 2 and 5 go
    load[1, [1, 4]], load[1, [8, 12, 15]] = 9, 3  # 1 and 4 first, then the lowest of the tie at 3: 8
    assert resolve(Ablation(top=2), shape, {"all": load}).disabled == {1: [2, 5], 2: [1, 4]}
    assert resolve(Ablation(top=3), shape, {"all": load}).disabled == {1: [2, 5, 9], 2: [1, 4, 8]}


def test_a_random_control_draws_each_layer_on_its_own():
    """`random` N draws per layer, seeded by (seed, layer): a draw seeded by the seed alone disabled
    the same expert ids in every layer, a control correlated across layers (a review)."""
    shape = RouterShape(4, 1, 16, 4, 4, 2, True, 1)  # MoE layers 1, 2, 3
    draws = [resolve(Ablation(random=3, seed=s, mode="zero"), shape).disabled for s in range(4)]
    assert all(set(d) == {1, 2, 3} and all(len(set(v)) == 3 for v in d.values()) for d in draws)
    assert sum(d[1] == d[2] == d[3] for d in draws) == 0  # 560 ways to draw 3 of 16: equal draws are rare


def test_a_random_reroute_draw_the_guard_refuses_is_redrawn():
    """Reroute: a random draw that would leave a token fewer than K experts is drawn again (up to
    RANDOM_DRAWS times), not refused: without the redraw, `random 10` failed for a seed whose first draw the guard refuses (a review).
    Zero mode keeps the first draw, which shows that the guard does refuse some first draws."""
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)  # 4 groups of 4, keep 2, K = 4, bias
    refused_first = 0
    for seed in range(6):
        first = resolve(Ablation(random=10, seed=seed, mode="zero"), shape).disabled
        for layer, ids in first.items():
            try:
                check_routable(shape, layer, ids)
            except AblationError:
                refused_first += 1
        got = resolve(Ablation(random=10, seed=seed), shape).disabled
        assert set(got) == {1, 2}
        for layer, ids in got.items():
            assert len(set(ids)) == 10
            check_routable(shape, layer, ids)
    assert refused_first > 0


def test_guard_without_the_bias_one_expert_scores_a_group():
    """Without the sigmoid bias (softmax routers) a group scores by its best expert: a group left with
    one expert is still eligible. A guard that always asked for two refused such reroutes (a review)."""
    off = [0, 1, 2, 4, 5, 6, 8, 9, 10]  # one expert left in groups 0-2, four in group 3
    plain = RouterShape(3, 1, 16, 2, 4, 2, False, 1)  # K = 2, keep 2 of 4 groups
    check_routable(plain, 1, off)  # the two fewest: 1 + 1 = K
    with pytest.raises(AblationError, match="would have 2 < top-k=3"):
        check_routable(RouterShape(3, 1, 16, 3, 4, 2, False, 1), 1, off)  # K = 3: 1 + 1 < 3
    with pytest.raises(AblationError, match="only 1 of 4 expert groups keep >= 2 experts"):
        check_routable(RouterShape(3, 1, 16, 2, 4, 2, True, 1), 1, off)  # the control: with the bias


def test_guard():
    shape = RouterShape.of(random_model("tiny").args)  # G=4 groups of 4, keep 2 groups, K=4, bias
    check_routable(shape, 1, [0, 1, 2, 3])  # one whole group off: three groups remain
    check_routable(shape, 1, [0, 1, 4, 5, 8, 9, 12, 13])  # two left in every group: 2 + 2 = K
    with pytest.raises(AblationError, match="layer 1: only 1 of 4 expert groups keep >= 2 experts"):
        check_routable(shape, 1, list(range(12)))  # three whole groups off
    with pytest.raises(AblationError, match="group limit cannot be met"):
        check_routable(shape, 1, [0, 1, 2, 4, 5, 6, 8, 9, 10])  # one expert per group: no top-2 group score
    k6 = RouterShape.of(random_model("tiny", n_activated_experts=6).args)
    check_routable(k6, 1, [0, 1])
    with pytest.raises(AblationError, match="would have 5 < top-k=6 experts"):
        check_routable(k6, 1, [0, 1, 4])
    flat = RouterShape.of(random_model("tiny", n_expert_groups=1, n_limited_groups=1).args)
    with pytest.raises(AblationError, match="3 experts left but every token needs top-k=4"):
        check_routable(flat, 1, list(range(13)))
    with pytest.raises(AblationError, match="ablation 'top12'"):  # refused before any forward pass
        resolve(Ablation(top=12), shape, {"all": np.ones((2, 16))})
    resolve(Ablation(top=12, mode="zero"), shape, {"all": np.ones((2, 16))})  # zero mode keeps routing



def test_experts_a_reroute_strands_are_counted_and_named():
    """A top-N that disables 3 of a group's 4 experts strands the 4th (a group is scored by its two best):
    n_disabled said N where N + 1 were gone, so top-vs-random compared unequal counts, and random draws
    stranded experts too (a sweep user's review). Now counted, named in the spec, and random draws avoid it."""
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)  # 4 groups of 4, keep 2, K = 4, bias
    loads = np.zeros((2, 16))
    loads[:, [0, 1, 2, 8]] = [9, 8, 7, 6]  # the busiest: 3 of group 0 and one of group 2
    plan = resolve(Ablation(name="top4", top=4), shape, {"all": loads})
    assert plan.disabled == {1: [0, 1, 2, 8], 2: [0, 1, 2, 8]} and plan.unreachable == {1: [3], 2: [3]}
    assert plan.n_disabled == 10 and json.loads(plan.spec())["unreachable"] == {"1": [3], "2": [3]}
    zero = resolve(Ablation(name="top4z", top=4, mode="zero"), shape, {"all": loads})  # the routing is kept
    assert zero.unreachable == {} and zero.n_disabled == 8 and "unreachable" not in zero.spec()
    spread = np.zeros((2, 16))
    spread[:, [0, 4, 8, 12]] = 1  # the control: one a group strands nothing, and its key is as before
    assert resolve(Ablation(name="t", top=4), shape, {"all": spread}).unreachable == {}
    for seed in range(20):  # random draws of 3 would often take 3 of a group; none strands an expert
        p = resolve(Ablation(name="r", random=3, seed=seed), shape)
        assert p.unreachable == {} and p.n_disabled == 6, seed


def test_guard_when_every_group_is_kept():
    """A router that keeps all its groups (n_limited_groups = n_expert_groups) limits nothing: a group
    left with one expert scores -inf but is still kept, so that expert stays reachable. The guard
    refused such reroutes and called the expert removed (a review); the model routes to it."""
    from analyses.ablate import ablated
    from analyses.ablate.select import also_removed

    m = random_model("tiny", seed=0, n_limited_groups=4)  # 16 experts in 4 groups, all 4 kept, K = 4
    shape = RouterShape.of(m.args)
    assert also_removed(shape, [0, 1, 2]) == []
    check_routable(shape, 1, [0, 1, 2])
    check_routable(shape, 1, list(range(12)))  # three whole groups off: 4 experts left = K
    with pytest.raises(AblationError, match="3 experts left but every token needs top-k=4"):
        check_routable(shape, 1, list(range(13)))
    with torch.no_grad():
        m.layers[1].ffn.gate.bias[3] = 5.0  # expert 3, alone in its group once 0-2 are off, attracts every token
    tokens = torch.randint(2, m.args.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    for off, reached in (([0, 1, 2], 3), (list(range(12)), 12)):
        with ablated(m, {1: off}):
            _, cache = m.run_with_cache(tokens, names="layers.1.ffn.gate.hook_topk_ids")
        ids = cache["layers.1.ffn.gate.hook_topk_ids"]
        assert (ids == reached).any(-1).all() and not torch.isin(ids, torch.tensor(off)).any()

def test_bad_input_errors(tiny, tmp_path):
    shape = RouterShape.of(tiny.args)
    # a spec file's "false" was true to Python: the run renormalised, or disabled the shared expert,
    # while its table said it had not (a review)
    for field in ("renormalise", "shared"):
        for bad in ("false", 1, None):
            with pytest.raises(AblationError, match=f"ablation 'z': {field} must be true or false, not {bad!r}"):
                Ablation(name="z", experts="1:3", mode="zero", **{field: bad})
    cases = [({1: [16]}, "expert 1:16 out of range: layers have experts 0..15"),
             ({0: [1]}, "layer 0 is dense \\(n_dense_layers=1\\)"),
             ({7: [1]}, "layer 7 out of range")]
    for disabled, msg in cases:
        with pytest.raises(AblationError, match=msg):
            resolve(Ablation(experts=disabled), shape)
        with pytest.raises(AblationError, match=msg):
            ablation_hooks(tiny, disabled)
    assert parse_experts("1:3+5, 2:7") == {1: [3, 5], 2: [7]}
    for bad in ("1-3", "1:", "a:1", "1:2+"):
        with pytest.raises(AblationError, match="expected layer:expert"):
            parse_experts(bad)
    with pytest.raises(AblationError, match="mode 'drop'"):
        Ablation(top=1, mode="drop")
    with pytest.raises(AblationError, match="choose one of experts, top, random"):
        Ablation(top=1, random=2)
    specs = {"a.yaml": ("- {name: x, top: [", "malformed"), "b.yaml": ("- {name: x, tops: 2}", "unknown key 'tops'"),
             "c.json": ('{"name": "x"}', "expected a non-empty list"),
             "d.yaml": ("- {top: 1}\n- {top: 1}", "two ablations are named 'top1'"),
             "e.yaml": ("- {top: -1}", "ablation #1: top must be a non-negative integer, not -1"),
             # a traceback after every pass, or one from numpy, before (found by a review)
             "f.yaml": ("- {name: 16, top: 16}", r"ablation #1: name 16 must be a string \(in YAML, quote it"),
             "g.yaml": ("- {name: [a], random: 2}", r"ablation #1: name \['a'\] must be a string"),
             "h.yaml": ("- {name: a, random: 2, seed: 1.5}", "ablation #1: ablation 'a': seed must be a non-negative"),
             "i.yaml": ("- {name: a, random: 2, seed: -1}", "seed must be a non-negative integer, not -1")}
    for name, (text, msg) in specs.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AblationError, match=msg) as e:
            load_spec(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    bundled = load_spec(REPO / "analyses" / "sweeps" / "top_vs_random.yaml")  # the shipped example parses
    assert len(bundled) == 20 and bundled[0].name == "top1"
    (tmp_path / "ok.json").write_text(json.dumps({"ablations": [{"top": 2}, {"random": 2, "mode": "zero"}]}))
    assert [a.name for a in load_spec(tmp_path / "ok.json")] == ["top2", "random2-s0-zero"]
    # one ablation, one key: experts in another order or an unused seed wrote a second part (a review)
    shape = RouterShape.of(tiny.args)
    same = [resolve(Ablation(name="x", experts=e, seed=s), shape).spec() for e, s in (("1:3+5", 0), ("1:5+3+3", 1))]
    assert same[0] == same[1]
    drawn = [resolve(Ablation(name="r", random=2, seed=s), shape).spec() for s in (0, 1)]
    assert drawn[0] != drawn[1]  # the control: a seed that draws is part of the ablation


def test_guard_takes_the_groups_with_the_fewest_experts_left():
    # a plain reference of the rule: refused exactly when fewer than n_limited_groups groups stay
    # eligible or some choice of that many eligible groups holds fewer than K experts
    from itertools import combinations

    shape = RouterShape(3, 1, 16, 6, 4, 2, True, 1)  # 4 groups of 4, keep 2, K = 6, bias: eligible >= 2 left
    rng = np.random.default_rng(0)
    draws = [rng.choice(16, int(rng.integers(1, 9)), replace=False) for _ in range(200)]
    cases = [[8, 12, 13]] + [sorted(d.tolist()) for d in draws]  # [8, 12, 13]: groups left [4, 4, 3, 2]
    refused = 0
    for off in cases:
        left = [sum(e not in off for e in range(g * 4, g * 4 + 4)) for g in range(4)]
        eligible = [n for n in left if n >= 2]
        ok = len(eligible) >= 2 and all(a + b >= 6 for a, b in combinations(eligible, 2))
        try:
            check_routable(shape, 1, off)
            got = True
        except AblationError:
            got, refused = False, refused + 1
        assert got == ok, (off, left)
    assert 0 < refused < len(cases)


def test_negative_and_boolean_expert_ids_are_refused():
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    for experts, msg in (({1: [-1]}, "expert 1:-1 out of range"), ({1: [True]}, "expert True is not an integer")):
        with pytest.raises(AblationError, match=msg):  # -1 would disable expert 15, True expert 1
            resolve(Ablation(experts=experts), shape)


def test_a_selection_not_written_as_layer_to_expert_list_is_refused_by_name(tiny):
    """ablated(m, {1: 3}) (one expert, not a list) was "'int' object is not iterable" and ablated(m, '1:3')
    "'str' object has no attribute 'items'", from deep in the selection; Steer(experts={1: 3}) the same."""
    from analyses.steer import Steer, SteerError

    for disabled, msg in (({1: 3}, r"^layer 1: experts 3: expected a list of expert ids, e\.g\. \[5, 7\]$"),
                          ({1: "3"}, r"^layer 1: experts '3': expected a list of expert ids"),
                          ("1:3", r"^experts '1:3': expected \{layer: \[expert, \.\.\.\]\}, e\.g\. \{2: \[5, 7\]\} "
                                  r"\(parse_experts reads the text form\)$"),
                          ([(1, [3])], r"^experts \[\(1, \[3\]\)\]: expected \{layer")):
        with pytest.raises(AblationError, match=msg):
            ablation_hooks(tiny, disabled)
    with pytest.raises(SteerError, match=r"^layer 1: experts 3: expected a list of expert ids"):
        Steer(experts={1: 3}).resolve(RouterShape.of(tiny.args))
    assert len(ablation_hooks(tiny, {1: (3,)})) > 0  # the control: any list of ids


def test_top_and_random_take_up_to_every_expert_of_a_layer():
    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    loads = {"all": np.ones((2, 16))}
    for kind in ("top", "random"):
        got = resolve(Ablation(mode="zero", **{kind: 16}), shape, loads).disabled  # zero mode may take all
        assert got == {1: list(range(16)), 2: list(range(16))}
        with pytest.raises(AblationError, match=f"{kind} 17 > the 16 experts"):
            resolve(Ablation(mode="zero", **{kind: 17}), shape, loads)


def test_a_domain_without_top_is_refused():
    with pytest.raises(AblationError, match="domain selects the top experts of a domain: use it with top"):
        Ablation(random=2, domain="code")
    # '' (`--domain "$D"` with the variable unset) ranked by every domain's load without a word (a tour)
    for empty in ("", " "):
        with pytest.raises(AblationError, match=f"domain {empty!r}: name a domain of the run"):
            Ablation(top=2, domain=empty)
    assert Ablation(top=2, domain="code").domain == "code"  # the control


def test_a_layer_named_with_no_expert_is_not_part_of_the_plan():
    plan = resolve(Ablation(experts={1: [], 2: [3]}), RouterShape(3, 1, 16, 4, 4, 2, True, 1))
    assert plan.disabled == {2: [3]} and plan.first_layer == 2  # the ablation starts at layer 2


def test_a_layer_written_twice_is_one_layer():
    from analyses.ablate.select import normalise_disabled

    shape = RouterShape(3, 1, 16, 4, 4, 2, True, 1)
    assert normalise_disabled(shape, {"1": [3], 1: [5]}) == {1: [3, 5]}
    # and so does an Ablation's own reading of it (the later list replaced the earlier: expert 3 dropped)
    assert resolve(Ablation(experts={"1": [3], 1: [5]}), shape).disabled == {1: [3, 5]}
    assert Ablation(top=1, layers="2,1,2").layers == [1, 2]
    # the same ablation, its layers in another order: one spec (one part of the table)
    a, b = (resolve(Ablation(name="s", shared=True, experts="2:3", layers=v), shape) for v in ([2, 1, 1], [1, 2]))
    assert a.spec() == b.spec()


def test_shared_applies_to_the_layers_given():
    shape = RouterShape(4, 1, 16, 4, 4, 2, True, 1)  # MoE layers 1, 2, 3
    assert resolve(Ablation(shared=True, layers=[2]), shape).shared_layers == [2]
    assert resolve(Ablation(shared=True), shape).shared_layers == [1, 2, 3]


def test_renormalise_outside_zero_mode_is_refused(tiny):
    with pytest.raises(AblationError, match="renormalise applies to mode zero only"):
        Ablation(experts="1:3", renormalise=True)
    with pytest.raises(AblationError, match="renormalise applies to mode zero only"):
        ablation_hooks(tiny, {1: [3]}, "reroute", renormalise=True)
    # the shared expert alone: nothing routed to rescale, accepted without a word (an ablation tour)
    with pytest.raises(AblationError, match="renormalise rescales the routed experts left after mode zero, and this "
                                            r"ablation disables none \(shared alone\)"):
        Ablation(shared=True, mode="zero", renormalise=True)
    assert Ablation(experts="1:3", shared=True, mode="zero", renormalise=True).renormalise  # control


def test_default_names_tell_renormalise_and_shared_apart(tmp_path):
    # each is a different ablation: a sweep holding them all must not be refused as two of one name
    kinds = [dict(), dict(mode="zero"), dict(mode="zero", renormalise=True), dict(shared=True),
             dict(mode="zero", shared=True), dict(mode="zero", renormalise=True, shared=True)]
    (tmp_path / "s.json").write_text(json.dumps([{"experts": "1:3", **k} for k in kinds]))
    names = [a.name for a in load_spec(tmp_path / "s.json")]
    assert len(set(names)) == len(kinds)
    assert [("renorm" in n, "shared" in n) for n in names] == [
        (k.get("renormalise", False), k.get("shared", False)) for k in kinds]


def test_layers_that_are_not_integers_are_named_as_layers(tmp_path, capsys):
    """`--layers ''` (an unset shell variable in a sweep script) said "layer '' is not an integer", naming
    neither the flag nor what it wants; the spec key `layers` the same."""
    from analyses.ablate.__main__ import main
    from helpers.cli_errors import assert_one_line_error

    assert_one_line_error(main(["--out", str(tmp_path / "o"), "--top", "2", "--layers", ""]), capsys,
                          "layers '': layer '' is not an integer; give MoE layer indices, e.g. 1,3")
    with pytest.raises(AblationError, match=r"^layers \[1, 'x'\]: layer 'x' is not an integer; give"):
        Ablation(top=2, layers=[1, "x"])
