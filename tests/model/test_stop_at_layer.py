"""`forward(..., stop_at_layer=L)`, TransformerLens's: the residual stream into block L, the counterpart of
`start_at_layer` (without it, a residual stream at a block was a cache of a whole forward, or a hook that
raised to end one)."""

from __future__ import annotations

import pytest
import torch

import model
from helpers import random_model


@pytest.fixture(scope="module")
def m():
    return random_model("tiny", seed=3).double()


def test_the_residual_stream_into_each_block_and_back(m):
    x = torch.randint(0, m.args.vocab_size, (2, 6))
    n = m.args.n_layers
    with torch.no_grad():
        last = f"layers.{n - 1}.hook_resid_post"
        full, cache = m.run_with_cache(x, names=["hook_embed", "layers.*.hook_resid_pre", last])
        assert torch.equal(m(x, stop_at_layer=0), cache["hook_embed"])
        for L in range(1, n):
            resid = m(x, stop_at_layer=L)
            assert torch.equal(resid, cache[f"layers.{L}.hook_resid_pre"])
            assert torch.equal(m(x, start_at_layer=L, resid=resid), full)  # the two halves make the whole pass
            assert torch.equal(m(x, stop_at_layer=L - n), resid)  # from the end, as TransformerLens counts
        assert torch.equal(m(x, stop_at_layer=n), cache[last])  # before the final norm
        mid = m(x, stop_at_layer=1)
        between = m(x, start_at_layer=1, resid=mid, stop_at_layer=n - 1)
        assert torch.equal(between, cache[f"layers.{n - 1}.hook_resid_pre"])
        # the blocks after it do not run: their hooks are not called
        ran = []
        with pytest.warns(UserWarning, match=r"2 of the 3 hook points named were not reached by this forward \(e\.g\. "
                                             r"layers\.1\.hook_resid_pre\).* \(stop_at_layer those from it on\)"):
            m.run_with_hooks(x, stop_at_layer=1, fwd_hooks=[("layers.*.hook_resid_pre",
                                                             lambda t, hook: ran.append(hook.layer()))])
        assert ran == [0]


@pytest.mark.parametrize("kwargs, says", [
    (dict(stop_at_layer=9), r"^stop_at_layer=9: must be an integer between 0 and 3 \(the residual stream into that "
                            r"block; 3: out of the last\) or -3 to -1 from the end$"),
    (dict(stop_at_layer=-4), r"^stop_at_layer=-4: must be an integer"),
    (dict(stop_at_layer=1.0), r"^stop_at_layer=1\.0: must be an integer"),
    (dict(stop_at_layer=True), r"^stop_at_layer=True: must be an integer"),
    (dict(stop_at_layer=1, mtp=True), r"^stop_at_layer with mtp: a forward that stops at a block returns the residual"),
    (dict(stop_at_layer=1, return_hidden=True), r"^stop_at_layer with return_hidden: "),
    (dict(stop_at_layer=1, use_cache=True), r"^stop_at_layer needs use_cache=False and start_pos=0"),
])
def test_what_a_stopped_forward_cannot_do_is_one_line(m, kwargs, says):
    x = torch.randint(0, m.args.vocab_size, (1, 4))
    with pytest.raises(model.InputError, match=says):
        m(x, **kwargs)
    with pytest.raises(model.InputError, match=r"^stop_at_layer with targets: "):
        m(x, stop_at_layer=1, targets=x)
    with pytest.raises(model.InputError, match=r"^stop_at_layer=1 is before start_at_layer=2: no block would run$"):
        m(x, stop_at_layer=1, start_at_layer=2, resid=torch.zeros(1, 4, m.args.dim, dtype=torch.float64))
