"""`python -m probe`, with every rank held at the start of one batch: what the kill tests launch, so
that their kill lands mid-run however loaded the machine is (a timed kill once came after the run had
finished). Used as `python tests/helpers/held_probe.py record ...` (torchrun: the script in place of
`-m probe`), with the environment from `helpers.processes.hold_env`:

DSV3_TEST_HOLD_AT    the global batch index at whose start each rank stops, before its forward pass
DSV3_TEST_HOLD_GATE  a file: each held rank writes `<gate>.r<RANK>` and waits while the gate exists
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from probe.__main__ import main
from probe.recorders import Recorder

AT = int(os.environ["DSV3_TEST_HOLD_AT"])
GATE = Path(os.environ["DSV3_TEST_HOLD_GATE"])
_forward = Recorder._forward


def _held_forward(self, batch):
    if batch.index == AT:
        Path(f"{GATE}.r{os.environ.get('RANK', '0')}").touch()
        while GATE.exists():
            time.sleep(0.01)
    return _forward(self, batch)


Recorder._forward = _held_forward

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
