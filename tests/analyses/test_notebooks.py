"""Every notebook in analyses/notebooks runs top to bottom (nbclient, kernel python3) on a small run,
is stored without outputs, states its question and ends with a conclusion computed in the notebook."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from helpers.analysis_runs import small_run

pytestmark = pytest.mark.slow  # torchrun launches, a browser or notebook kernels: `pytest -m "not slow"` skips them

REPO = Path(__file__).resolve().parents[2]
NB_DIR = REPO / "analyses" / "notebooks"
NAMES = ["load_balance", "specialisation", "ablation", "latent_kv", "mtp", "causal_importance", "expert_paths",
         "token_dependence", "run_vs_run", "steering", "circuits"]
BUDGET_S = 180  # all notebooks together (the sum of their times)
_TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return small_run(tmp_path_factory)


def test_every_notebook_is_there_and_stored_without_outputs():
    import nbformat  # NOTE: imported where used: nbformat takes seconds to import, which every pytest
    # worker would pay while collecting, `-m "not slow"` too

    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: outputs stored"
        md = [c.source for c in nb.cells if c.cell_type == "markdown"]
        assert "**Question.**" in md[0], f"{name}: the first cell should state the question"
        assert any(s.startswith("## Conclusion") for s in md), f"{name}: no conclusion"
        assert "default_run()" in code[0].source


# what a kernel imports before its first notebook, to freeze it out of the cyclic collector's passes (`_execute`)
PRELOAD = ("numpy", "pandas", "plotly.graph_objects", "IPython.display", "torch", "sklearn.linear_model", "model",
           "generate", "analyses.notebook_utils", "analyses.metrics", "analyses.report", "analyses.ablate",
           "analyses.importance", "analyses.steer", "analyses.placement")


def _execute(name: str, km, env: dict[str, str] | None = None) -> tuple:
    """Run one notebook top to bottom in the kernel of `km` (started by the first notebook it runs;
    its namespace reset before every notebook): (notebook, seconds, exception or None).
    env: variables set in the kernel first (`%env`; a kernel started before took this process's)."""
    import nbformat
    from nbclient import NotebookClient

    def client(nb):
        return NotebookClient(nb, km=km, kernel_name="python3", timeout=240,
                              resources={"metadata": {"path": str(NB_DIR)}})

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    # every notebook starts as in a new kernel: no variable, import or figure of the notebook before (nor
    # of the PRELOAD below). The reset (and `env`) runs as the notebook's first cell, taken out again
    # after: run on its own it took a client of its own, 0.25 s a notebook.
    # NOTE: a new kernel imports PRELOAD and freezes what it holds then (gc.freeze, with the thresholds
    # of tests/conftest.py): `%reset -f` runs two full collections, and over torch, pandas and plotly
    # those took 0.3-0.7 s a notebook, ~5 s of the kernel's ~21 s of CPU (2026-12-06)
    first = [f"%env {k}={v}" for k, v in (env or {}).items()]
    if not km.has_kernel:
        first += ["import gc", "gc.set_threshold(10_000, 20, 100)", "import " + ", ".join(PRELOAD), "gc.freeze()"]
    nb.cells.insert(0, nbformat.v4.new_code_cell("\n".join(first + ["%reset -f"])))
    t = time.perf_counter()
    try:
        client(nb).execute()
        err = None
    except Exception as e:  # noqa: BLE001 - reported by the notebook's own test
        err = e
    finally:
        del nb.cells[0]
    return nb, time.perf_counter() - t, err


@pytest.fixture(scope="module")
def kernel():
    """One kernel for this module's notebooks, started by the first notebook it runs and shut down after
    the module's last test: `executed` runs the eleven in it, and the one-domain test below two more (a
    kernel of its own took ~2 s more to start and import torch, pandas and plotly)."""
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name="python3")
    yield km
    _shutdown(km)


