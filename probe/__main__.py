"""`python -m probe` / `dsv3-probe`: the probe's commands (record, spec, import sglang, dashboard). The
jobs themselves are library modules: record.py, speculative.py, plan.py, sglang.py; what they share
is job.py.

    dsv3-probe record                               # bundled model + corpus -> runs/<name>
    dsv3-probe record --ckpt CKPT --corpus DIR --out runs/x --max-tokens 100000
    dsv3-probe record --ckpt CKPT --dry-run --world-size 8 --model-parallel auto --gemm fp8 \\
        --device-memory 141 --device cuda
    torchrun --nproc-per-node 2 -m probe record --ckpt CKPT --corpus DIR --out runs/x   # 2 replicas
    torchrun --nproc-per-node 8 -m probe record --ckpt CKPT --out runs/x --model-parallel auto --gemm fp8
    dsv3-probe spec --out runs/x                    # + MTP speculative-decoding acceptance
    dsv3-probe import sglang DUMPS/ --config CKPT/config.json --out runs/prod   # SGLang's expert dumps
    dsv3-probe dashboard [RUNS_DIR] [--host 127.0.0.1] [--port 8501]   # the Streamlit dashboard
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

# the jobs' allocator, chosen before anything imports pyarrow (probe/allocator.py)
from .allocator import reader_env, use_system_allocator

use_system_allocator()

from .job_signals import quiet_start  # noqa: E402

# Ctrl-C while the command imports: one line, not a traceback (`python -m probe`, the console script)
with quiet_start(__name__ == "__main__" or Path(sys.argv[0]).stem == "dsv3-probe"):
    from .corpus import CorpusError
    from .job import (DEFAULT_CKPT, DEFAULT_CORPUS, DEFAULT_RUNS, RecordError, SubcommandParser, add_model_flags,
                      path_text, terminate_as_interrupt)
    from .job_exit import (closed_pipe_quiet, exit_ranks, job_error, launch_rank0, one_line_when_a_peer_is_lost,
                           say_stopped)
    from .teardown import quick_teardown
    from .writer import RunError, read_run_json

if TYPE_CHECKING:
    from .record import RecordOptions

# NOTE: the jobs (record.py, speculative.py, sglang.py) are imported where they run: they import torch,
# seconds that `dsv3-probe --help` and `dsv3-probe dashboard` (whose pages never use torch) need not wait.


def _doc(module: str) -> str:
    """The docstring of this package's `module`, read without importing it (for --help)."""
    return ast.get_docstring(ast.parse(Path(__file__).with_name(f"{module}.py").read_text(encoding="utf-8"))) or ""


