"""model.patching: patching experts by id against a hand loop over (token, slot) on the tiny model,
where the clean and corrupted runs route differently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import model
from model import patching

EXPERT_OUT, TOPK = "layers.{}.ffn.experts.hook_expert_out", "layers.{}.ffn.gate.hook_topk_ids"


@pytest.fixture(scope="module")
def pair():
    """(clean, corrupted) [2, 10] token ids: the corrupted ones differ at positions 3..9."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(2, 512, (2, 10), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3:] = torch.randint(2, 512, (2, 7), generator=g)
    return clean, corrupted


def by_hand(ids, clean_ids, clean_out, out, experts=None, rows=None):
    """The clean output of expert ids[t, k] where the clean run chose it for token t, slot by slot; and
    the counts of (token, expert) pairs patched and not."""
    new, done, left = out.clone(), 0, 0
    for t in range(ids.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if (experts is not None and e not in experts) or (rows is not None and t not in rows):
                continue
            clean_row = clean_ids[t].tolist()
            if e in clean_row:
                new[t, k] = clean_out[t, clean_row.index(e)]
                done += 1
            else:
                left += 1
    return new, done, left


def test_patching_by_expert_id_is_the_hand_loop_where_routing_differs(tiny, pair):
    clean, corrupted = pair
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    _, xc = tiny.run_with_cache(corrupted, names=[TOPK.format(1), EXPERT_OUT.format(1)])
    ids, cids = xc[TOPK.format(1)], cc[TOPK.format(1)]
    # the case this is for: the routing differs, and experts both runs chose sit in different slots
    assert not torch.equal(ids, cids)
    moved = (ids[:, :, None] == cids[:, None, :]) & ~torch.eye(4, dtype=torch.bool)
    assert moved.any()
    want, done, left = by_hand(ids, cids, cc[EXPERT_OUT.format(1)], xc[EXPERT_OUT.format(1)])
    assert done > 0 and left > 0
    ref = tiny.run_with_hooks(corrupted, fwd_hooks=[(EXPERT_OUT.format(1), lambda t, hook: want)])
    logits, report = patching.patch_experts(tiny, corrupted, cc, layers=[1])
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert report.patched == {1: done} and report.not_patched == {1: left}
    # negative control: the slots copied as they are (the clean output of whatever expert the clean run
    # had in that slot) is another result
    naive = tiny.run_with_hooks(corrupted, fwd_hooks=[(EXPERT_OUT.format(1), lambda t, h: cc[EXPERT_OUT.format(1)])])
    assert (naive - logits).abs().max() > 1e-3


def test_chosen_experts_and_positions_and_every_layer_in_turn(tiny, pair):
    """Layers 1 and 2 patched, the even experts at positions 1 (the same prefix: the same routing), 4
    and 7: layer 2's routing compared is the one layer 1's patch left, built by hand one layer at a time."""
    clean, corrupted = pair
    experts, positions = list(range(0, 16, 2)), [1, 4, 7]
    rows = [b * 10 + p for b in range(2) for p in positions]
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    hooks, done, left = [], {}, {}
    for L in (1, 2):
        with tiny.hooks(hooks):
            _, xc = tiny.run_with_cache(corrupted, names=[TOPK.format(L), EXPERT_OUT.format(L)])
        new, done[L], left[L] = by_hand(xc[TOPK.format(L)], cc[TOPK.format(L)], cc[EXPERT_OUT.format(L)],
                                        xc[EXPERT_OUT.format(L)], experts, rows)
        hooks = hooks + [(EXPERT_OUT.format(L), lambda t, hook, new=new: new)]
    ref = tiny.run_with_hooks(corrupted, fwd_hooks=hooks)
    logits, report = patching.patch_experts(tiny, corrupted, cc, experts=experts, positions=positions)
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert report.patched == done and report.not_patched == left and report.n_patched > 0 and report.n_not_patched > 0
    assert report.n_patched + report.n_not_patched == sum(done.values()) + sum(left.values())


def test_the_same_run_patched_is_itself_and_every_pair_is_patched(tiny, pair):
    clean, _ = pair
    full, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    logits, report = patching.patch_experts(tiny, clean, cc)
    torch.testing.assert_close(logits, full, rtol=1e-6, atol=1e-6)
    assert report.n_not_patched == 0 and report.patched == {1: 2 * 10 * 4, 2: 2 * 10 * 4}
    _, twice = patching.patch_experts(tiny, clean, cc, layers=[2, 2])  # named twice: patched (and counted) once
    assert twice.patched == {2: 2 * 10 * 4}
    # a layer the forward skips (start_at_layer) was left unpatched, with no word and no entry: warned
    _, c2 = tiny.run_with_cache(clean, names="layers.2.hook_resid_pre")
    with pytest.warns(UserWarning, match=r"^patch_experts: layers \[1\] were not reached by this forward"):
        _, skipped = patching.patch_experts(tiny, clean, cc, start_at_layer=2, resid=c2["layers.2.hook_resid_pre"])
    assert skipped.patched == {2: 2 * 10 * 4}


def test_a_padded_batch_patches_and_counts_only_its_real_tokens(tiny, pair):
    """Rows of 10 and 6 tokens right-padded with `lengths=`: the report is the sum of the rows patched
    alone, and their logits those rows' (the padded positions were patched and counted too)."""
    clean, corrupted = pair
    lengths = torch.tensor([10, 6])
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES, lengths=lengths)
    logits, report = patching.patch_experts(tiny, corrupted, cc, lengths=lengths)
    done, left = {}, {}
    for b, n in enumerate(lengths.tolist()):
        _, one = tiny.run_with_cache(clean[b:b + 1, :n], names=patching.EXPERT_NAMES)
        alone, rep = patching.patch_experts(tiny, corrupted[b:b + 1, :n], one)
        torch.testing.assert_close(logits[b:b + 1, :n], alone, rtol=1e-5, atol=1e-5)
        for L in rep.patched:
            done[L] = done.get(L, 0) + rep.patched[L]
            left[L] = left.get(L, 0) + rep.not_patched[L]
    assert report.patched == done and report.not_patched == left
    assert report.n_patched + report.n_not_patched == 16 * 4 * 2  # 16 real tokens, top-4, 2 MoE layers


