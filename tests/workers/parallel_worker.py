"""torchrun worker for tests/model/test_parallel.py: each rank loads a checkpoint twice in one process,
whole (parallel=False) and sharded (parallel=True), and compares them. Not a test module.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/workers/parallel_worker.py CASES.json

CASES.json is a list of {"name", "ckpt", "gemm_impl"?, "grads"?, "vs_dequant"?, "lean"?, ...}. Each rank writes one JSON line per
case to results.rank<R>.jsonl next to CASES.json (errors as {"error": type, "message": ...}).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import model  # noqa: E402
from model import layers, memory, parallel  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def tokens_for(m, seed: int = 0, shape=(2, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, m.args.vocab_size, shape, generator=g)


def forward_checks(full, sh, out: dict, lean: bool = False) -> None:
    """Logits and MTP logits (both attention paths), decode, hooks and hidden states of the shards against
    the whole model. `lean`: the absorb logits, the router's choices and the hidden states alone (the
    cases whose tests read no more)."""
    tok = tokens_for(full)
    has_mtp = len(full.mtp) > 0
    with torch.no_grad():
        for impl in ("absorb",) if lean else ("absorb", "naive"):
            full.attn_impl = sh.attn_impl = impl
            ref = full(tok, mtp=has_mtp)
            got = sh(tok, mtp=has_mtp)
            ref, got = (ref, got) if has_mtp else ((ref,), (got,))
            out[f"logits_rel_{impl}"] = rel(got[0], ref[0])
            out[f"logits_mean_rel_{impl}"] = float((got[0] - ref[0]).abs().mean() / ref[0].abs().mean())
            out["logits_shape"] = list(got[0].shape)
            if has_mtp:
                out[f"mtp_rel_{impl}"] = rel(got[1], ref[1])
                out[f"mtp_mean_rel_{impl}"] = float((got[1] - ref[1]).abs().mean() / ref[1].abs().mean())
        full.attn_impl = sh.attn_impl = "absorb"
        if not lean:
            hook_checks(full, sh, tok, out)
        # every hidden state (layers, final norm, the MTP block) before the vocab-split head; lean, the
        # router's choices in the same passes
        topk = "layers.1.ffn.gate.hook_topk_ids"
        hidden = lambda n: n.endswith(("hook_resid_post", "hook_final", "mtp.0.hook_hidden")) or (  # noqa: E731
            lean and n == topk)
        _, c_ref = full.run_with_cache(tok, names=hidden, mtp=has_mtp)
        _, c_sh = sh.run_with_cache(tok, names=hidden, mtp=has_mtp)
        if lean:
            out["hook_topk_equal"] = bool(torch.equal(c_sh.pop(topk), c_ref.pop(topk)))
        out["hidden_rel"] = max(rel(c_sh[n], c_ref[n]) for n in c_ref)
        out["hidden_hooks"] = len(c_ref)


def hook_checks(full, sh, tok, out: dict) -> None:
    """Decode through the KV cache, the router's, attention's and the experts' hooks."""
    with torch.no_grad():
        # prefill then decode through the (per-rank) KV cache
        ref = full(tok)
        sh(tok[:, :8], use_cache=True)
        step = sh(tok[:, 8:], start_pos=8)
        out["decode_rel"] = rel(step, ref[:, 8:])
        # hooks: router outputs are full on every rank; attention heads are this rank's
        names = ["layers.1.ffn.gate.hook_scores", "layers.1.ffn.gate.hook_topk_ids", "layers.0.attn.hook_z",
                 "layers.0.attn.hook_c_kv", "layers.1.ffn.hook_routed_out"]
        _, c_ref = full.run_with_cache(tok, names=names)
        _, c_sh = sh.run_with_cache(tok, names=names)
        first, end = sh.layers[0].attn.head_range
        out["hook_scores_rel"] = rel(c_sh[names[0]], c_ref[names[0]])
        out["hook_topk_equal"] = bool(torch.equal(c_sh[names[1]], c_ref[names[1]]))
        out["hook_z_shape"] = list(c_sh[names[2]].shape)
        out["hook_z_rel"] = rel(c_sh[names[2]], c_ref[names[2]][:, :, first:end])
        out["hook_c_kv_rel"] = rel(c_sh[names[3]], c_ref[names[3]])
        out["hook_routed_out_rel"] = rel(c_sh[names[4]], c_ref[names[4]])
        # each chosen expert's output: this rank's experts' rows as one process computes them, the others zero;
        # their weighted sums, all-reduced, the routed output
        ex = "layers.1.ffn.experts.hook_expert_out"
        _, e_ref = full.run_with_cache(tok, names=[ex, names[1]])
        _, e_sh = sh.run_with_cache(tok, names=[ex, names[4]])
        first_e, end_e = sh.layers[1].ffn.experts.expert_range
        local = (e_ref[names[1]] >= first_e) & (e_ref[names[1]] < end_e)
        out["expert_out_local_rel"] = rel(e_sh[ex][local], e_ref[ex][local])
        out["expert_out_others_zero"] = bool((e_sh[ex][~local] == 0).all()) and bool((~local).any())
        out["expert_out_routed_rel"] = rel(e_sh[names[4]], c_ref[names[4]])
        result_checks(full, sh, tok, out)


