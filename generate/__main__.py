"""`python -m generate`: the command line (usage: the package docstring, generate/__init__.py)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from probe.job_signals import quiet_start

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import generate as package
    from generate.errors import GenerateError
    from probe.job import check_out_parent, os_refusal, path_text, tokenizer_fits
    from probe.job_exit import exit_ranks, whole_lines_on_stderr

if TYPE_CHECKING:
    from generate import GenerationOutput, SamplingParams, TextCodec

# NOTE: torch and the model are imported once the flags parse (main(), and each step where it runs), so that
# `--help` and a mistyped flag answer at once (they took about 2 s, nearly all of it importing torch).


class Streamer:
    """Decodes each row's tokens incrementally; holds back an incomplete UTF-8 tail."""

    def __init__(self, codec: TextCodec, n: int) -> None:
        self.codec, self.ids, self.shown = codec, [[] for _ in range(n)], [""] * n

    def push(self, i: int, tok: int, final: bool = False) -> str:
        self.ids[i].append(tok)
        text = self._decode(i)
        if text.endswith("\ufffd") and not final:
            return ""
        new, self.shown[i] = text[len(self.shown[i]):], text
        return new

    def text(self, i: int) -> str:
        return self._decode(i)

    def _decode(self, i: int) -> str:
        # the tokenizer's own decode, not codec.decode, which refuses an id past the tokenizer's vocabulary: a
        # model's vocabulary may be wider (DeepSeek-V3's 129,280 rows for 128,815 tokens), and such an id, which
        # has no text, is left out of the stream rather than end it
        return self.codec.tokenizer.decode(self.ids[i], skip_special_tokens=True)


def _prompts_from_rank0(ns, world) -> list[str]:
    """The --prompt / --prompt-file texts, read by rank 0 alone and broadcast (errors too)."""
    from generate.text import read_prompts

    box: list = [None, None]
    if world.rank == 0:
        try:
            box = [list(ns.prompt) + (read_prompts(ns.prompt_file) if ns.prompt_file else []), None]
        except GenerateError as e:  # the flag first, as the other flags' errors ("--ckpt DIR: ...")
            box = [None, f"--prompt-file {e}"]
    box = world.broadcast(box)
    if box[1] is not None:
        raise GenerateError(box[1])
    return box[0]


def _run_batch(m, codec: TextCodec, texts: list[str], ns, rank: int, sampling: SamplingParams,
               sources: list[str]) -> GenerationOutput:
    """Generate for `texts` and print (and append to --output) the results; a text the model cannot take
    is refused by generate()'s own check, named as `sources` names it (its flag and place)."""
    from generate.decode import PromptError, generate

    prompts = [codec.encode(t, chat=not ns.no_chat_template and codec.chat, system=ns.system) for t in texts]
    streamer = Streamer(codec, len(prompts))
    single = len(prompts) == 1
    if rank == 0:
        _cut_budget_note(prompts, m.args.max_seq_len, ns.max_new_tokens, sources)

    printed: set[int] = set()

    def show(i: int) -> None:
        printed.add(i)
        if rank == 0:
            print(f"[{i}] {texts[i]}\n{streamer.text(i)}\n", flush=True)

    def on_token(i: int, tok: int, finished: bool) -> None:
        piece = streamer.push(i, tok, final=finished)
        if single:
            if rank == 0:
                print(piece, end="\n" if finished else "", flush=True)
            printed.update([i] if finished else [])
        elif finished:
            show(i)

    t0 = time.perf_counter()
    try:
        res = generate(m, prompts, max_new_tokens=ns.max_new_tokens, sampling=sampling, stop_ids=codec.stop_ids,
                       mtp=ns.mtp, on_token=on_token)
    except PromptError as e:  # named as it was given: generate()'s 'prompt 3' counts from 0 over --prompt and the
        # file's non-blank lines together, and says 'prompt 0' of a typed line
        raise GenerateError(f"{sources[e.index]}: {e.why}") from None
    dt = time.perf_counter() - t0
    for i in range(len(prompts)):  # rows that had no room to generate anything
        if i not in printed:
            show(i)
    if rank == 0:
        s = res.summary()
        line = (f"[{s['generated_tokens']} tokens in {dt:.2f} s = {s['generated_tokens'] / dt:.1f} tokens/s; "
                f"{s['tokens_per_forward']:.2f} tokens per forward pass")
        if ns.mtp:
            rate = res.acceptance_rate
            line += f"; MTP drafts accepted {s['drafts_accepted']}/{s['drafts_proposed']}"
            line += f" ({rate:.1%})" if rate is not None else ""
        print(line + "]", file=sys.stderr, flush=True)
        if ns.output:
            _append_output(ns, texts, streamer, res)
    return res