def test_bad_input_is_one_line_naming_it(tiny, pair):
    clean, corrupted = pair
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    _, only_ids = tiny.run_with_cache(clean, names="layers.*.ffn.gate.hook_topk_ids")
    with pytest.raises(model.HookError, match=r"lacks layers\.1\.ffn\.experts\.hook_expert_out: make it with"):
        patching.patch_experts(tiny, corrupted, only_ids)
    # a cache of another dtype (a float32 model's, into a bfloat16 one) was refused as 'the hook on ... returned'
    # float64: a hook the caller never wrote
    wide = {k: v.double() if v.is_floating_point() else v for k, v in cc.items()}
    with pytest.raises(ValueError, match=r"^patch_experts: layers\.1\.ffn\.experts\.hook_expert_out is torch\.float32 "
                                         r"in this run but torch\.float64 in the clean cache: make the clean cache "):
        patching.patch_experts(tiny, corrupted, wide)
    whole = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)  # (logits, cache), not the cache
    with pytest.raises(ValueError, match=r"^patch_experts: clean_cache is a tuple: run_with_cache returns \(logits, "
                                         r"cache\), pass the cache \(run_with_cache\(clean_tokens, "):
        patching.patch_experts(tiny, corrupted, whole)
    with pytest.raises(ValueError, match=r"^patch_experts: clean_cache is a Tensor \(run_with_cache"):
        patching.patch_experts(tiny, corrupted, whole[0])
    with pytest.raises(ValueError, match=r"layers=0 is not an MoE layer of this model \(its MoE layers: \[1, 2\]\)"):
        patching.patch_experts(tiny, corrupted, cc, layers=[0])
    with pytest.raises(ValueError, match=r"experts=16 is outside this model's \[0, 16\)"):
        patching.patch_experts(tiny, corrupted, cc, experts=[16])
    with pytest.raises(ValueError, match=r"positions=10 is outside the tokens' \[0, 10\)"):
        patching.patch_experts(tiny, corrupted, cc, positions=[10])
    with pytest.raises(ValueError, match=r"^patch_experts: tokens: expected token ids \[B, S\] \(a 2-D tensor\), got "
                                         r"\(10,\)$"):
        patching.patch_experts(tiny, corrupted[0], cc)
    with pytest.raises(ValueError, match=r"hook_topk_ids is \(20, 4\).*the tokens patched have 18 \(B\*S\) rows"):
        patching.patch_experts(tiny, corrupted[:, :9], cc)