def result_checks(full, sh, tok, out: dict) -> None:
    """attn.hook_result: this rank's heads, as one process computes them; a replacement on every rank
    (each keeps its first head) gives the attention output of those heads, the sum of one process's
    results over them."""
    rn, ao = "layers.0.attn.hook_result", "layers.0.hook_attn_out"
    first, end = sh.layers[0].attn.head_range
    _, r_ref = full.run_with_cache(tok, names=[rn, ao])
    _, r_sh = sh.run_with_cache(tok, names=[rn, ao])
    out["hook_result_shape"] = list(r_sh[rn].shape)
    out["hook_result_rel"] = rel(r_sh[rn], r_ref[rn][:, :, first:end])
    out["hook_result_attn_out_rel"] = rel(r_sh[ao], r_ref[ao])
    kept = (torch.arange(full.args.n_heads) % (end - first) == 0)[:, None]  # every rank's first head
    with sh.hooks([(rn, lambda r, hook: r * (torch.arange(end - first) == 0)[:, None])]):
        _, k_sh = sh.run_with_cache(tok, names=ao)
    out["hook_result_replaced_rel"] = rel(k_sh[ao], (r_ref[rn] * kept).sum(2))


def mean_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean() / b.double().abs().mean())


def dequant_checks(full, sh, deq, out: dict) -> None:
    """FP8 resident, whole and sharded, against the dequantised checkpoint (no activation
    quantisation): how far FP8 activations take each from the same weights in float."""
    tok = tokens_for(full)
    with torch.no_grad():
        ref = deq(tok)
        out["whole_vs_dequant_mean_rel"] = mean_rel(full(tok), ref)
        out["shard_vs_dequant_mean_rel"] = mean_rel(sh(tok), ref)


def grad_checks(full, sh, out: dict) -> None:
    """d(loss)/d(weights) of a replicated loss: replicated params equal, sharded ones equal the slice."""
    tok = tokens_for(full, seed=1)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(*tok.shape, full.args.vocab_size, generator=g)
    for m in (full, sh):
        m.zero_grad(set_to_none=True)
        logits, mtp_logits = m(tok, mtp=True)
        ((logits * w).sum() + (mtp_logits * w[:, 1:]).sum()).backward()
    spec = parallel.shard_spec(full, sh.shards)
    fp, sp = dict(full.named_parameters()), dict(sh.named_parameters())
    worst = {"replicated": 0.0, "sharded": 0.0}
    for name, p in sp.items():
        ref = fp[name].grad
        if name in spec:
            ref = spec[name].slice(ref)
        kind = "sharded" if name in spec else "replicated"
        worst[kind] = max(worst[kind], rel(p.grad, ref))
    out["grad_rel_replicated"], out["grad_rel_sharded"] = worst["replicated"], worst["sharded"]