@pytest.fixture(scope="module")
def executed(run_dir, kernel):
    """Every notebook executed, one after another in one kernel.

    NOTE: a kernel runs several notebooks, its namespace reset (`%reset -f`) between them, instead of
    a kernel each: starting a kernel and importing torch, pandas and plotly into it was most of a
    notebook's time (the ten took 55 s in all with a kernel each, 20 s in two kernels). Modules stay
    imported; every name a notebook uses it must still define itself (a name left by the notebook
    before fails, checked by hand). One kernel, not two side by side: the suite's two xdist workers
    keep both cores busy, so a second kernel only cost its start (~3 s of CPU: python, ipykernel,
    torch, pandas, plotly), and the notebooks that write into the run (ablations, importance,
    steering) no longer need keeping apart so that no two update its run.json at once."""
    env = {"DSV3_NOTEBOOK_RUN": str(run_dir), "DSV3_NOTEBOOK_ABLATION_TOKENS": "600",
           "DSV3_NOTEBOOK_IMPORTANCE_EXPERTS": "0-3",  # 12 removals instead of 96
           "OMP_NUM_THREADS": "1"}  # steady on a shared CPU
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return {n: _execute(n, kernel) for n in NAMES}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _shutdown(km) -> None:
    from nbclient.util import run_sync

    if km.has_kernel:
        run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, run_dir, executed):
    nb, seconds, err = executed[name]
    _TIMES[name] = seconds
    print(f"{name}.ipynb: {seconds:.1f} s")
    if err is not None:
        raise err
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    assert any(str(run_dir) in o.get("text", "") for o in outs), "the notebook did not open the test run"
    # figures go out as plotly's MIME bundle, which JupyterLab renders inline (plotly's lab extension)
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outs), "no inline plotly figure"
    # every chart says what it shows and what its bars or lines measure (the ablation curve had no title; the
    # bars of mtp, expert_paths, run_vs_run and specialisation's repetition no y-axis title: a tour)
    for fig in _figures(nb):
        title = (fig["layout"].get("title") or {}).get("text")
        assert title, f"{name}: a figure without a title"
        if {t.get("type") for t in fig["data"]} <= {"bar", "scatter"}:
            assert ((fig["layout"].get("yaxis") or {}).get("title") or {}).get("text"), f"{name}: {title!r}: no y title"
    # a note shown only when it has something to say (an empty Markdown left a blank output under a table)
    assert all(o.data["text/markdown"].strip() for o in outs if "text/markdown" in o.get("data", {})), name
    # the conclusion is Markdown displayed by the last cell, built from computed values
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    md = [o.data["text/markdown"] for o in last.outputs if o.output_type == "display_data"
          and "text/markdown" in o.get("data", {})]
    assert md and md[0].startswith("- ") and any(ch.isdigit() for ch in md[0])