def test_ids_from_numpy_pandas_and_tensors_are_ints(tiny, pair):
    """Layers, experts and positions given as numpy ints and arrays, a pandas column or integer tensors
    (a 2-D one flattened) patch what the same Python ints patch (they were refused, or read wrongly)."""
    clean, corrupted = pair
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    want, report = patching.patch_experts(tiny, corrupted, cc, layers=[2], experts=list(range(0, 16, 2)),
                                           positions=[1, 4, 7])
    assert report.n_patched > 0 and report.n_not_patched > 0
    for layers, experts, positions in ((np.int64(2), np.arange(0, 16, 2), np.array([1, 4, 7], dtype=np.int32)),
                                       ([np.int64(2)], pd.Series(range(0, 16, 2)), torch.tensor([1, 4, 7])),
                                       (torch.tensor(2), torch.arange(0, 16, 2).view(2, 4), (1, np.int16(4), 7))):
        got, r = patching.patch_experts(tiny, corrupted, cc, layers=layers, experts=experts, positions=positions)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert r == report


@pytest.mark.parametrize("kw,bad", [
    ({"experts": [1.5]}, r"experts: 1\.5 is not an integer"),
    ({"experts": torch.tensor([1.0, 2.0])}, r"experts: 1\.0 \(of a Tensor of torch\.float32\) is not an integer"),
    ({"experts": [True]}, r"experts: True is not an integer"),
    ({"layers": np.array([True])}, r"layers: True \(of a ndarray of bool\) is not an integer"),
    ({"experts": "13"}, r"experts='13': expected an int or integers"),
    ({"experts": ["3"]}, r"experts: '3' is not an integer"),
    ({"positions": np.array([2.0])}, r"positions: 2\.0 \(of a ndarray of float64\) is not an integer"),
    ({"positions": 2.0}, r"positions=2\.0: expected an int or integers"),
    ({"positions": torch.tensor(2.0)}, r"positions=tensor\(2\.\): expected an int or integers"),
    ({"positions": np.array(2.0)}, r"positions=array\(2\.\): expected an int or integers"),
    ({"experts": torch.tensor(True)}, r"experts=tensor\(True\): expected an int or integers"),
    ({"positions": pd.DataFrame([[3, 4]])}, r"positions=\s*0\s+1 0\s+3\s+4: expected an int or integers"),
], ids=["float", "float tensor", "bool", "bool array", "string", "strings", "float array", "float scalar",
        "0-d float tensor", "0-d float array", "0-d bool tensor", "data frame"])
def test_ids_that_are_not_integers_are_refused_not_rounded(tiny, pair, kw, bad):
    """A float was rounded down (experts=[1.5] patched expert 1), a bool was 1, a string's characters
    were ids (experts="13": experts 1 and 3); each is now one line naming the argument. A 0-d float or
    bool tensor or array was iterated: torch's and numpy's 'iteration over a 0-d tensor'; a data frame's
    column labels (0, 1) were positions 0 and 1 (a review)."""
    clean, corrupted = pair
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    with pytest.raises(ValueError, match=r"^patch_experts: " + bad) as e:
        patching.patch_experts(tiny, corrupted, cc, **kw)
    assert "\n" not in str(e.value)


