"""A torchrun worker for `dsv3-probe ...` whose rank 1 fails on purpose, for the tests of how the
other ranks end (tests/e2e/test_mp_resume.py). Not collected by pytest (no test_ prefix).

    torchrun --nproc-per-node 2 tests/workers/failing_rank.py MODE [MODE...] [-m MODULE] ARGS...

MODE load: rank 1's `model.load` raises OSError (an unreadable shard, a rank out of memory).
MODE after-load: rank 1 exits at once after its model loaded (a rank killed while the job runs).
MODE after-create: rank 1 exits at once after rank 0 created a record run (a rank killed there).
MODE after-commit: rank 1 exits at once after a sweep's first commit (ablate, importance: a rank killed mid-sweep).
MODE corpus=PATH: rank 1 reads the corpus at PATH instead of --corpus (a node whose copy differs).
MODE out=PATH: rank 1 is given --out PATH (a rank that does not see the run: a node without the shared disk).
MODE tokenizer=PATH: rank 1 is given --tokenizer PATH (its node's copy of the tokenizer).
MODE ckpt=PATH: rank 1 is given --ckpt PATH (its node's copy of the checkpoint).
The FLAG=PATH modes may follow one another (a node whose copies differ in several ways).
ARGS: `dsv3-probe`'s, or `-m analyses.ablate ...` (importance, steer) for that command's.
"""

from __future__ import annotations

import os
import sys

from probe.allocator import use_system_allocator

use_system_allocator()

import importlib  # noqa: E402

import model  # noqa: E402
import probe.record as record  # noqa: E402

PER_NODE = ("corpus=", "out=", "tokenizer=", "ckpt=")
mode, argv = sys.argv[1], sys.argv[2:]
per_node = [mode] if mode.startswith(PER_NODE) else []
while per_node and argv[:1] and argv[0].startswith(PER_NODE):
    per_node.append(argv.pop(0))
module = "probe"
if argv[:1] == ["-m"]:
    module, argv = argv[1], argv[2:]
main = importlib.import_module(f"{module}.__main__").main
if os.environ.get("RANK") == "1":
    if mode == "after-load":
        real_load = model.load

        def load_then_exit(*a, **k):
            real_load(*a, **k)
            os._exit(3)

        model.load = load_then_exit
    elif mode == "load":
        def failing_load(*a, **k):
            raise OSError("injected: cannot read this rank's shard")

        model.load = failing_load
    elif mode == "after-create":
        real_agree = record.agree

        def agree_then_exit(world, fn):
            out = real_agree(world, fn)
            if getattr(fn, "__name__", "") == "create":
                os._exit(3)
            return out

        record.agree = agree_then_exit
    elif mode == "after-commit":
        from analyses.ablate.sweep import Commits

        real_commit = Commits.commit

        def commit_then_exit(self, *a, **k):
            real_commit(self, *a, **k)
            os._exit(3)

        Commits.commit = commit_then_exit
    elif per_node:
        for flag, path in (m.split("=", 1) for m in per_node):
            argv[argv.index("--" + flag) + 1] = path
    else:
        sys.exit(f"unknown MODE {mode!r}: load, after-load, after-create, after-commit, corpus=PATH, out=PATH, tokenizer=PATH or ckpt=PATH")
sys.exit(main(argv))
