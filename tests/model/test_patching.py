"""model.patching: patching experts by id against a hand loop over (token, slot) on the tiny model,
where the clean and corrupted runs route differently."""

from __future__ import annotations

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


def test_bad_input_is_one_line_naming_it(tiny, pair):
    clean, corrupted = pair
    _, cc = tiny.run_with_cache(clean, names=patching.EXPERT_NAMES)
    _, only_ids = tiny.run_with_cache(clean, names="layers.*.ffn.gate.hook_topk_ids")
    with pytest.raises(model.HookError, match=r"lacks layers\.1\.ffn\.experts\.hook_expert_out: make it with"):
        patching.patch_experts(tiny, corrupted, only_ids)
    with pytest.raises(ValueError, match=r"layers=0 is not an MoE layer of this model \(its MoE layers: \[1, 2\]\)"):
        patching.patch_experts(tiny, corrupted, cc, layers=[0])
    with pytest.raises(ValueError, match=r"experts=16 is outside this model's \[0, 16\)"):
        patching.patch_experts(tiny, corrupted, cc, experts=[16])
    with pytest.raises(ValueError, match=r"positions=10 is outside the tokens' \[0, 10\)"):
        patching.patch_experts(tiny, corrupted, cc, positions=[10])
    with pytest.raises(ValueError, match=r"hook_topk_ids is \(20, 4\).*the tokens patched have 18 \(B\*S\) rows"):
        patching.patch_experts(tiny, corrupted[:, :9], cc)
