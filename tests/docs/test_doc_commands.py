"""The commands the README, docs/ and the modules' docstrings show are contracts (a user pastes them):
each one's arguments must still be accepted by the parser of the command it names, and the files
it names must be there. tests/helpers/doc_commands.py finds and checks them without running a job."""

import json
from pathlib import Path

import pytest

from helpers.forked import forked


def _check_into(out: Path, files) -> None:
    """helpers/doc_commands.py's main(), its JSON written to `out`."""
    import os
    import sys

    from helpers.doc_commands import REPO, check, commands

    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    out.write_text(json.dumps(check(commands(list(files)))))


def check(*files) -> dict:
    """helpers/doc_commands.py's findings on `files`, in a child forked from the test process: each command's
    module runs there as `__main__`, and this process stays as it was (a fresh interpreter spent ~2 s
    of CPU importing torch, which a fork has already)."""
    out = Path(files[-1]).with_name("findings.json")
    assert forked(_check_into, out, files) == 0, "the check ended early (its traceback: the captured stderr)"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def checked_once(tmp_path_factory) -> tuple[dict, dict, Path]:
    """The documentation's commands and the broken page's (DOC, below), checked in one forked process
    (which runs every command's module, ~2 s): (the documentation's findings, the page's, the page). A
    finding starts with its file, so each side is told apart by the page's path."""
    from helpers.doc_commands import default_files

    page = tmp_path_factory.mktemp("doc") / "page.md"
    page.write_text(DOC)
    found = check(*default_files(), page)
    ours = {k: [x for x in v if x.startswith(f"{page}:")] for k, v in found.items()}
    docs = {k: [x for x in v if not x.startswith(f"{page}:")] for k, v in found.items()}
    return docs, ours, page


@pytest.mark.slow  # a process that runs every command's module up to its parser
def test_every_documented_command_parses(checked_once):
    found = checked_once[0]
    assert found["problems"] == []
    checked = "\n".join(found["checked"])
    # the Quickstart's two commands, torchrun's flags after `--`, a script, a usage synopsis, a notebook,
    # a script's flags after its name alone
    for line in ("README.md:63: dsv3-probe record", "README.md:64: pip install -e '.[test]'",
                 "-m analyses.ablate -- --run runs/v3 --top 8", "python benchmarks/bench_prefill.py",
                 "python -m analyses.steer --run RUN --experts 2:5+7 --mode force --steer-domain code",
                 "jupyter execute analyses/notebooks/mtp.ipynb",
                 "docs/performance.md:157: python benchmarks/bench_record.py --part memory"):
        assert line in checked
    assert len(found["checked"]) >= 250


DOC = """# A page

Run `dsv3-probe record` (a mention) or `python -m analyses.placement` (one without its required run).

```bash
dsv3-probe record --max-tokenz 1000            # a flag misspelt
python -m analyses.placement RUN --gpus G --redundant R   # placeholders for numbers
python -m analyses.placement runs/x --gpus eight           # not a number
python -m analyses.placement                               # a pasted line must be complete
torchrun --nproc-per-node 2 -m analyses.ablate -- --run runs/x --top 2 \\
    --domian code
python benchmarks/bench_gone.py --repeats 3
pip install -e '.[test,gpu]'
streamlit run dashboards/missing.py -- runs/
python -m analyses.steer --run RUN --experts 2:5 [--mode force\\|bias] [--steer-domain code]
python my_script.py --anything && python -m pytest -q | head
```

A script's flags after its name: `bench_prefill.py --repeatz 3`, `check_record.py --cpu` (`bench_threads.py`: a file).
"""


@pytest.mark.slow  # the process above
def test_a_broken_command_is_named_with_its_file_and_line(checked_once):
    """Negative control: each kind of drift the check exists for, in a page of its own."""
    _, found, page = checked_once
    problems = "\n".join(found["problems"])
    assert f"{page}:6: dsv3-probe record --max-tokenz 1000" in problems
    assert "unrecognized arguments: --max-tokenz 1000" in problems
    assert "argument --gpus: invalid int value: 'eight'" in problems
    assert f"{page}:9: python -m analyses.placement" in problems  # fenced: required arguments missing
    assert f"{page}:10: torchrun" in problems and "unrecognized arguments: --domian code" in problems
    assert "benchmarks/bench_gone.py: no such file" in problems
    assert "no extra gpu in pyproject.toml" in problems
    assert "dashboards/missing.py: no such file" in problems
    assert f"{page}:19: python benchmarks/bench_prefill.py --repeatz 3" in problems  # by its name alone
    assert "unrecognized arguments: --repeatz 3" in problems
    assert len(found["problems"]) == 8, problems
    # what passed: the mentions, the placeholders, the synopsis; a user's own script and pytest are not ours
    checked = "\n".join(found["checked"])
    assert f"{page}:3: dsv3-probe record" in checked and f"{page}:3: python -m analyses.placement" in checked
    assert "analyses.placement RUN --gpus G --redundant R" in checked
    assert "analyses.steer --run RUN --experts 2:5 --mode force --steer-domain code" in checked
    assert "my_script" not in checked and "-m pytest" not in checked
    assert f"{page}:19: python tests/gpu/check_record.py --cpu" in checked and "bench_threads" not in checked