def metric(logits: torch.Tensor) -> torch.Tensor:
    """The last position's logit of token 5 less token 7's, over the batch."""
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


def by_hand_sweep(m, clean, corrupted, names, positions):
    """(name, position, metric) of each run patched from the clean one by a hook written out here."""
    _, cache = m.run_with_cache(clean, names=names)
    rows = []
    for name in [n for n in m.hook_names() if n in names]:  # in forward order, as the sweep
        for p in positions:
            def hook(t, h, name=name, p=p):
                if p is None:
                    return cache[name]
                out = t.clone()
                if ".gate." in name:  # [B*S, E]
                    out.view(2, 10, -1)[:, p] = cache[name].view(2, 10, -1)[:, p]
                else:
                    out[:, p] = cache[name][:, p]
                return out
            with torch.no_grad():
                rows.append((name, p, float(metric(m.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])))))
    return rows


def test_a_sweep_is_the_hand_loop(tiny, pair):
    clean, corrupted = pair
    names = ["layers.1.hook_resid_pre", "layers.2.hook_resid_post", "layers.1.ffn.gate.hook_scores"]
    for positions, each in ((None, [None]), ("each", range(10)), ([2, 6], [2, 6])):
        table = patching.patch_sweep(tiny, clean, corrupted, names, metric, positions=positions)
        want = by_hand_sweep(tiny, clean, corrupted, names, each)
        assert list(table.columns) == ["name", "position", "metric", "clean", "corrupted"]
        assert table["name"].tolist() == [n for n, _, _ in want]
        assert [None if p is pd.NA else p for p in table["position"].tolist()] == [p for _, p, _ in want]
        assert table["metric"].tolist() == pytest.approx([v for _, _, v in want], rel=1e-6, abs=1e-6)
    with torch.no_grad():
        assert table["clean"].unique().tolist() == pytest.approx([float(metric(tiny(clean)))])
        assert table["corrupted"].unique().tolist() == pytest.approx([float(metric(tiny(corrupted)))])


def test_a_sweep_of_a_predicate_or_glob_leaves_out_the_mtp_points_it_also_picks(tiny, pair):
    """TransformerLens's `lambda n: n.endswith("hook_resid_post")` (or "*hook_resid_post") picks
    mtp.0.block.hook_resid_post too, and the sweep was refused for it without mtp=True: the layers' are swept.
    Named by its name, it still is refused; with mtp=True it is swept too."""
    clean, corrupted = pair
    layers = [f"layers.{i}.hook_resid_post" for i in range(tiny.args.n_layers)]
    want = patching.patch_sweep(tiny, clean, corrupted, layers, metric)
    for names in (lambda n: n.endswith("hook_resid_post"), "*hook_resid_post"):
        table = patching.patch_sweep(tiny, clean, corrupted, names, metric)
        assert table["name"].tolist() == layers and table["metric"].tolist() == want["metric"].tolist()
    with pytest.raises(ValueError, match=r"1 of the points named were not reached by the clean run "
                                         r"\(e\.g\. mtp\.0\.hook_in"):
        patching.patch_sweep(tiny, clean, corrupted, ["*hook_resid_post", "mtp.0.hook_in"], metric)
    # a generator of names alike: read up when the points were picked, it then named none, and the sweep left
    # mtp.0.hook_in out without a word
    with pytest.raises(ValueError, match=r"\(e\.g\. mtp\.0\.hook_in"):
        patching.patch_sweep(tiny, clean, corrupted, iter(["*hook_resid_post", "mtp.0.hook_in"]), metric)
    both = patching.patch_sweep(tiny, clean, corrupted, "*hook_resid_post", lambda out: metric(out[0]), mtp=True)
    assert both["name"].tolist() == layers + ["mtp.0.block.hook_resid_post"]