def _cut_budget_note(prompts: list[list[int]], limit: int, max_new: int, sources: list[str]) -> None:
    """Say which prompts max_seq_len leaves less room than --max-new-tokens asked for: a prompt that
    filled the window got 0 or 1 tokens with only finish_reason 'length' to tell (a tour)."""
    for i, p in enumerate(prompts):
        room = limit - len(p)
        if 0 <= room < max_new:  # longer prompts are refused by generate() itself
            print(f"note: {sources[i]}: {len(p):,} tokens leave room for {room} of --max-new-tokens {max_new} "
                  f"(max_seq_len={limit})", file=sys.stderr, flush=True)


def _append_output(ns, texts: list[str], streamer: Streamer, res: GenerationOutput) -> None:
    """One JSON line per prompt appended to --output."""
    with os_refusal(f"--output {ns.output}: cannot write it", GenerateError):  # main checked the path
        Path(ns.output).parent.mkdir(parents=True, exist_ok=True)  # as the other commands' outputs
    lines = "".join(json.dumps({
        "prompt": text, "completion": streamer.text(i), "tokens": res.tokens[i],
        "finish_reason": res.finish_reasons[i], "forward_passes": res.forward_passes[i],
        "drafts_proposed": res.drafts_proposed[i] if ns.mtp else None,
        "drafts_accepted": res.drafts_accepted[i] if ns.mtp else None}, ensure_ascii=False) + "\n"
        for i, text in enumerate(texts))
    with os_refusal(f"--output {ns.output}: cannot write it", GenerateError), \
            open(ns.output, "a", encoding="utf-8") as f:  # this is what main's check cannot foresee
        f.write(lines)  # the batch's lines in one write
    ns.appended = getattr(ns, "appended", 0) + len(texts)  # what main's Ctrl-C message counts


def _interactive(m, codec, ns, world, sampling) -> None:
    while True:
        line = None
        if world.rank == 0:
            print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            # (a CRLF line's \r is not prompt text, as read_prompts drops it; it changed the answer: a review)
            done = line == "" or line.strip() in ("/exit", "/quit")
            line = None if done else line.removesuffix("\n").removesuffix("\r")
        line = world.broadcast(line)
        if line is None:
            return
        if line.strip():
            try:  # one bad line (too long for the model) ends that answer, not the session (a review)
                _run_batch(m, codec, [line], ns, world.rank, sampling, sources=["this prompt"])
            except GenerateError as e:
                if world.rank == 0:
                    print(f"error: {e}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m generate", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=path_text, help="Hugging Face checkpoint directory with tokenizer.json")
    src.add_argument("--demo", metavar="DIR", type=path_text,
                     help="write (once) and use a random tiny checkpoint in DIR: a new or empty folder, or one that "
                          "already holds the demo")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompt-file", type=path_text, help="prompts, one per line, or JSONL with a 'prompt' field")
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin (rank 0)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mtp", action="store_true", help="speculative decoding with MTP drafts")
    p.add_argument("--no-chat-template", action="store_true",
                   help="send prompts raw (after BOS where the tokenizer config adds one: add_bos_token)")
    p.add_argument("--system", help="system text before the user turn (chat format only)")
    p.add_argument("--gemm", choices=["bf16", "fp8", "fp8-weights"], default="bf16",
                   help="fp8: keep FP8 weights resident, FP8 GEMMs; fp8-weights: resident, dequantised per GEMM")
    p.add_argument("--dtype", metavar="DTYPE",
                   help="compute dtype, any model.load takes: bfloat16, float16, float32, float64 or bf16, fp16, "
                        "fp32, fp64 (default: the checkpoint's)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when torch sees a GPU), cpu or cuda; under torchrun 'cuda' is each rank's "
                        "LOCAL_RANK GPU")
    p.add_argument("--replicate", action="store_true",
                   help="under torchrun: a whole model on every rank instead of tensor + expert parallel shards")
    p.add_argument("--output", type=path_text,
                   help="append one JSON line per prompt (completion, tokens, acceptance) to this file")
    return p