def _add_record(sub) -> None:
    p = sub.add_parser("record", help="feed a corpus through the model and write a run directory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=path_text,
                   help=f"Hugging Face checkpoint directory (default: the bundled {DEFAULT_CKPT.name})")
    p.add_argument("--corpus", type=path_text,
                   help="directory of text files (domain = sub-folder), .txt, .jsonl or .parquet "
                        f"(default: the bundled {DEFAULT_CORPUS})")
    p.add_argument("--out", type=path_text, help="run directory to write (default: runs/<ckpt>-<corpus>)")
    p.add_argument("--tokenizer", type=path_text, help="tokenizer.json (default: the checkpoint's)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: the whole corpus)")
    p.add_argument("--order", choices=["domains", "corpus"], default="domains",
                   help="domains (default): the domains interleaved, each next window from the domain with the "
                        "fewest tokens so far, so a --max-tokens cap covers every domain; corpus: corpus order")
    p.add_argument("--seq-len", type=int,
                   help="window length in tokens (default 512, or the model's training length when "
                        "shorter: rope_scaling's original_max_position_embeddings)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--router-logits", choices=["none", "topk", "full"], default="topk",
                   help="per-token routing rows: none, top-k ids and weights (the default), or also every "
                        "expert's score")
    p.add_argument("--sample", type=float, default=1.0,
                   help="with --router-logits full: fraction of tokens whose full scores are kept (default 1)")
    p.add_argument("--kv-stats", action=argparse.BooleanOptionalAction, default=True,
                   help="latent-KV statistics and spectrum (default on)")
    p.add_argument("--mtp", action=argparse.BooleanOptionalAction, default=True,
                   help="MTP teacher-forced agreement table (default on, when the checkpoint has MTP weights)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--commit-every", type=int, default=32, help="batches between durable commits (default 32)")
    p.add_argument("--bos", dest="add_bos", action=argparse.BooleanOptionalAction, default=True,
                   help="prepend the model's BOS token to each document (default on)")
    add_model_flags(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    plan = p.add_argument_group("planning (--dry-run: read the checkpoint's headers and the corpus, load no weights)")
    plan.add_argument("--dry-run", action="store_true",
                      help="check everything and print the per-rank memory and disk plan, then exit")
    plan.add_argument("--world-size", type=int, help="ranks to plan for (default: torchrun's WORLD_SIZE, else 1)")
    plan.add_argument("--device-memory", type=float, metavar="GB",
                      help="memory per rank to check the plan against, in GB (e.g. 141 for an H200, 80 for an H800)")
    p.set_defaults(fn=_record)


def record_options(argv: list[str]) -> RecordOptions:
    """The RecordOptions `dsv3-probe record ARGV...` would run with (for scripts that plan a run)."""
    return _options(parser().parse_args(["record", *argv]))


def _options(ns) -> RecordOptions:
    from .record import RecordOptions

    return RecordOptions(**{k: v for k, v in vars(ns).items() if k in RecordOptions.__dataclass_fields__})


def _record_interrupted(e: KeyboardInterrupt) -> int:
    """Ctrl-C, SIGTERM or SIGHUP during a record: one line, exit status 130. The job names what it kept (and
    --resume) once it has begun; before that nothing was written."""
    say_stopped(f"\n{str(e) or 'interrupted before anything was recorded'}")
    return 130


def _record(ns) -> int:
    opts = _options(ns)
    try:
        from .record import record  # imports torch: seconds in which Ctrl-C may come too

        if opts.dry_run:  # the plan's verdict is the exit status: 1 where it does not fit
            from .plan import dry_run
            from .record import prepare

            # under torchrun rank 0's alone, the rank that prints the plan: another rank leaving first with
            # 1 had torchrun stop rank 0 before it printed
            return 0 if dry_run(prepare(opts), opts)["fits"] or not launch_rank0() else 1
        out = record(opts)
    except KeyboardInterrupt as e:
        return _record_interrupted(e)
    if not opts.dry_run and launch_rank0():
        print(f"wrote {out}")
    return 0


def _add_dashboard(sub) -> None:
    p = sub.add_parser("dashboard", help="open the Streamlit dashboard over a directory of runs",
                       description="Start the dashboard (streamlit) over RUNS_DIR; when it holds no run, record "
                                   "the default run (bundled model and corpus) into it first.")
    p.add_argument("runs_dir", nargs="?", default=str(DEFAULT_RUNS),
                   help=f"directory of run directories (default {DEFAULT_RUNS}, where record writes by default)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8501, help="port (default 8501)")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not record the default run when RUNS_DIR has none")
    p.set_defaults(fn=_dashboard)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def _check_can_serve(host: str, port: int) -> None:
    """Bind (and release) HOST:PORT the way the server will, so that an address this machine does not
    have, or a port in use, is one line now rather than streamlit's traceback after a recording."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise RecordError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            sock.bind(address)
        except OSError as e:
            raise RecordError(f"--host {host} --port {port}: cannot serve there ({e.strerror})") from None


def _exec_streamlit(cmd: list[str], env: dict) -> int:
    """Replace this process by the server (signals reach streamlit directly; nothing of the record
    path stays in memory)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def _dashboard(ns) -> int:
    runs = Path(ns.runs_dir)
    if runs.exists() and not runs.is_dir():
        raise RecordError(f"{runs}: a file, not a directory of runs")
    query = ""
    if (runs / "run.json").is_file():  # a run itself: serve the folder it lies in, with it selected
        print(f"{runs} is a run: serving the runs beside it in {runs.resolve().parent}", file=sys.stderr)
        query = "?run=" + urllib.parse.quote(runs.resolve().name)
        runs = runs.resolve().parent
    if not ns.record and not runs.is_dir():  # nothing would make it: most likely a typo
        raise RecordError(f"{runs}: no such directory of runs (without --no-record the default run is "
                          "recorded into it)")
    _check_can_serve(ns.host, ns.port)
    if ns.record and not any(runs.glob("*/run.json")):
        # the only path where the dashboard command needs the model (and torch, via probe.record)
        from .record import RecordOptions, record

        out = runs / f"{DEFAULT_CKPT.name}-{DEFAULT_CORPUS.stem}"
        print(f"{runs} holds no run: recording the default run into {out} first", file=sys.stderr)
        try:
            record(RecordOptions(out=str(out)))
        except (RecordError, CorpusError, RunError) as e:
            print(f"note: could not record the default run ({e}); the dashboard starts without it", file=sys.stderr)
        except KeyboardInterrupt as e:  # as record's own command
            return _record_interrupted(e)
    app = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", ns.host,
           "--server.port", str(ns.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer", "--", str(runs)]
    print(f"dashboard on http://{ns.host}:{ns.port}/{query}  (runs: {runs})", file=sys.stderr)
    return _exec_streamlit(cmd, reader_env(dict(os.environ)) | {"DSV3_RUNS_DIR": str(runs)})


def _add_spec(sub) -> None:
    p = sub.add_parser("spec", help="generate with MTP drafts and record their acceptance into a run",
                       description=_doc("speculative"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=path_text,
                   help="Hugging Face checkpoint directory with MTP weights (default: the bundled model)")
    p.add_argument("--corpus", type=path_text,
                   help=f"where prompts come from (default: the bundled {DEFAULT_CORPUS.name})")
    p.add_argument("--out", type=path_text,
                   help="run directory to create or add to (default: runs/<ckpt>-<corpus>-spec)")
    p.add_argument("--tokenizer", type=path_text,
                   help="tokenizer.json (default: the checkpoint's, or the one --out's run was recorded with)")
    p.add_argument("--prompt-tokens", type=int, default=32,
                   help="prompt length in tokens, BOS included (default 32; at least 2 where the model has a BOS)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens to generate per prompt (default 32)")
    p.add_argument("--max-prompts", type=int,
                   help="prompts, round-robin over domains (default 64, or no cap when --max-tokens is given; "
                        "0 = every document)")
    p.add_argument("--max-tokens", type=int,
                   help="a budget of prompt + generated tokens: N // (prompt-tokens + new-tokens) prompts, "
                        "round-robin over domains (with --max-prompts too, the smaller cap wins)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace spec tables already in --out")
    add_model_flags(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(fn=_spec)


def _spec(ns) -> int:
    from .speculative import SpecOptions, record_spec

    kw = {k: v for k, v in vars(ns).items() if k in SpecOptions.__dataclass_fields__}
    if ns.max_prompts is not None and ns.max_prompts < 0:
        print(f"error: --max-prompts {ns.max_prompts}: must be >= 0 (0 = every document)", file=sys.stderr)
        return 2
    try:
        out = record_spec(SpecOptions(**kw))
    except KeyboardInterrupt:  # spec writes its tables once every prompt is done: nothing to keep
        print(f"\ninterrupted: nothing was written to {ns.out or 'the run'} (spec writes when every prompt is done)",
              file=sys.stderr)
        return 130
    if not launch_rank0():  # every rank has the same result; rank 0 says it
        return 0
    run_json = read_run_json(out)
    info = run_json["spec_decode"]
    rate = info["acceptance_rate"]
    print(f"{info['prompts']} prompts, {info['generated']} tokens in {info['forward_passes']} forward passes "
          f"({info['generated'] / max(info['forward_passes'], 1):.2f} tokens/pass); MTP draft acceptance "
          f"{'n/a' if rate is None else f'{100 * rate:.1f}%'} ({info['drafts_accepted']}/{info['drafts_proposed']})"
          + ("" if rate is None else f", mean acceptance length {1 + rate:.2f}"))
    # a run of the spec tables alone (an --out mistyped for a recorded run's reads alike): the report
    # refuses it, and the record it was meant for stays without them
    alone = (": a run of the spec tables alone, no record (the dashboard shows it; for the report's Speculative "
             "decoding section, `dsv3-probe spec --out RUN` of a recorded run adds them there)"
             if run_json.get("kind") == "spec" else "")
    print(f"wrote {out}{alone}")
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="turn a serving engine's routing dumps into a run (sglang)",
                       description=_doc("sglang"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["sglang"], help="which engine wrote the dump")
    p.add_argument("dump", type=path_text, help="a dump file, or a directory of them (one per rank)")
    p.add_argument("--out", type=path_text, help="run directory to write (default: runs/sglang-<mode>-<dump name>)")
    p.add_argument("--config", type=path_text,
                   help="the served model's config.json (or its directory): layers, experts, top-k, "
                        "dense layers (default: read from the dump; top-k 8)")
    p.add_argument("--tokenizer", type=path_text,
                   help="tokenizer.json, so that the token explorer shows text (per_token dumps)")
    p.add_argument("--buffer-size", type=int, help="stat dumps: the server's --expert-distribution-recorder-buffer-size "
                                                   "(-1: unbounded, every pass in order; default: SGLang's circular "
                                                   "buffer, its order inferred from its unused rows)")
    p.add_argument("--gpus", type=int, help="per_pass / per_token dumps: the server's expert-parallel size (its GPU "
                                            "count under EP, 1 for tensor parallelism only; it divides the server's "
                                            "rank count), for the placement table (default: the ranks seen, when every "
                                            "rank's file is imported)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(fn=_import)


def _import(ns) -> int:
    from .sglang import import_sglang

    with terminate_as_interrupt():  # the half-written .OUT.importing is removed on SIGTERM too
        out = import_sglang(ns.dump, ns.out, ns.config, ns.tokenizer, ns.overwrite, ns.buffer_size, ns.gpus)
    info = read_run_json(out)["source"]
    print(f"imported {info['mode']} dump of {len(info['files'])} file(s), {info['passes']} forward passes, "
          + (f"MoE layers {info['moe_layers'][0]}..{info['moe_layers'][-1]}" if info["moe_layers"] else "no MoE layer"))
    print(f"wrote {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsv3-probe", description="Look inside DeepSeek-V3 models.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=SubcommandParser)
    _add_record(sub)
    _add_spec(sub)
    _add_import(sub)
    _add_dashboard(sub)
    return p


@closed_pipe_quiet
@one_line_when_a_peer_is_lost
def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        code = ns.fn(ns)
    except (RecordError, CorpusError, RunError, ValueError, OSError) as e:
        return job_error(e)
    return exit_ranks(code)


def cli() -> int:
    """The console script `dsv3-probe`: main() in a process of its own (pyproject.toml)."""
    quick_teardown()
    return main()


if __name__ == "__main__":
    sys.exit(cli())
