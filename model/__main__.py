"""Command line for the model: a quick look at a checkpoint or a shipped config.

    python -m model summary                       # random weights, shipped 'tiny' config
    python -m model summary --ckpt DIR --text "def f(x):"   # a Hugging Face checkpoint
    python -m model params --config 671B          # parameter counts on the meta device (no memory)
    python -m model params --config 671B --world-size 16   # + bytes per rank under TP+EP (FP8 weights)
    python -m model params --config 671B --world-size 8 --device-memory 141   # one 8x H200 node
"""

from __future__ import annotations

import argparse
import sys

from probe.job_signals import quiet_start

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    from probe.job import SubcommandParser, path_text

    from .args import ConfigError
    from .checkpoint_files import CheckpointError

# NOTE: torch and the model are imported once the flags parse (model/commands.py), so that `--help` and a
# mistyped flag answer at once (they took 1.6-2.4 s, nearly all of it importing torch).


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=SubcommandParser)
    s = sub.add_parser("summary", help="forward pass and a routing / latent summary")
    s.add_argument("--ckpt", type=path_text, help="Hugging Face checkpoint directory (default: random weights)")
    s.add_argument("--config", help="shipped config for random weights (default: tiny)")
    s.add_argument("--text", help="text to run (needs --ckpt with tokenizer.json); default random tokens")
    s.add_argument("--batch", type=int, help="random-token batch size (default 4)")
    s.add_argument("--seq-len", type=int, help="random-token sequence length (default 128)")
    s.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("params", help="parameter counts of a shipped config, on the meta device")
    q.add_argument("--config", default="671B", help="671B, V3.1, 236B, 16B or tiny")
    q.add_argument("--world-size", type=int, help="also print parameter bytes per rank under tensor + expert "
                   "parallelism over this many ranks (meta device)")
    q.add_argument("--dense", action="store_true", help="with --world-size: bf16 weights instead of FP8")
    q.add_argument("--batch-size", type=int, help="with --world-size: rows of the forward pass sized (default 8)")
    q.add_argument("--seq-len", type=int, help="with --world-size: positions per row (default 512, or the config's "
                   "max_seq_len where shorter)")
    q.add_argument("--device-memory", type=float, metavar="GB", help="with --world-size: GB per rank to check against")
    ns = p.parse_args(argv)
    with quiet_start(__name__ == "__main__"):  # torch, the model: seconds, now that the flags are known
        from . import commands
    try:
        code = getattr(commands, ns.cmd)(ns)
    except (CheckpointError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    with quiet_start(True):  # as the imports above
        from probe.job_exit import closed_pipe_quiet
        from probe.teardown import quick_teardown

    quick_teardown()
    # `python -m model params ... | head -1` ended in a BrokenPipeError traceback: exit 141, as the
    # analyses commands do
    sys.exit(closed_pipe_quiet(main)())