def test_a_sweep_moves_the_metric_only_where_the_runs_differ(tiny, pair):
    """Negative control: the embedding patched at positions 0..2, where the two inputs are the same
    tokens, leaves the corrupted metric as it was; at 3..9 it moves it; the last block's output at the
    last position, the metric's, is the clean metric itself. A glob picks the points in forward order."""
    clean, corrupted = pair
    table = patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions="each")
    moved = (table["metric"] - table["corrupted"]).abs()
    assert (moved[:3] == 0).all() and (moved[3:] > 1e-6).all()
    table = patching.patch_sweep(tiny, clean, corrupted, "layers.*.hook_resid_post", metric, positions=[9])
    assert table["name"].tolist() == [f"layers.{i}.hook_resid_post" for i in range(3)]
    assert table["metric"].iloc[-1] == pytest.approx(table["clean"].iloc[-1], rel=1e-6)
    assert abs(table["clean"].iloc[0] - table["corrupted"].iloc[0]) > 1e-3


def test_bad_sweep_input_is_one_line_naming_it(tiny, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match=r"clean_tokens \[2, 10\] and corrupted_tokens \[2, 9\] differ in shape"):
        patching.patch_sweep(tiny, clean, corrupted[:, :9], "hook_embed", metric)
    # token ids that are no tensor, each named (two equal lists were told they 'differ in shape')
    with pytest.raises(ValueError, match=r"^patch_sweep: clean_tokens: expected token ids \[B, S\] \(a 2-D tensor\), "
                                         r"got list$"):
        patching.patch_sweep(tiny, clean.tolist(), clean.tolist(), "hook_embed", metric)
    with pytest.raises(ValueError, match=r"^patch_sweep: corrupted_tokens: expected .* got \(10,\)$"):
        patching.patch_sweep(tiny, clean, corrupted[0], "hook_embed", metric)
    with pytest.raises(ValueError, match=r"hook_expert_out is in top-k slot order.*model.patch_experts"):
        patching.patch_sweep(tiny, clean, corrupted, "layers.1.ffn.experts.hook_expert_out", metric)
    with pytest.raises(ValueError, match=r"not reached by the clean run \(e.g. mtp.0.hook_in"):
        patching.patch_sweep(tiny, clean, corrupted, "mtp.0.hook_in", metric)
    with pytest.raises(ValueError, match=r"metric\(logits\) returned a tensor of shape \(2, 10, 512\)"):
        patching.patch_sweep(tiny, clean, corrupted, "hook_embed", lambda logits: logits)
    with pytest.raises(ValueError, match=r"positions='all': expected None, 'each' or a list"):
        patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions="all")
    with pytest.raises(model.HookError, match=r"no hook point named 'hook_embedd'"):
        patching.patch_sweep(tiny, clean, corrupted, "hook_embedd", metric)
    with pytest.raises(ValueError, match=r"^patch_sweep: positions: 2\.5 is not an integer"):
        patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions=[2.5])


def test_sweep_positions_from_numpy_and_tensors(tiny, pair):
    """positions as a numpy array (its == "each" was an ambiguous truth value), a numpy int, an integer
    tensor: the rows the same Python ints give."""
    clean, corrupted = pair
    want = patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions=[2, 6])
    for positions in (np.array([2, 6]), torch.tensor([[2], [6]]), [np.int64(2), torch.tensor(6)]):
        got = patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions=positions)
        pd.testing.assert_frame_equal(got, want)
    one = patching.patch_sweep(tiny, clean, corrupted, "hook_embed", metric, positions=np.int64(6))
    pd.testing.assert_frame_equal(one, want.iloc[1:].reset_index(drop=True))