def _conclusion(nb) -> str:
    """The Markdown the notebook's last code cell displays (its computed conclusion)."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    return "\n".join(o.data["text/markdown"] for o in last.outputs if "text/markdown" in o.get("data", {}))


def _said(executed, name: str, pattern: str):
    """(the notebook `name`, run without an error; its conclusion; the groups `pattern` finds there, which
    must be there)."""
    nb, _, err = executed[name]
    assert err is None, err
    said = _conclusion(nb)
    m = re.search(pattern, said)
    assert m, said
    return nb, said, m.groups()


def _figures(nb) -> list[dict]:
    """The notebook's plotly figures, as the JSON of their MIME bundles."""
    return [o.data["application/vnd.plotly.v1+json"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "application/vnd.plotly.v1+json" in o.get("data", {})]


def test_vocabulary_specialisation_is_said_beside_its_shuffled_baseline(executed):
    """token_dependence charted and said OLMoE's vocabulary specialisation (every id counted) with nothing
    beside it: 0.83 for the input token and 0.66 for the next read as strong, where the experts shuffled
    across the same tokens score 0.47, an id seen once scoring 1 either way (a tour). It now sets the
    shuffled value (`baseline=True`, as the report) beside each, in its figure and its conclusion."""
    nb, _, got = _said(executed, "token_dependence", r"is ([\d.]+) for the input token vs ([\d.]+) for the next "
                       r"token, against ([\d.]+) and ([\d.]+) with the experts shuffled across the same tokens")
    spec_in, spec_next, base_in, base_next = map(float, got)
    assert 0 < base_in < spec_in <= 1 and 0 < base_next < spec_next <= 1, got
    bars = {t.get("name"): t for f in _figures(nb) for t in f["data"]}
    assert {"input token", "input token, experts shuffled", "next token", "next token, experts shuffled"} <= set(bars)


def test_specialisation_says_the_vocabulary_baseline_it_pointed_to(executed):
    """specialisation said a token id "goes to its most common first-choice expert 74.1% of the time" and
    sent the reader to the dashboard for what chance gives (a tour): it now computes that value itself
    (`vocabulary_specialisation_baseline`, the first choices shuffled across the same tokens, 20.9% on the
    bundled run) and says it beside the measured one."""
    _, said, got = _said(executed, "specialisation", r"goes to its most common first-choice expert ([\d.]+)% of the "
                         r"time \(mean over layers\), against ([\d.]+)% with the first choices shuffled across the "
                         r"same tokens")
    spec, base = map(float, got)
    assert 0 < base < spec <= 100, got
    assert "dashboard gives the shuffled baseline" not in said


def test_circuits_does_not_give_the_patch_that_restores_by_construction_as_its_finding(executed):
    """circuits concluded "layer 0's input at position 3 (' (') restores most: 100.0%": the first block's
    input where the prompts differ is the clean prompt itself, whole by construction, while the finding, that
    by layer 3 the bracket is read at the last position (74.4% there), went unsaid (a tour). The trivial patch
    is said as such, and the peak taken over the later blocks' inputs."""
    _, said, got = _said(executed, "circuits", r"Patching the first block's input where the prompts differ "
                         r"\(position [\d, ]+\) restores ([\d.]+)%: that is the clean prompt itself, by construction\. "
                         r"Of the later blocks' inputs, layer (\d+)'s at position \d+ \(.*\) restores most: "
                         r"(-?[\d.]+)%\.")
    assert float(got[0]) == pytest.approx(100, abs=0.05) and int(got[1]) > 0, got
    assert "Of the residual-stream patches" not in said


def test_notebooks_fit_the_time_budget():
    if len(_TIMES) < len(NAMES):
        pytest.skip("not every notebook ran in this session")
    total = sum(_TIMES.values())
    print("notebook times: " + ", ".join(f"{k} {v:.1f} s" for k, v in _TIMES.items()) + f"; total {total:.1f} s")
    assert total < BUDGET_S


def test_the_users_run_is_analysed_as_it_is_never_recorded_over(run_dir, tmp_path, monkeypatch, capsys):
    """$DSV3_NOTEBOOK_RUN naming a run that was not complete (an interrupted recording) replaced it
    with a 2,000-token run of the bundled model (found by a review)."""
    import json
    import shutil

    from analyses import notebook_utils

    mine = Path(shutil.copytree(run_dir, tmp_path / "interrupted"))
    info = json.loads((mine / "run.json").read_text())
    (mine / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    before = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    monkeypatch.setenv("DSV3_NOTEBOOK_RUN", str(mine))
    monkeypatch.setattr(notebook_utils, "record_small", lambda *a, **k: pytest.fail("must not record over it"))
    run = notebook_utils.default_run()
    assert run.status == "interrupted" and Path(run.path) == mine
    assert "is 'interrupted': the notebooks analyse the tokens recorded so far" in capsys.readouterr().out
    assert {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before


def test_notebooks_that_compare_domains_refuse_a_one_domain_run(tmp_path):
    """On a one-domain run expert_paths and specialisation crashed deep in pandas (idxmax of all-NaN)
    and steering forced "the most specialised domain's" experts, a tie among equal lifts (a review):
    they now stop in their first cell with one line saying why; ablation's per-domain sentence says
    it was not measured."""
    import nbformat

    import probe
    from analyses.metrics import MetricsError
    from analyses.notebook_utils import need_domains
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", domains=("math",))
    with pytest.raises(MetricsError, match=r"compares domains, and this run has one: math\. Record a corpus"):
        need_domains(probe.open_run(tmp_path / "one"), "this notebook (x)")
    write_run(tmp_path / "two")
    assert need_domains(probe.open_run(tmp_path / "two"), "x") == ["code", "prose"]
    for name in ("expert_paths", "specialisation", "steering"):
        first = [c for c in nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4).cells if c.cell_type == "code"][0]
        assert "need_domains(run" in first.source, name


def test_specialisation_shows_its_domain_part_on_a_run_without_routing(tmp_path):
    """specialisation refused a run recorded with --router-logits none in its first cell, its domain x
    expert part too, which reads expert_load alone (a tour): it now needs tokens and expert_load there,
    and `tables_note` says in the place of the routing parts why they were not measured."""
    import shutil

    import nbformat

    import probe
    from analyses.metrics import specialisation_table
    from analyses.notebook_utils import tables_note
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r")
    assert tables_note(probe.open_run(tmp_path / "r"), "x", "routing") is None
    shutil.rmtree(tmp_path / "r" / "routing")  # as --router-logits none records it
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {"router_logits": "none"}}))
    run = probe.open_run(tmp_path / "r")
    said = tables_note(run, "the token-level half", "routing")
    assert said.startswith(f"{run.path}: run has no routing table (the run was recorded with --router-logits none"), said
    assert said.endswith("; the token-level half reads it"), said
    assert specialisation_table(run).domain_nmi.notna().all()  # the domain part: expert_load alone
    cells = [c.source for c in nbformat.read(NB_DIR / "specialisation.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert '"tokens", "expert_load")' in cells[0] and 'tables_note(run, ' in cells[0], cells[0]
    # the cells that read routing run only with it
    assert [c for c in cells if "repetition_from_run(run)" in c][0].count("if no_routing:") == 1
    assert "no_routing or heldout_note(" in [c for c in cells if "domain_probe_from_run(run)" in c][0]


def test_latent_kv_says_its_probe_was_not_measured_without_the_runs_checkpoint(tmp_path, probe_env):
    """latent_kv's domain probe re-runs the run's windows through its checkpoint, and on a run whose checkpoint
    was gone it stopped halfway with "CheckpointError: ...: no such directory" (a tour); a changed one it would
    have probed silently. `model_note` says why in the probe's place (`need_model`'s checks), the corpus left
    unchecked: the probe reads the run's recorded tokens, not its corpus."""
    import nbformat

    import probe
    from analyses.metrics import MetricsError
    from analyses.notebook_utils import model_note, need_model
    from helpers.synthetic_run import write_run
    from probe.job import checkpoint_identity

    write_run(tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    what = "the domain probe (it hooks the latent c_kv)"

    def with_inputs(ckpt: dict, corpus: str):
        (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"checkpoint": ckpt, "corpus": {"path": corpus}}))
        return probe.open_run(tmp_path / "r")

    was = checkpoint_identity(probe_env["ckpt"])
    gone = with_inputs({"path": str(tmp_path / "gone")}, str(probe_env["corpus"]))
    assert model_note(gone, what) == (f"{gone.path}: the run's checkpoint {tmp_path / 'gone'} is no longer there; "
                                      f"{what} runs the run's checkpoint: point $DSV3_NOTEBOOK_RUN at a run whose "
                                      "checkpoint is there, or restore the files where run.json names them")
    changed = with_inputs(was | {"fingerprint": "0" * 64}, str(probe_env["corpus"]))
    assert "has changed since the run was recorded" in model_note(changed, what)
    no_corpus = with_inputs(was, str(tmp_path / "gone.txt"))
    assert model_note(no_corpus, what) is None  # its recorded tokens are what it reads
    with pytest.raises(MetricsError, match="corpus .* is no longer there"):  # where the corpus is read: refused
        need_model(no_corpus, what)
    cells = [c.source for c in nbformat.read(NB_DIR / "latent_kv.ipynb", as_version=4).cells if c.cell_type == "code"]
    probe_cell = [c for c in cells if "model.load(" in c][0]
    assert "model_note(run, " in probe_cell, probe_cell
    assert probe_cell.index("model_note(run, ") < probe_cell.index("if one:") < probe_cell.index("model.load(")


def test_a_relative_run_path_is_the_repositorys_when_not_under_the_kernels_folder(run_dir, tmp_path, monkeypatch):
    """Jupyter starts a kernel in the notebook's folder: DSV3_NOTEBOOK_RUN=runs/r1, the user's run
    under the repository root, recorded a new run in analyses/notebooks/runs/r1 and analysed that
    (a review). A relative path is the working directory's when there, else the repository's."""
    from analyses import notebook_utils

    monkeypatch.setattr(notebook_utils, "REPO", tmp_path / "repo")
    (tmp_path / "repo" / "runs").mkdir(parents=True)
    mine = tmp_path / "repo" / "runs" / "r1"
    mine.symlink_to(run_dir, target_is_directory=True)
    kernel = tmp_path / "repo" / "analyses" / "notebooks"
    kernel.mkdir(parents=True)
    monkeypatch.chdir(kernel)
    monkeypatch.setenv("DSV3_NOTEBOOK_RUN", "runs/r1")
    monkeypatch.setattr(notebook_utils, "record_small", lambda *a, **k: pytest.fail("must open the user's run"))
    assert Path(notebook_utils.default_run().path) == Path(run_dir).resolve()
    assert not (kernel / "runs").exists()
    (kernel / "here").symlink_to(run_dir, target_is_directory=True)  # under the working directory: that one
    assert notebook_utils._env_path("here") == Path(run_dir).resolve()
    assert notebook_utils._env_path("nowhere") == tmp_path / "repo" / "nowhere"  # recorded at the root
    # the run-vs-run notebook's second run reads its variable the same way (it opened the path as given)
    monkeypatch.setenv("DSV3_NOTEBOOK_COMPARE_RUN", "runs/r1")
    assert Path(notebook_utils.env_run("DSV3_NOTEBOOK_COMPARE_RUN").path) == Path(run_dir).resolve()
    monkeypatch.setenv("DSV3_NOTEBOOK_COMPARE_RUN", "")
    assert notebook_utils.env_run("DSV3_NOTEBOOK_COMPARE_RUN") is None
    source = json.loads((REPO / "analyses" / "notebooks" / "run_vs_run.ipynb").read_text())
    assert 'env_run("DSV3_NOTEBOOK_COMPARE_RUN")' in "".join("".join(c["source"]) for c in source["cells"])


def test_compare_run_refuses_a_run_without_routing_before_recording(tmp_path, monkeypatch):
    """run_vs_run recorded a whole variant run (and its checkpoint) before finding that the run had
    no routing table to compare (a review); the refusal then guessed '--router-logits none?' where
    run.json names the cause (a tour)."""
    import json

    import probe
    from analyses import notebook_utils, variants
    from analyses.metrics import MetricsError
    from helpers.synthetic_run import write_run

    import shutil

    write_run(tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "routing")  # as --router-logits none records it
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {"router_logits": "none"}}))
    run = probe.open_run(tmp_path / "r")
    assert "routing" not in run.tables and "tokens" in run.tables
    monkeypatch.setattr(variants, "without_router_bias", lambda *a, **k: pytest.fail("must not write a variant"))
    with pytest.raises(MetricsError) as e:
        notebook_utils.compare_run(run)
    said = str(e.value)
    assert "no routing table to compare (the run was recorded with --router-logits none, which keeps no " \
           "per-token routing; record it again with --router-logits topk (the default))" in said, said
    assert "?" not in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    # the advice once: the cause already says how to record the run again (it then said "record the
    # run with routing" too)
    assert said.count("record it again") == 1 and "record the run with routing" not in said, said
    assert said.endswith("(the default)), or point $DSV3_NOTEBOOK_RUN at one that has it"), said
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {}}))  # the control: no cause known
    with pytest.raises(MetricsError) as e:
        notebook_utils.compare_run(probe.open_run(tmp_path / "r"))
    assert str(e.value).endswith("(the routing table was not recorded); record the run with routing, or point "
                                 "$DSV3_NOTEBOOK_RUN at one that has it"), str(e.value)


