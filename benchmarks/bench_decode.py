"""Decode throughput with and without MTP speculative drafts, same model and prompts, one command.

    python benchmarks/bench_decode.py                        # random weights: hidden 512, 6 layers, 32 experts top-4
    python benchmarks/bench_decode.py --batch 1 --new 128 --repeats 5 --threads 2
    python benchmarks/bench_decode.py --ckpt data/model --batch 5   # the bundled model, prompts from its corpus
    python benchmarks/bench_decode.py --ckpt DIR --prompt-file prompts.txt   # a real checkpoint (tokenizer.json)

Runs greedy decoding three ways, alternating, after a warm-up: plain (one token per forward pass),
MTP drafts (the checkpoint's MTP module drafts one token, the next pass verifies it), and oracle
drafts (the true next token as the draft: every draft accepted, the upper bound of the scheme on
this model and machine). Prints median decode tokens/s, the ratio to plain decoding, the MTP
acceptance rate and tokens per forward pass, and checks that all three produce identical tokens.
On random weights the MTP module's drafts are almost never accepted, so the MTP ratio is below 1
(the verify pass and the MTP block cost extra); with trained weights DeepSeek report 85-90%
acceptance. Times include the prefill, identical in all three.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _cli import REPO, positive_int, run

CONFIG = dict(vocab_size=8192, dim=512, inter_dim=1408, moe_inter_dim=256, n_layers=6, n_dense_layers=1,
              n_heads=8, n_routed_experts=32, n_shared_experts=1, n_activated_experts=4, n_expert_groups=4,
              n_limited_groups=2, q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32,
              v_head_dim=64, max_seq_len=4096, original_seq_len=1024, rope_factor=4.0, dtype="float32",
              n_mtp_layers=1)


def corpus_prompts(codec, n: int, chars: int = 120) -> list[list[int]]:
    """The first `chars` characters of `n` documents of data/corpus/val.jsonl: each domain's first,
    then each domain's second, and so on, a domain that has run out of documents left out (an
    IndexError before; a review). More than the file holds is refused, naming --batch."""
    import json

    val = REPO / "data" / "corpus" / "val.jsonl"
    by_domain: dict[str, list[str]] = {}
    for line in val.read_text().splitlines():
        d = json.loads(line)
        by_domain.setdefault(d["domain"], []).append(d["text"][:chars])
    docs = [by_domain[dom] for dom in sorted(by_domain)]
    order = [texts[i] for i in range(max(map(len, docs), default=0)) for texts in docs if i < len(texts)]
    if n > len(order):
        raise ValueError(f"--batch {n}: the bundled corpus ({val}) has {len(order)} validation documents, "
                         f"so --batch can be at most {len(order)} without --prompt-file")
    return [codec.encode(t) for t in order[:n]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="Hugging Face checkpoint directory (default: random weights, CONFIG above)")
    p.add_argument("--prompt-file", help="with --ckpt: prompts (one per line or JSONL); default random ids")
    p.add_argument("--batch", type=positive_int, default=4,
                   help="prompts: random (lengths 16, 40, 64, ...), or with --ckpt and no --prompt-file the bundled "
                        "corpus' openings")
    p.add_argument("--new", type=positive_int, default=64, help="new tokens per prompt")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--gemm", choices=["bf16", "fp8"], default="bf16", help="with --ckpt: its GEMM implementation")
    ns = p.parse_args()
    if not ns.ckpt and (ns.prompt_file or ns.gemm != "bf16"):  # random weights: float32, random prompts
        raise ValueError("--prompt-file and --gemm apply to a checkpoint: pass --ckpt with them")
    torch.set_num_threads(ns.threads)
    from generate import generate

    m, prompts, stop, what = model_and_prompts(ns)
    ref = generate(m, prompts, max_new_tokens=ns.new, stop_ids=stop)
    seqs = [p + t for p, t in zip(prompts, ref.tokens)]

    def oracle(_logits, seq_index):
        return torch.tensor([s[j] if j < len(s) else 0 for s, j in zip(seqs, seq_index.tolist())])

    cases = {"plain greedy": dict(), "MTP drafts": dict(mtp=True), "oracle drafts (100% accepted)": dict(
        mtp=True, draft_fn=oracle)}
    results = {name: [] for name in cases}
    outputs = {}
    for name, kw in cases.items():  # warm-up
        outputs[name] = generate(m, prompts, max_new_tokens=ns.new, stop_ids=stop, **kw)
    for _ in range(ns.repeats):  # interleaved so drift hits all alike
        for name, kw in cases.items():
            t0 = time.perf_counter()
            generate(m, prompts, max_new_tokens=ns.new, stop_ids=stop, **kw)
            results[name].append(time.perf_counter() - t0)
    print(f"decode: {what}; {len(prompts)} prompts (lengths {[len(p) for p in prompts]}), {ns.new} new tokens "
          f"each, greedy, {ns.threads} thread(s), {ns.repeats} repeats, {next(m.parameters()).dtype}")
    report(results, outputs, ref)


def model_and_prompts(ns: argparse.Namespace) -> tuple:
    """(model, prompts as token ids, stop ids, a description of the weights) for the command line `ns`."""
    import model
    from model import ModelArgs, Transformer
    from generate import load_codec, read_prompts

    if not ns.ckpt:
        torch.manual_seed(0)
        m = Transformer(ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | CONFIG)).eval()
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(2, m.args.vocab_size, (16 + 24 * i,), generator=g).tolist() for i in range(ns.batch)]
        return m, prompts, [], (f"random weights (hidden {CONFIG['dim']}, {CONFIG['n_layers']} layers, "
                                f"{CONFIG['n_routed_experts']} experts top-{CONFIG['n_activated_experts']}, "
                                "MTP depth 1)")
    m = model.load(ns.ckpt, gemm_impl=ns.gemm)
    if not len(m.mtp):
        raise ValueError(f"--ckpt {ns.ckpt}: has no MTP weights (the bench decodes with MTP drafts)")
    codec = load_codec(ns.ckpt, m.args)
    if ns.prompt_file:
        prompts = [codec.encode(t) for t in read_prompts(ns.prompt_file)]
    else:  # openings of the bundled corpus' validation documents, the domains in turn
        prompts = corpus_prompts(codec, ns.batch)
    return m, prompts, codec.stop_ids, f"checkpoint {ns.ckpt}"


def report(results: dict[str, list[float]], outputs: dict, ref) -> None:
    """The table of times, speeds against plain decoding and acceptance, and the MTP summary line."""
    n_tok = sum(map(len, ref.tokens))
    base = statistics.median(results["plain greedy"])
    print(f"{'':32} {'median s':>9} {'tokens/s':>9} {'vs plain':>9} {'best vs best':>13} "
          f"{'accepted':>9} {'tokens/fwd':>10} {'identical':>9}")
    best = min(results["plain greedy"])
    for name, ts in results.items():
        o = outputs[name]
        acc = "-" if o.acceptance_rate is None else f"{o.acceptance_rate:.1%}"
        t = statistics.median(ts)
        print(f"{name:32} {t:9.3f} {n_tok / t:9.1f} {base / t:8.2f}x {best / min(ts):12.2f}x "
              f"{acc:>9} {o.mean_tokens_per_forward:10.2f} {str(o.tokens == ref.tokens):>9}")
    mtp = outputs["MTP drafts"]
    if mtp.acceptance_rate is None:  # --new 1: the one new token comes from the prefill (a crash before; a review)
        acceptance = "no drafts were proposed (a draft needs a second new token: --new 2 or more)"
    else:
        acceptance = (f"acceptance {mtp.acceptance_rate:.1%} ({sum(map(sum, mtp.drafts_accepted))}/"
                      f"{sum(map(sum, mtp.drafts_proposed))} drafts; per prompt "
                      f"{[f'{a[0]}/{p[0]}' for a, p in zip(mtp.drafts_accepted, mtp.drafts_proposed)]})")
    print(f"MTP decode speed ratio (MTP drafts / plain): {base / statistics.median(results['MTP drafts']):.2f}x; "
          + acceptance)


if __name__ == "__main__":
    run(main)
