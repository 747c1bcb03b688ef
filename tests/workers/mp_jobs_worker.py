"""torchrun worker for tests/e2e/test_mp_jobs.py: runs the record, spec, ablate and importance jobs one after the
other in one launch (the library entry points, as the commands call them), so that one start-up of
the ranks covers all three. Not a test module.

    python -m torch.distributed.run --standalone --nproc-per-node 4 tests/workers/mp_jobs_worker.py JOBS.json

JOBS.json: {"record": RecordOptions fields, "spec": SpecOptions fields, "ablate": AblateOptions fields
plus "ablations": [Ablation fields], "importance": ImportanceOptions fields, "steer": SteerOptions
fields plus "steering": Steer fields, "report": analyses.report arguments}; each key optional.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from analyses.ablate import AblateOptions, ablate
    from analyses.ablate import Ablation
    from probe.record import RecordOptions, record
    from probe.speculative import SpecOptions, record_spec

    jobs = json.loads(Path(sys.argv[1]).read_text())
    if "record" in jobs:
        record(RecordOptions(**jobs["record"]))
    if "spec" in jobs:
        record_spec(SpecOptions(**jobs["spec"]))
    if "ablate" in jobs:
        kw = dict(jobs["ablate"])
        ablate(AblateOptions(**{k: v for k, v in kw.items() if k != "ablations"}),
               [Ablation(**a) for a in kw["ablations"]])
    if "importance" in jobs:
        from analyses.importance import ImportanceOptions, importance

        importance(ImportanceOptions(**jobs["importance"]))
    if "steer" in jobs:
        from analyses.steer import Steer, SteerOptions, steer

        kw = dict(jobs["steer"])
        steer(SteerOptions(**{k: v for k, v in kw.items() if k != "steering"}), Steer(**kw["steering"]))
    if "report" in jobs:  # last: analyses.report.main leaves the process itself (probe.job_exit.exit_ranks)
        from analyses.report.__main__ import main as report

        report(jobs["report"])
    # NOTE: leave without interpreter teardown (see probe.job_exit.exit_ranks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