def bytes_checks(full, sh, out: dict) -> None:
    spec = parallel.shard_spec(full, sh.shards)
    out["bytes_full"] = memory.tensor_bytes(full)
    out["bytes_rank"] = memory.tensor_bytes(sh)
    out["bytes_sharded_full"] = memory.tensor_bytes(full, set(spec))
    out["bytes_sharded_rank"] = memory.tensor_bytes(sh, set(spec))
    out["sharded_ratio"] = out["bytes_sharded_rank"] / out["bytes_sharded_full"]
    out["total_ratio"] = out["bytes_rank"] / out["bytes_full"]


def run_case(case: dict, keep: list) -> dict:
    from model import gemm

    c = gemm.choice()  # init_distributed made every rank take rank 0's float32 GEMM path
    out = {"name": case["name"], "rank": torch.distributed.get_rank(), "gemm": [c.path, c.source]}
    kw = dict(dtype=getattr(torch, case.get("dtype", "float32")), gemm_impl=case.get("gemm_impl", "bf16"))
    parallel.WIDE_PARTIALS = case.get("wide_partials", True)
    try:
        sh = model.load(case["ckpt"], parallel=True, **kw)
    except (ValueError, model.CheckpointError) as e:
        out.update(error=type(e).__name__, message=str(e))
        return out
    finally:
        parallel.WIDE_PARTIALS = True
    full = model.load(case["ckpt"], parallel=False, **kw)
    out["world"] = sh.shards.world
    layers.LAYOUT_FREE_SUMS = case.get("layout_free_sums", True)  # read at forward time
    try:
        forward_checks(full, sh, out, lean=case.get("lean", False))
    finally:
        layers.LAYOUT_FREE_SUMS = True
    bytes_checks(full, sh, out)
    if case.get("vs_dequant"):
        dequant_checks(full, sh, model.load(case["ckpt"], parallel=False, dtype=kw["dtype"]), out)
    print(f"{case['name']} rank {out['rank']}: resident parameter bytes {out['bytes_rank']:,} of "
          f"{out['bytes_full']:,} single-process ({out['total_ratio']:.3f}); sharded parts "
          f"{out['sharded_ratio']:.4f}", flush=True)
    if case.get("grads"):
        grad_checks(full, sh, out)
    keep.append((sh, tokens_for(full)))
    return out


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    shards = parallel.init_distributed()
    assert shards is not None and shards.world > 1, "run under torchrun with 2+ processes"
    torch.manual_seed(0)
    keep: list = []
    first_logits = None
    sink = open(Path(sys.argv[1]).with_name(f"results.rank{shards.rank}.jsonl"), "w")

    def report(res: dict) -> None:
        sink.write(json.dumps(res) + "\n")
        sink.flush()

    for case in cases:
        try:
            res = run_case(case, keep)
        except Exception as e:  # report, keep the ranks in step
            res = {"name": case["name"], "rank": shards.rank, "crash": f"{type(e).__name__}: {e}",
                   "trace": traceback.format_exc()[-2000:]}
        if first_logits is None and keep:
            with torch.no_grad():
                first_logits = keep[0][0](keep[0][1])
        report(res)
    # two sharded models in one process: the first still gives the same logits after the others ran
    if keep:
        with torch.no_grad():
            again = keep[0][0](keep[0][1])
        report({"name": "two_models", "rank": shards.rank, "rel": rel(again, first_logits), "models": len(keep)})
    sink.close()
    torch.distributed.destroy_process_group()
    # NOTE: exit without interpreter teardown: with torch 2.13 + gloo a process that ran a model
    # forward sometimes aborts at exit ("terminate called without an active exception"), after
    # all its work is done; that would fail the launch for nothing this test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