def _sampling(ns) -> SamplingParams:
    """SamplingParams from the flags; a bad value names its flag (SamplingParams' own message names
    the field, e.g. top_p=1.5, which is not what was typed)."""
    from generate.sampling import SamplingParams

    try:
        return SamplingParams(ns.temperature, ns.top_p, ns.top_k, ns.seed)
    except GenerateError as e:  # "top_p=1.5 must be ..." -> "--top-p 1.5 must be ..."
        field, rest = str(e).split("=", 1)
        raise GenerateError(f"--{field.replace('_', '-')} {rest}") from None


def _greedy_note(ns) -> str | None:
    """The sampling flags given at --temperature 0 (greedy decoding, the default), where they change
    nothing: said once, instead of a greedy answer the user took for a sampled one."""
    given = [flag for flag, value, default in (("--top-p", ns.top_p, 1.0), ("--top-k", ns.top_k, 0),
                                               ("--seed", ns.seed, 0)) if value != default]
    if ns.temperature != 0 or not given:
        return None
    return (f"note: {', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect at --temperature 0 "
            "(greedy decoding); give a temperature above 0 to sample")


def _replicate_note(ns, world) -> str | None:
    """--replicate in a single process, where there is one whole model anyway: said, not dropped."""
    if not ns.replicate or world.size > 1:
        return None
    return "note: --replicate has no effect in one process (under torchrun it loads a whole model on every rank)"


def _check_flags(ns) -> None:
    """The flags checked first (the prompts' source, --max-new-tokens, the --output and --demo paths),
    before the ranks start and the model loads: each refusal names its flag."""
    from generate.text import demo_refusal

    if not (ns.prompt or ns.prompt_file or ns.interactive):
        raise GenerateError("give --prompt, --prompt-file or --interactive")
    if ns.max_new_tokens < 0:
        raise GenerateError(f"--max-new-tokens {ns.max_new_tokens} must be >= 0")
    for flag, path, file in (("--output", ns.output, True), ("--demo", ns.demo, False)):
        if path:  # before the model loads and generates, not after
            check_out_parent(Path(path), flag, file=file, error=GenerateError)
    if ns.demo and (why := demo_refusal(ns.demo)):
        raise GenerateError(f"--demo {ns.demo}: {why}")
    if ns.output and ns.prompt_file and Path(ns.output).resolve() == Path(ns.prompt_file).resolve():
        # the results were appended to the prompts: the next run read them back as prompts too
        raise GenerateError(f"--output {ns.output}: the same file as --prompt-file; give the results their own")


def _checkpoint(ns, world) -> str:
    """The checkpoint directory to load: --ckpt, or --demo's, written (once) by rank 0 while the others
    wait for it."""
    from generate.text import write_demo_checkpoint
    from model.checkpoint import not_a_directory

    ckpt = ns.ckpt
    if ns.demo:
        if world.rank == 0:
            with os_refusal(f"--demo {ns.demo}: cannot write the demo checkpoint", GenerateError):
                write_demo_checkpoint(ns.demo)
        world.barrier()
        ckpt = ns.demo
    if why := not_a_directory(ckpt):
        raise GenerateError(f"--ckpt {ckpt}: {why}")
    return ckpt


def _codec(ns, ckpt: str) -> TextCodec:
    """The checkpoint's tokenizer, read before the weights (fail fast); --system is refused where the
    prompts go raw."""
    from generate.text import load_codec
    from model import ModelArgs

    args = ModelArgs.from_hf_config(ckpt)
    codec = load_codec(ckpt, args)  # before the weights: fail fast
    # another model's tokenizer: a prompt with an id past the vocabulary was refused after the weights were
    # read, and one whose ids all fell within it was generated from on the wrong tokens (a checkpoint tour)
    tokenizer_fits(codec.tokenizer, Path(ckpt) / "tokenizer.json", args.vocab_size, GenerateError)
    if ns.system is not None and (ns.no_chat_template or not codec.chat):  # it was dropped without a word
        why = "--no-chat-template" if ns.no_chat_template else f"{ckpt}'s tokenizer has no chat format"
        raise GenerateError(f"--system: the prompts are sent raw ({why}), so a system text has no turn to go in")
    return codec