def test_a_sweep_of_the_mtp_router_patches_its_own_rows(tiny, pair):
    """The MTP block's router points hold B*(S-1) rows: position p is row b*(S-1) + p of each row b (rows
    b*S + p patched the next row's tokens, or fell past the end, an IndexError; a review)."""
    clean, corrupted = pair
    name = "mtp.0.block.ffn.gate.hook_scores"

    def metric_mtp(out):
        return out[1][:, :, 5].sum()

    with torch.no_grad():
        _, c = tiny.run_with_cache(clean, names=name, mtp=True)
    rows = torch.arange(2) * 9 + 4
    assert c[name].shape[0] == 18

    def by_hand(t, hook):
        t = t.clone()
        t[rows] = c[name][rows]
        return t

    with torch.no_grad():
        want = float(metric_mtp(tiny.run_with_hooks(corrupted, fwd_hooks=[(name, by_hand)], mtp=True)))
    table = patching.patch_sweep(tiny, clean, corrupted, name, metric_mtp, positions=[4], mtp=True)
    assert table["metric"].tolist() == pytest.approx([want], rel=1e-6, abs=1e-6)
    assert abs(want - table["corrupted"].iloc[0]) > 1e-6  # the control: the patch moves the metric
    with pytest.raises(ValueError, match=r"mtp.0.block.ffn.gate.hook_scores is \(18, 16\), 9 positions of each "
                                         r"of 2 rows: positions=9"):
        patching.patch_sweep(tiny, clean, corrupted, name, metric_mtp, positions=[9], mtp=True)
    with pytest.raises(ValueError, match=r"mtp.0.block.attn.hook_pattern is \(2, 4, 9, 9\), 9 queries: positions=9"):
        patching.patch_sweep(tiny, clean, corrupted, "mtp.0.block.attn.hook_pattern", metric_mtp, positions=[9],
                             mtp=True)


def test_a_sweep_of_the_mtp_modules_positions(tiny, pair):
    """The MTP module's [B, S-1, ...] points are patched at MTP position p, as its router's rows are
    (they were refused as 'not [B, S, ...]: patch it whole'; a tour); the control: another position
    gives another metric, and position S-1 is not one of them."""
    clean, corrupted = pair
    names = ["mtp.0.hook_in", "mtp.0.block.hook_resid_mid"]

    def metric_mtp(out):
        return out[1][:, -1, 5].sum()

    with torch.no_grad():
        _, c = tiny.run_with_cache(clean, names=names, mtp=True)
    want = []
    for name in names:
        for p in (4, 8):
            def by_hand(t, hook, name=name, p=p):
                t = t.clone()
                t[:, p] = c[name][:, p]
                return t
            with torch.no_grad():
                want.append(float(metric_mtp(tiny.run_with_hooks(corrupted, fwd_hooks=[(name, by_hand)], mtp=True))))
    table = patching.patch_sweep(tiny, clean, corrupted, names, metric_mtp, positions=[4, 8], mtp=True)
    assert table["position"].tolist() == [4, 8, 4, 8]
    assert table["metric"].tolist() == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert abs(want[0] - want[1]) > 1e-6 and abs(want[1] - table["corrupted"].iloc[0]) > 1e-6
    runs = []
    handles = tiny.add_hook("hook_embed", lambda t, hook: runs.append(1))
    try:
        with pytest.raises(ValueError, match=r"^patch_sweep: mtp\.0\.hook_in is \(2, 9, 64\), 9 positions: positions=9 "
                                             r"is not one of them \(the MTP module's have S-1\); ask for "
                                             r"positions=range\(9\) \(positions='each' takes all 10 of the tokens\)"):
            patching.patch_sweep(tiny, clean, corrupted, "mtp.0.hook_in", metric_mtp, positions="each", mtp=True)
    finally:
        for h in handles:
            h.remove()
    assert len(runs) == 2  # the clean and corrupted runs only: refused before the 9 patched ones
