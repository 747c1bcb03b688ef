"""What `python -m model`'s subcommands do (model/__main__.py parses their flags first, without torch,
so that `--help` and a mistyped flag answer at once)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from probe.job import tokenizer_fits

from .args import ModelArgs, shipped_configs
from .checkpoint import load, not_a_directory
from .memory import available_memory
from .transformer import Transformer


def _build(ns) -> Transformer:
    if ns.ckpt:
        return load(ns.ckpt, dtype=torch.float32)
    args = _shipped(ns.config)
    with torch.device("meta"):
        need = sum(p.numel() for p in Transformer(args).parameters()) * 4
    have = available_memory()
    if have is not None and need > have / 2:
        raise ValueError(f"--config {ns.config}: random float32 weights would take {need / 2**30:,.1f} GiB, more than "
                         f"half of the {have / 2**30:,.1f} GiB available here; `python -m model params --config "
                         f"{ns.config}` counts its parameters without memory")
    torch.manual_seed(ns.seed)
    return Transformer(args, dtype=torch.float32).eval()


def _shipped(name: str) -> ModelArgs:
    """The shipped config `--config` names; any other name is refused, naming the flag."""
    if name not in shipped_configs():  # ModelArgs.from_name's own message named no flag
        raise ValueError(f"--config {name}: not a shipped config; available: {', '.join(shipped_configs())}")
    return ModelArgs.from_name(name)


def _tokens(ns, m: Transformer) -> torch.Tensor:
    if ns.text is not None:
        from generate.text import load_codec

        if not ns.ckpt or not (Path(ns.ckpt) / "tokenizer.json").exists():
            raise ValueError("--text needs --ckpt DIR with a tokenizer.json")
        # as record and generate feed text: BOS first, and bytes that are not UTF-8 (a lone surrogate
        # in argv) as U+FFFD; the raw tokenizer left BOS out (another loss than a run's) and raised
        # a TypeError traceback on such bytes
        codec = load_codec(ns.ckpt, m.args)
        # another model's tokenizer: an id past the vocabulary was the forward's error, naming no file,
        # and a text whose ids all fell within it ran on the wrong tokens (a checkpoint tour)
        tokenizer_fits(codec.tokenizer, Path(ns.ckpt) / "tokenizer.json", m.args.vocab_size, ValueError)
        ids = codec.encode(ns.text, chat=False)
        if len(ids) == (codec.bos_id is not None):
            raise ValueError(f"--text {ns.text!r}: no tokens to run")
        if len(ids) > m.args.max_seq_len:  # the forward's own error named no flag
            raise ValueError(f"--text: {len(ids):,} tokens, longer than the model's max_seq_len {m.args.max_seq_len}")
        return torch.tensor([ids])
    g = torch.Generator().manual_seed(ns.seed)
    return torch.randint(0, m.args.vocab_size, (ns.batch, ns.seq_len), generator=g)


def summary(ns) -> None:
    if ns.config is not None and not ns.config.strip():  # read as "not given": random weights of tiny (a tour)
        raise ValueError(f"--config {ns.config!r}: an empty name")  # (an empty --ckpt: path_text, its type)
    for flag, value in (("--batch", ns.batch), ("--seq-len", ns.seq_len)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if not -2**63 <= ns.seed < 2**64:  # torch's own error named no flag: "Overflow when unpacking long long"
        raise ValueError(f"--seed {ns.seed}: out of range: use an integer in [-2^63, 2^64)")
    if ns.text is not None and not ns.ckpt:  # before the model is built (it was after, with exit status 1)
        raise ValueError("--text needs --ckpt DIR with a tokenizer.json")
    # flags the run would not use: they were dropped silently (a summary of the checkpoint, not of
    # --config 16B; of the text's own tokens, not of a --batch x --seq-len shape)
    if ns.ckpt and ns.config is not None:
        raise ValueError(f"--config {ns.config}: random weights of a shipped config, not with --ckpt (the "
                         "checkpoint's config.json sets the model)")
    for flag, value in (("--batch", ns.batch), ("--seq-len", ns.seq_len)):
        if ns.text is not None and value is not None:
            raise ValueError(f"{flag} {value}: sizes the random tokens, not with --text (the text's tokens are run)")
    if ns.ckpt and (why := not_a_directory(ns.ckpt)):  # the flag named, as generate and record name it
        raise ValueError(f"--ckpt {ns.ckpt}: {why}")
    ns.config, ns.batch, ns.seq_len = ns.config or "tiny", ns.batch or 4, ns.seq_len or 128
    m = _build(ns)
    a = m.args
    if ns.text is None and ns.seq_len > a.max_seq_len:  # the forward's own error named no flag, after the header
        raise ValueError(f"--seq-len {ns.seq_len}: longer than the model's max_seq_len {a.max_seq_len}")
    have = available_memory()
    if ns.text is None and have is not None and ns.batch * ns.seq_len * a.vocab_size * 4 > have / 2:
        # the float32 logits alone; --batch 1000000000000 was the allocator's traceback
        raise ValueError(f"--batch {ns.batch} x --seq-len {ns.seq_len}: the logits alone would take "
                         f"{ns.batch * ns.seq_len * a.vocab_size * 4 / 2**30:,.1f} GiB, more than half of the "
                         f"{have / 2**30:,.1f} GiB available here")
    tokens = _tokens(ns, m)  # before the header: a --text refused is the one line printed
    counts = m.param_counts()
    print(f"model: {a.model_type}  dim={a.dim} layers={a.n_layers} (dense {a.n_dense_layers}) "
          f"experts={a.n_routed_experts} top-{a.n_activated_experts} groups={a.n_expert_groups}/"
          f"{a.n_limited_groups} score={a.score_func} mtp={len(m.mtp)}")
    print(f"parameters: main {counts['main']:,}  activated/token {counts['activated']:,}  mtp {counts['mtp']:,}")
    t0 = time.perf_counter()
    with torch.no_grad():
        out, cache = m.run_with_cache(tokens, names=lambda n: n.startswith("layers.") and n.endswith(
            (".ffn.gate.hook_topk_ids", ".attn.hook_c_kv")), mtp=len(m.mtp) > 0)  # any layers: dense ones too
    dt = time.perf_counter() - t0
    logits = out[0] if isinstance(out, tuple) else out
    n = tokens.numel()
    print(f"forward: {tuple(tokens.shape)} tokens -> logits {tuple(logits.shape)} in {dt * 1e3:.1f} ms "
          f"({n / dt:,.0f} tokens/s)")
    if tokens.shape[1] > 1:
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        print(f"next-token loss on these tokens: {nll.item():.3f} (uniform would be {torch.log(torch.tensor(float(a.vocab_size))).item():.3f})")
    print(f"{'layer':>5} {'max/mean load':>14} {'experts used':>13} {'latent |c_kv| mean':>19}")
    for i in range(a.n_layers):
        ids = cache.get(f"layers.{i}.ffn.gate.hook_topk_ids")
        ckv = cache[f"layers.{i}.attn.hook_c_kv"]
        if ids is None:
            load_s, used = "dense", "-"
        else:
            load = torch.bincount(ids.flatten(), minlength=a.n_routed_experts).float()
            load_s, used = f"{(load.max() / load.mean()).item():.2f}", f"{int((load > 0).sum())}/{a.n_routed_experts}"
        print(f"{i:>5} {load_s:>14} {used:>13} {ckv.norm(dim=-1).mean().item():>19.3f}")


def _count(n: int) -> str:
    """A parameter count in billions, millions, or whole (the tiny config printed 0.00B)."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def params(ns) -> int:
    for flag, value in (("--world-size", ns.world_size), ("--batch-size", ns.batch_size), ("--seq-len", ns.seq_len),
                        ("--device-memory", ns.device_memory)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} {value:g}: must be > 0")
    if ns.device_memory == float("inf"):  # it printed "fits inf GB per rank with inf GB to spare"
        raise ValueError(f"--device-memory {ns.device_memory:g}: must be a finite number of GB per rank")
    args = _shipped(ns.config)
    for flag, given in (("--dense", ns.dense), ("--device-memory", ns.device_memory),
                        ("--batch-size", ns.batch_size is not None), ("--seq-len", ns.seq_len is not None)):
        if given and not ns.world_size:  # per rank: without --world-size they were dropped silently
            raise ValueError(f"{flag} sizes the model per rank: use it with --world-size")
    batch, seq_len = ns.batch_size or 8, ns.seq_len or min(512, args.max_seq_len)
    if seq_len > args.max_seq_len:
        raise ValueError(f"--seq-len {seq_len}: longer than the config's max_seq_len {args.max_seq_len}")
    with torch.device("meta"):
        m = Transformer(args)
    c = m.param_counts()
    line = f"{ns.config}: main {_count(c['main'])}, activated per token {_count(c['activated'])}"
    if args.n_mtp_layers:
        line += (f", MTP module {_count(c['mtp'])} (+{_count(2 * args.vocab_size * args.dim)} for the "
                 "embedding/head copies its checkpoint layer stores)")
    print(line)
    if ns.world_size:
        from .memory import forward_plan, format_plan, kv_cache_bytes, shard_plan, size
        from .parallel import BlockAlignError, ParallelError

        dtype = torch.bfloat16
        fp8 = not ns.dense and args.quant_block is not None  # V2 and V2-Lite are published in BF16 (a review)
        try:
            w = shard_plan(args, ns.world_size, fp8=fp8, dtype=dtype, what="--world-size")
        except BlockAlignError as e:  # its advice names the loader's argument; this command's switch is --dense
            raise ParallelError(e.advise("pass --dense (bf16 weights, as gemm_impl='bf16' loads them)")) from None
        print(format_plan(w, ns.config))
        act = forward_plan(args, model_parallel=ns.world_size, batch=batch, seq_len=seq_len, dtype=dtype)
        total = w["per_rank_bytes"] + w["absorb_dense_bytes"] + act["peak"]
        print(f"  + {size(w['absorb_dense_bytes'])} dequantised wkv_b (absorbed attention) + {size(act['peak'])} for a "
              f"bf16 forward of {batch} x {seq_len} tokens (estimated: logits {size(act['logits'])}, "
              f"largest layer {size(act['largest_layer'])}) = {size(total)} per rank; latent KV cache for those "
              f"positions {size(kv_cache_bytes(args, batch, seq_len, dtype))}")
        if ns.device_memory:
            left = ns.device_memory * 1e9 - total
            print(f"  fits {ns.device_memory:g} GB per rank with {size(left)} to spare" if left >= 0 else
                  f"  does NOT fit {ns.device_memory:g} GB per rank: {size(-left)} short")
            return 0 if left >= 0 else 1  # as `dsv3-probe record --dry-run`: a script can tell
    return 0