def _load_model(ns, ckpt: str, world, dtype):
    """The model on this rank (whole, or its shards); rank 0 says how the ranks hold it, and --mtp is
    refused for a checkpoint without MTP weights."""
    from model import load

    m = load(ckpt, dtype=dtype, device=world.device,
             gemm_impl=ns.gemm, parallel=world.shards if world.shards is not None else False)
    if world.rank == 0 and world.size > 1:
        how = "a whole model on every rank" if ns.replicate else "tensor + expert parallel shards"
        print(f"[{world.size} ranks: {how}]", file=sys.stderr, flush=True)
    if ns.mtp and not len(m.mtp):
        raise GenerateError(f"{ckpt}: --mtp needs MTP weights, and this checkpoint has none")
    return m


def _sources(ns, n: int) -> list[str]:
    """Each of the n prompts named as it was given: its flag and place (--prompt first, then the file's)."""
    return [f"--prompt #{i + 1}" if i < len(ns.prompt) else
            f"--prompt-file {ns.prompt_file}: prompt {i - len(ns.prompt) + 1}" for i in range(n)]


def _interrupted_line(ns) -> str:
    """What Ctrl-C prints: 'interrupted', and with --output what was appended to it before."""
    kept = getattr(ns, "appended", 0)
    said = (f" ({kept} line{'s' * (kept != 1)} appended to {ns.output} before it; not the generation in "
            "progress)" if kept else f" (nothing was appended to {ns.output})")
    return "\ninterrupted" + (said if ns.output else "")


def main(argv: list[str] | None = None, *, command: bool = False) -> None:
    """The command; `command`: in a process of its own (cli()), where Ctrl-C while torch is imported is one line."""
    ns = build_parser().parse_args(argv)
    whole_lines_on_stderr()  # under torchrun: the ranks' lines and torchrun's do not cut into each other

    with quiet_start(command):  # torch and the model, once the flags parse: --help answered without them
        from model import CheckpointError, ConfigError, ParallelError
        from model.checkpoint import float_dtype
        from model.kernels import KernelError
        from model.parallel import World, init_world

    code = None  # the exit status once main's work ended normally or with a reported error
    world = World()
    try:
        _check_flags(ns)
        sampling = _sampling(ns)
        dtype = float_dtype(ns.dtype, "--dtype")  # model.load's own parsing: a bad name is one line, here
        # every rank one whole model (--replicate), or all ranks one sharded model
        world = init_world(1 if ns.replicate else "auto", device=ns.device)
        for note in (_greedy_note(ns), _replicate_note(ns, world)):
            if note and world.rank == 0:
                print(note, file=sys.stderr)
        texts = _prompts_from_rank0(ns, world)
        ckpt = _checkpoint(ns, world)
        codec = _codec(ns, ckpt)
        m = _load_model(ns, ckpt, world, dtype)
        if texts:
            _run_batch(m, codec, texts, ns, world.rank, sampling, sources=_sources(ns, len(texts)))
        if ns.interactive:
            _interactive(m, codec, ns, world, sampling)
        code = 0
    except (GenerateError, CheckpointError, ConfigError, ParallelError, KernelError) as e:
        if world.rank == 0:  # every rank raises the same error; one line is enough
            print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # Ctrl-C while generating or at the interactive prompt: one line, not a traceback
        if world.rank == 0:
            print(_interrupted_line(ns), file=sys.stderr)
        code = 130
    finally:
        if world.size > 1:
            world.close()
            if code is not None:  # leave without interpreter teardown (probe.job_exit.exit_ranks says why)
                exit_ranks(code)
    if code:
        raise SystemExit(code) from None


def cli() -> int:
    """main() in a process of its own: `python -m generate` and its alias `python -m model.generate`.
    A reader that stops early (`| head`) was a BrokenPipeError traceback from the streaming print: exit
    141, as the analyses commands do."""
    with quiet_start(True):  # a process of its own: Ctrl-C here is one line, as in the package's imports
        from probe.job_exit import closed_pipe_quiet
        from probe.teardown import quick_teardown

    quick_teardown()
    return closed_pipe_quiet(functools.partial(main, command=True))()


if __name__ == "__main__":
    sys.exit(cli())