def test_notebooks_that_compare_domains_in_part_say_so_on_a_one_domain_run(tmp_path, monkeypatch, kernel):
    """On a run of one domain latent_kv stopped halfway, in its domain probe ("a probe needs training
    tokens of two labels or more"), and mtp's conclusion named that domain both best and worst (a
    tour): both run to the end, their other figures and conclusions kept, and say plainly what was
    not measured and why."""
    import shutil

    from analyses.notebook_utils import record_small
    from helpers import make_corpus, make_probe_ckpt

    corpus = make_corpus(tmp_path / "corpus", docs_per_domain=3, scale=2)
    shutil.rmtree(corpus / "prose")  # code only
    run = record_small(tmp_path / "one", 600, ckpt=make_probe_ckpt(tmp_path / "ckpt", corpus), corpus=corpus,
                       seq_len=64)
    env = {"DSV3_NOTEBOOK_RUN": str(run), "OMP_NUM_THREADS": "1"}
    for k, v in env.items():  # for a kernel that starts here (this test alone)
        monkeypatch.setenv(k, v)
    # the kernel that ran the notebooks above, where they ran (its variables set again)
    done = {name: _execute(name, kernel, env) for name in ("latent_kv", "mtp")}
    for name, (nb, _, err) in done.items():
        assert err is None, (name, err)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outs), name
        last = [c for c in nb.cells if c.cell_type == "code"][-1]
        said = "\n".join(o.data["text/markdown"] for o in last.outputs if "text/markdown" in o.get("data", {}))
        assert "compares domains, and this run has one: code. Record a corpus with several domains" in said, said
        assert "- Not measured: " in said and "Best domain" not in said and "A linear probe reads" not in said, said
    assert "Effective rank of c_kv ranges from" in "".join(
        o.data.get("text/markdown", "") for o in [c for c in done["latent_kv"][0].cells if c.cell_type == "code"][-1].outputs)
