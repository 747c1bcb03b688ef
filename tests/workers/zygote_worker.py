"""torchrun worker for tests/e2e/test_zygote.py: says where it runs, then ends as MODE says. No torch
import but in MODE fresh (the launches under test are the launcher's). Not a test module.

    torchrun --standalone --nproc-per-node 2 tests/workers/zygote_worker.py MODE

MODE ok: each rank prints `rank R: CWD VALUE` (VALUE: $DSV3_TEST_WORKER_SAYS), then creates `rR.ready` in
CWD holding its pid, and exits 0.
MODE fail: as ok, then rank 1 exits 3 and rank 0 sleeps (until torchrun stops it).
MODE sleep: as ok, then every rank sleeps (until it is stopped).
MODE fresh: each rank prints, as one JSON line, what a fresh interpreter has that a worker forked from the
tests' zygote must be given (helpers/zygote_python.py), then, once both ranks have (each creates `said.RUN_ID.R`
in CWD), exits 4 (this one imports torch).
"""

import json
import os
import signal
import sys
import time

rank, mode = int(os.environ["RANK"]), sys.argv[1]
if mode == "fresh":
    import random

    import numpy
    import torch

    sys.stdout.write(json.dumps({
        "rank": rank, "argv": sys.argv, "file": __file__, "path": sys.path[:2], "name": __name__, "cwd": os.getcwd(),
        "streams": [(s.encoding, s.errors, s.write_through, s.line_buffering) for s in (sys.stdout, sys.stderr)],
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "threads": torch.get_num_threads(),
        "tmp": __import__("tempfile").gettempdir(), "random": [random.random(), float(numpy.random.random())],
        "pid": os.getpid(), "parent": os.getppid(), "session": os.getsid(0) == os.getpid(),
        "workers_project": "probe" in sys.modules}) + "\n")  # one write: the other rank's goes to the same pipe
    sys.stdout.flush()
    # both ranks' lines out before either fails: torchrun stops the other rank once one has failed, and a
    # rank still importing torch then said nothing (one line of two, in a clean-clone CI, 2026-12-07)
    said = f"said.{os.environ.get('TORCHELASTIC_RUN_ID', '')}."  # this launch's (the test launches twice in CWD)
    open(f"{said}{rank}", "w").close()
    deadline = time.time() + 60
    while not os.path.exists(f"{said}{1 - rank}") and time.time() < deadline:
        time.sleep(0.01)
    sys.exit(4)
sys.stdout.write(f"rank {rank}: {os.getcwd()} {os.environ.get('DSV3_TEST_WORKER_SAYS')}\n")  # one write (a line whole)
sys.stdout.flush()
with open(f"r{rank}.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(f"r{rank}.tmp", f"r{rank}.ready")  # whole when it appears
if mode == "fail" and rank == 1:
    sys.exit(3)
if mode in ("fail", "sleep"):
    time.sleep(300)
