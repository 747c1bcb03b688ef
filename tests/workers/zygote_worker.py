"""torchrun worker for tests/e2e/test_zygote.py: says where it runs, then ends as MODE says. No torch
import (the launches under test are the launcher's). Not a test module.

    torchrun --standalone --nproc-per-node 2 tests/workers/zygote_worker.py MODE

MODE ok: each rank prints `rank R: CWD VALUE` (VALUE: $DSV3_TEST_WORKER_SAYS), then creates `rR.ready` in
CWD, and exits 0.
MODE fail: as ok, then rank 1 exits 3 and rank 0 sleeps (until torchrun stops it).
MODE sleep: as ok, then every rank sleeps (until it is stopped).
"""

import os
import sys
import time

rank, mode = int(os.environ["RANK"]), sys.argv[1]
print(f"rank {rank}: {os.getcwd()} {os.environ.get('DSV3_TEST_WORKER_SAYS')}", flush=True)
open(f"r{rank}.ready", "w").close()
if mode == "fail" and rank == 1:
    sys.exit(3)
if mode in ("fail", "sleep"):
    time.sleep(300)
