"""The benchmark scripts are how the speed figures of the README and docs/performance.md are
measured, and the GPU checks (tests/gpu/) run only where there is a GPU: no test runs them end to
end here, so their imports (most inside functions) are checked the way each script resolves them
when run as `python path/to/script.py`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

CHECKER = REPO / "tests" / "helpers" / "script_imports.py"


def problems(*scripts: Path) -> list[str]:
    out = subprocess.run([sys.executable, str(CHECKER), *map(str, scripts)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh process
def test_every_benchmark_and_gpu_check_script_imports_what_it_uses(tmp_path):
    scripts = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "tests" / "gpu").glob("check_*.py"))
    assert len(scripts) >= 10
    # negative control, in the same process: bench_record.py's old set-up put tests/ first on sys.path,
    # where tests/model/ (a folder of test files) shadowed the model package, and read helpers from
    # conftest after they had moved to tests/helpers
    bad = tmp_path / "bench_broken.py"
    bad.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n\n\n"
                   "def main():\n    import model\n    from conftest import make_tokenizer\n"
                   "    return model.ModelArgs\n")
    found = problems(*scripts, bad)
    assert [p for p in found if "bench_broken" not in p] == []
    broken = "\n".join(found)
    assert "model.ModelArgs does not exist" in broken and "conftest.make_tokenizer does not exist" in broken
