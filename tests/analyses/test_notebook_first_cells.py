"""Each notebook's first cell, run in this process (no kernel: a few milliseconds a notebook), on runs
that lack what the notebook reads: an SGLang import (no checkpoint, corpus, MTP or latent-KV; a stat
dump has no tokens or routing either) and a record run of only some tables. The notebook stops there
with one line naming what the run lacks; on such runs ablation and run_vs_run raised a KeyError on
'checkpoint' from their second cell and inside compare_run, causal_importance advised `--ckpt`, and
latent_kv, mtp, token_dependence and expert_paths stopped in a later cell (a tour); specialisation opens a
run without routing (its domain part reads expert_load), and latent_kv one without kv_stats where its probe can
run, and say what they leave out. And a notebook that
reads only the run's tables, run whole in this process on a run too small for one of its charts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analyses.metrics import MetricsError

NB_DIR = Path(__file__).resolve().parents[2] / "analyses" / "notebooks"
MODEL = ("ablation", "causal_importance", "steering", "run_vs_run")  # run the run's checkpoint on its corpus


def first_cell(name: str, run: Path, monkeypatch, compare: Path | None = None) -> dict:
    """Run notebook `name`'s first code cell on `run` ($DSV3_NOTEBOOK_RUN; `compare`:
    $DSV3_NOTEBOOK_COMPARE_RUN), returning its namespace."""
    cells = json.loads((NB_DIR / f"{name}.ipynb").read_text())["cells"]
    source = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    monkeypatch.setenv("DSV3_NOTEBOOK_RUN", str(run))
    monkeypatch.setenv("DSV3_NOTEBOOK_COMPARE_RUN", str(compare or ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell's setdefault, undone after the test
    space: dict = {}
    exec(compile(source, f"{name}.ipynb", "exec"), space)  # noqa: S102 - the repository's own notebook
    return space


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    """SGLang imports of the tiny model's traffic: a stat dump (loads only) and a per_token dump."""
    from helpers import sglang_dumps as sg
    from probe.sglang import import_sglang

    base = tmp_path_factory.mktemp("nb_imports")
    passes, config = sg.traffic(seed=1), sg.config(base / "model")
    stat = import_sglang(sg.write_stat(base / "stat", passes), base / "run-stat", config=str(config))
    m = sg.physical_map(redundant=4)
    per_token = import_sglang(sg.write_per_token(base / "per_token", passes, m)[0].parent, base / "run-per-token",
                              config=str(config))
    return {"stat": Path(stat), "per_token": Path(per_token)}


@pytest.mark.parametrize("kind", ["stat", "per_token"])
@pytest.mark.parametrize("name", MODEL)
def test_a_notebook_that_runs_the_checkpoint_stops_first_on_an_import(imports, kind, name, monkeypatch):
    with pytest.raises(MetricsError) as e:
        first_cell(name, imports[kind], monkeypatch)
    said = str(e.value)
    assert said.startswith(f"{imports[kind]}: ") and "\n" not in said, said
    if name == "run_vs_run" and kind == "stat":  # compare_run's own first refusal: nothing to compare
        assert said.startswith(f"{imports[kind]}: no routing table to compare (imported from a sglang stat dump"), said
        return
    assert "runs the run's checkpoint on its corpus, and this run is an import (sglang) with neither; point " \
           "$DSV3_NOTEBOOK_RUN at a run recorded with `dsv3-probe record`" in said, said
    assert "--ckpt" not in said, said  # a notebook has no flags


@pytest.mark.parametrize("name, table, cause", [
    ("latent_kv", "kv_stats", "an import (sglang) holds no kv_stats table"),
    ("mtp", "mtp", "an import (sglang) holds no mtp table"),
    ("token_dependence", "tokens", "imported from a sglang stat dump, which holds loads per forward pass only"),
    ("expert_paths", "tokens", "imported from a sglang stat dump, which holds loads per forward pass only"),
    ("specialisation", "tokens", "imported from a sglang stat dump, which holds loads per forward pass only"),
])
def test_a_notebook_stops_first_naming_the_table_a_stat_import_lacks(imports, name, table, cause, monkeypatch):
    with pytest.raises(MetricsError) as e:
        first_cell(name, imports["stat"], monkeypatch)
    said = str(e.value)
    assert said.startswith(f"{imports['stat']}: run has no {table} table ({cause}") and "\n" not in said, said
    assert said.endswith(") reads it"), said


def test_the_loads_of_an_import_are_enough_for_load_balance(imports, monkeypatch):
    """The control: what a stat import does hold opens the notebook that reads only it."""
    assert str(first_cell("load_balance", imports["stat"], monkeypatch)["run"].path) == str(imports["stat"])


@pytest.fixture
def some_tables(tmp_path):
    """A record run of only some tables: --router-logits none --no-mtp --no-kv-stats (tokens, expert_load)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "some")
    shutil.rmtree(tmp_path / "some" / "routing")
    info = json.loads((tmp_path / "some" / "run.json").read_text())
    info |= {"options": {"router_logits": "none", "mtp": False, "kv_stats": False}}
    (tmp_path / "some" / "run.json").write_text(json.dumps(info))
    return tmp_path / "some"


@pytest.mark.parametrize("name, said", [
    ("latent_kv", "run has no kv_stats table (the run was recorded with --no-kv-stats); this notebook (the latent KV "
                  "cache's statistics) reads it"),
    ("mtp", "run has no mtp table (the run was recorded with --no-mtp); this notebook (MTP agreement) reads it"),
    ("token_dependence", "run has no routing table (the run was recorded with --router-logits none"),
    ("expert_paths", "run has no routing table (the run was recorded with --router-logits none"),
])
def test_a_notebook_stops_first_naming_the_table_a_record_left_out(some_tables, name, said, monkeypatch):
    with pytest.raises(MetricsError) as e:
        first_cell(name, some_tables, monkeypatch)
    assert str(e.value).startswith(f"{some_tables}: {said}"), str(e.value)


def test_latent_kv_opens_a_run_without_kv_stats_where_its_probe_can_run(some_tables, probe_env, monkeypatch):
    """latent_kv stopped here on a run recorded with --no-kv-stats, though its domain probe hooks the latent
    itself through the run's checkpoint (a tour): with that checkpoint there it opens the run and says the
    statistics were not measured (`no_stats`); without it (above) it still stops, having nothing to show."""
    from probe.job import checkpoint_identity

    info = json.loads((some_tables / "run.json").read_text())
    info |= {"checkpoint": checkpoint_identity(probe_env["ckpt"]), "corpus": {"path": str(probe_env["corpus"])}}
    (some_tables / "run.json").write_text(json.dumps(info))
    space = first_cell("latent_kv", some_tables, monkeypatch)
    assert space["no_stats"] == (f"{some_tables}: run has no kv_stats table (the run was recorded with --no-kv-stats); "
                                 "the statistics half of this notebook (effective rank, spectrum, cache cost) reads it")


def test_specialisation_opens_a_run_without_routing_saying_what_it_leaves_out(some_tables, monkeypatch):
    """specialisation stopped here on a run recorded with --router-logits none, though its domain x expert
    part reads expert_load alone (a tour): it opens the run, and its routing parts show `no_routing`."""
    space = first_cell("specialisation", some_tables, monkeypatch)
    assert str(space["run"].path) == str(some_tables)
    assert space["no_routing"].startswith(f"{some_tables}: run has no routing table (the run was recorded with "
                                          "--router-logits none"), space["no_routing"]
    assert space["no_routing"].endswith("(token ids, adjacent tokens, the domain probe) reads it"), space["no_routing"]


def test_a_run_that_names_no_checkpoint_is_refused_for_the_notebooks_that_run_one(some_tables, monkeypatch):
    """A run.json without checkpoint and corpus paths (a hand-made run): the ablation notebook raised a
    KeyError on 'checkpoint'."""
    with pytest.raises(MetricsError, match=r"run\.json names no checkpoint and no corpus; point \$DSV3_NOTEBOOK_RUN"):
        first_cell("ablation", some_tables, monkeypatch)


@pytest.mark.parametrize("name, part", [
    ("ablation", "this notebook (ablations on the run's checkpoint)"),
    ("causal_importance", "this notebook (each expert removed from the run's checkpoint)"),
])
def test_a_run_whose_checkpoint_or_corpus_is_gone_or_changed_is_refused_in_a_notebooks_words(
        some_tables, probe_env, name, part, monkeypatch):
    """`probe.job.run_inputs`' refusals reached the notebooks with its command-line advice ("pass --ckpt
    ...", a flag a notebook has none of) and without the part that needs the model (a tour)."""
    from probe.job import checkpoint_identity

    info = json.loads((some_tables / "run.json").read_text())
    was, corpus = checkpoint_identity(probe_env["ckpt"]), str(probe_env["corpus"])
    other = "point $DSV3_NOTEBOOK_RUN at a run"
    for inputs, said, advice in [
        ({"checkpoint": {"path": str(some_tables / "gone")}, "corpus": {"path": corpus}},
         f"the run's checkpoint {some_tables / 'gone'} is no longer there",
         f"{other} whose checkpoint is there, or restore the files where run.json names them"),
        ({"checkpoint": was | {"fingerprint": "0" * 64}, "corpus": {"path": corpus}},
         f"the checkpoint at {was['path']} has changed since the run was recorded",
         f"{other} recorded on this checkpoint, or restore the checkpoint the run was recorded with"),
        ({"checkpoint": was, "corpus": {"path": str(some_tables / "gone.txt")}},
         f"the run's corpus {some_tables / 'gone.txt'} is no longer there",
         f"{other} whose corpus is there, or restore the files where run.json names them")]:
        (some_tables / "run.json").write_text(json.dumps(info | {"planned": {}} | inputs))
        with pytest.raises(MetricsError) as e:
            first_cell(name, some_tables, monkeypatch)
        assert str(e.value).startswith(f"{some_tables}: {said}"), str(e.value)
        assert str(e.value).endswith(f"; {part} runs the run's checkpoint on its corpus: {advice}"), str(e.value)
        assert "pass --" not in str(e.value), str(e.value)  # no flag: a notebook has none
    (some_tables / "run.json").write_text(json.dumps(info | {"planned": {}, "checkpoint": was,
                                                             "corpus": {"path": corpus}}))
    assert "run" in first_cell("ablation", some_tables, monkeypatch)  # the control: both there, as recorded


@pytest.mark.parametrize("name, part", [
    ("steering", "this notebook (steering the run's checkpoint)"),
    ("causal_importance", "this notebook (each expert removed from the run's checkpoint)"),
    ("ablation", "this notebook (ablations on the run's checkpoint)"),
    ("circuits", "this notebook (the run's checkpoint, hooked)"),
])
def test_a_run_whose_tokenizer_is_gone_or_changed_is_refused_in_a_notebooks_words(
        some_tables, probe_env, name, part, monkeypatch):
    """A run recorded with --tokenizer, the file moved or edited since: the first cell let it by, and the
    notebook's job refused it in a later cell with "pass --tokenizer", a flag a notebook has none of (a tour)."""
    from analyses.ablate import AblateOptions, AblationError
    from analyses.ablate.inputs import job_defaults
    from probe.corpus import fingerprint
    from probe.job import checkpoint_identity

    info = json.loads((some_tables / "run.json").read_text())
    tok = some_tables.parent / "tok.json"
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", tok)
    base = info | {"planned": {}, "checkpoint": checkpoint_identity(probe_env["ckpt"]),
                   "corpus": {"path": str(probe_env["corpus"])},
                   "options": info["options"] | {"tokenizer": "tok.json"}}
    other = "point $DSV3_NOTEBOOK_RUN at a run"
    for recorded, said, advice in [
        ({"path": str(some_tables / "gone.json")}, f"the run's tokenizer {some_tables / 'gone.json'} is no longer there",
         f"{other} whose tokenizer is there, or restore the files where run.json names them"),
        ({"path": str(tok), "fingerprint": "0" * 64}, f"the run's tokenizer {tok} has changed since the run was recorded",
         f"{other} recorded on this tokenizer, or restore the tokenizer the run was recorded with")]:
        (some_tables / "run.json").write_text(json.dumps(base | {"tokenizer": recorded}))
        with pytest.raises(MetricsError) as e:
            first_cell(name, some_tables, monkeypatch)
        assert str(e.value).startswith(f"{some_tables}: {said}"), str(e.value)
        assert str(e.value).endswith(f"; {part} runs the run's checkpoint on its corpus, read with the tokenizer it "
                                     f"was recorded with: {advice}"), str(e.value)
        assert "pass --" not in str(e.value), str(e.value)  # no flag: a notebook has none
    (some_tables / "run.json").write_text(json.dumps(base | {"tokenizer": {"path": str(some_tables / "gone.json")}}))
    # what the notebook's later cells run reads the corpus with it: the ablation's sweep (`ablate --run`) too,
    # which the first cell let by (a review)
    with pytest.raises(AblationError, match="no longer there; pass --tokenizer"):
        job_defaults(AblateOptions(run=str(some_tables)))
    (some_tables / "run.json").write_text(json.dumps(base | {"tokenizer": {"path": str(tok),
                                                                          "fingerprint": fingerprint(tok)}}))
    assert "run" in first_cell(name, some_tables, monkeypatch)  # the control: there, as recorded


def test_circuits_reads_its_prompt_with_the_tokenizer_the_run_was_recorded_with(probe_env, tmp_path, monkeypatch):
    """The circuits notebook loaded the checkpoint's tokenizer.json, not the run's --tokenizer, where the other
    notebooks take the run's (a review): its prompt's tokens were another tokenizer's ids and texts."""
    from tokenizers import Tokenizer

    from probe.record import RecordOptions, record
    from probe.token_text import token_strings

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    tok = tmp_path / "tok.json"
    shutil.copy(ckpt / "tokenizer.json", tok)
    spec = json.loads(tok.read_text())  # the checkpoint's now another tokenizer: the ids of "x" and "(" swapped
    vocab = spec["model"]["vocab"]
    vocab["x"], vocab["("] = vocab["("], vocab["x"]
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), tokenizer=str(tok), out=str(tmp_path / "run"),
                         seq_len=32, max_tokens=100, progress=False))
    cells = [c for c in json.loads((NB_DIR / "circuits.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    monkeypatch.setenv("DSV3_NOTEBOOK_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space: dict = {}
    for cell in cells[:2]:  # the run, then the model and the prompt's tokens
        exec(compile("".join(cell["source"]), "circuits.ipynb", "exec"), space)  # noqa: S102
    run_tok, ckpt_tok = Tokenizer.from_file(str(tok)), Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert space["codec"].tokenizer.to_str() == run_tok.to_str() != ckpt_tok.to_str()
    ids = space["clean"][0].tolist()[space["codec"].bos_id is not None:]  # BOS aside
    prompt = "x = (1, 2, 3)"
    assert ids == run_tok.encode(prompt).ids[:-1] != ckpt_tok.encode(prompt).ids[:-1]
    assert space["tokens"][-len(ids):] == token_strings(run_tok, ids) and space["tokens"][-len(ids)] == "x"
    from generate import GenerateError, load_codec

    with pytest.raises(GenerateError, match=f"^{tmp_path / 'gone.json'}: no tokenizer file there$"):
        load_codec(ckpt, tokenizer=tmp_path / "gone.json")  # not the checkpoint's in its place


def all_cells(name: str, run: Path, monkeypatch) -> tuple[list, list[str]]:
    """Run every code cell of notebook `name` on `run` in this process: (the figures it showed, the
    Markdown it displayed). For a notebook that reads the run's tables only (no model, no kernel)."""
    import IPython.display
    import plotly.basedatatypes

    figures, shown = [], []
    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", lambda fig, *a, **k: figures.append(fig))
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **k: shown.extend(
        o.data for o in objs if isinstance(o, IPython.display.Markdown)))
    cells = json.loads((NB_DIR / f"{name}.ipynb").read_text())["cells"]
    monkeypatch.setenv("DSV3_NOTEBOOK_RUN", str(run))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space: dict = {}
    for cell in (c for c in cells if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{name}.ipynb", "exec"), space)  # noqa: S102
    return figures, shown


def one_batch(run: Path) -> Path:
    """`run` with every expert_load row moved to batch (step) 0, as a run of fewer windows than a batch holds."""
    import pyarrow.parquet as pq

    for part in (run / "expert_load").rglob("*.parquet"):
        t = pq.read_table(part)
        i = t.schema.get_field_index("step")
        pq.write_table(t.set_column(i, t.schema.field(i), [[0] * len(t)]), part)
    return run


def test_load_balance_on_one_batch_draws_no_batch_chart_and_claims_no_batch_to_batch_finding(tmp_path, monkeypatch):
    """A run of one batch (300 tokens, under --batch-size windows) got a "MaxVio per batch" chart of one
    point a layer and the conclusion "about what sampling explains, so the same experts stay hot from
    batch to batch", which one batch cannot show (a tour)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "two")
    figures, said = all_cells("load_balance", tmp_path / "two", monkeypatch)  # the control: two batches
    assert "MaxVio per batch" in [f.layout.title.text for f in figures]
    assert "- Per batch, MaxVio averages" in said[-1], said
    write_run(tmp_path / "one")
    figures, said = all_cells("load_balance", one_batch(tmp_path / "one"), monkeypatch)
    assert [f.layout.title.text for f in figures] == ["Relative expert load per MoE layer"]
    assert said[0] == "**Not measured.** The run holds 1 batch: no batch-to-batch change to chart.", said
    assert "- Per batch: not measured. The run holds 1 batch (a forward pass), so whether the same experts stay " \
           "hot from batch to batch cannot be told" in said[-1], said
    assert "from batch to batch." not in said[-1] and "hot experts change" not in said[-1], said
    assert "- On 4 GPU(s) with 4 redundant slot(s), EPLB-style placement" in said[-1], said  # the rest still said


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_ablation_on_one_domain_draws_no_domain_table(tmp_path, monkeypatch):
    """On a run of one domain the ablation notebook drew "Loss delta: rows evaluated domain, columns domain
    whose top experts are masked" as one cell, the domain's own experts on itself (what the top-used curve
    measures already), beside a conclusion that says per-domain masking was not measured (a tour)."""
    import shutil

    from analyses.notebook_utils import record_small
    from helpers import make_corpus, make_probe_ckpt

    corpus = make_corpus(tmp_path / "corpus", docs_per_domain=2, scale=1)
    shutil.rmtree(corpus / "prose")  # code only
    run = record_small(tmp_path / "one", 200, ckpt=make_probe_ckpt(tmp_path / "ckpt", corpus), corpus=corpus,
                       seq_len=32, kv_stats=False, mtp=False)
    monkeypatch.setenv("DSV3_NOTEBOOK_ABLATION_TOKENS", "100")
    figures, said = all_cells("ablation", run, monkeypatch)
    assert not [f for f in figures if "masked domain" in (f.layout.xaxis.title.text or "")]
    assert len(figures) == 1 and figures[0].data[0].name == "top-used masked"  # the curve is still drawn
    assert "**Not measured.** The domain x masked-domain table compares domains, and this run has one: code." in said[0]
    assert "- Per-domain masking: not measured" in said[-1], said


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_domain_of_one_window_is_left_out_of_the_held_out_scores_and_named(tmp_path, monkeypatch):
    """A capped run (2,000 tokens of five domains) had domains of one window, which the held-out split
    (every 5th window of each domain, its first included) holds out whole: the probes were scored on
    domains they never trained on, and specialisation's conclusion read "a linear probe reads the domain
    ... 50.2% to 57.3%" (a tour). The scores leave such a domain out and the notebooks name it; with
    fewer than two domains left to train on the probe says why it is not measured, and expert_paths,
    whose question it is, stops in its first cell."""
    from analyses.metrics import domain_probe_from_run, left_out_note
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "left", n_seq=5, domains=("code", "prose", "web"))  # web: window 2 only
    note = left_out_note(["web"])
    figures, said = all_cells("specialisation", tmp_path / "left", monkeypatch)
    probes = domain_probe_from_run(tmp_path / "left")
    assert note in said and f"held-out accuracy {probes.accuracy[probes.unit != 'all layers'].min():.1%}" in said[-1]
    assert said[-1].endswith(f"shuffled domains. {note}"), said[-1]
    assert [f for f in figures if "held-out accuracy" in (f.layout.title.text or "")]
    _, said = all_cells("expert_paths", tmp_path / "left", monkeypatch)
    assert note in said and said[-1].endswith(f"\n- {note}"), said[-1]
    write_run(tmp_path / "thin", n_seq=3)  # code: windows 0 and 2; prose: window 1 only
    figures, said = all_cells("specialisation", tmp_path / "thin", monkeypatch)
    why = ("The domain probe holds out one window in five of each domain, and prose has one window only: held out "
           "whole and never trained on, which leaves 1 domain to train on, and it needs two. Record more tokens "
           "(two windows of every domain), or point $DSV3_NOTEBOOK_RUN at such a run")
    assert f"**Not measured.** {why}." in said, said
    assert f"- Not measured: {why}." in said[-1] and "A linear probe reads" not in said[-1], said[-1]
    assert "Domain information in the expert choice" in said[-1]  # what needs no held-out window is still said
    assert not [f for f in figures if "held-out accuracy" in (f.layout.title.text or "")]
    with pytest.raises(MetricsError, match=r"thin: this notebook \(the domain predicted from held-out windows' "
                                           r"paths\) holds out one window in five of each domain, and prose has one"):
        first_cell("expert_paths", tmp_path / "thin", monkeypatch)
    write_run(tmp_path / "two", n_seq=4)  # the control: two windows of each domain
    figures, said = all_cells("specialisation", tmp_path / "two", monkeypatch)
    assert "A linear probe reads the domain" in said[-1] and "Not measured" not in said[-1], said[-1]
    assert "Left out" not in " ".join(said)
    assert first_cell("expert_paths", tmp_path / "two", monkeypatch)["run"]


def test_latent_kv_opens_a_run_whose_every_layer_diverged(tmp_path, monkeypatch):
    """A diverged checkpoint's latents hold NaN: the record writes kv_stats rows of NaN rank and no
    kv_spectrum row for such a layer (probe/stats.py), which latent_summary says ("No layer has finite
    latents"). The first cell asked kv_spectrum for rows too, and stopped such a run as one whose
    "kv_spectrum table is empty", as if it were not recorded, where the run's other cells and the
    summary read it."""
    import warnings
    from types import SimpleNamespace

    import torch

    from analyses.notebook_utils import latent_summary
    from helpers.synthetic_run import write_run
    from probe.record_tables import write_kv_tables
    from probe.stats import KVAccumulator

    write_run(tmp_path / "nan")
    acc = KVAccumulator([1, 2], 4)
    for i in range(2):
        acc.add(i, torch.full((3, 4), float("nan")), torch.ones(3, 2))
    args = SimpleNamespace(dtype="bfloat16", kv_lora_rank=4, qk_rope_head_dim=2, n_heads=2, qk_head_dim=6,
                           v_head_dim=4, dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "latent c_kv held NaN or inf values": the case itself
        write_kv_tables(tmp_path / "nan", acc, args)
    space = first_cell("latent_kv", tmp_path / "nan", monkeypatch)
    run = space["run"]
    assert len(run.df("kv_stats")) == 2 and len(run.df("kv_spectrum")) == 0
    from analyses.report import latent_rank

    said = latent_summary(latent_rank(run), run.df("kv_stats"))
    assert "Layers 1, 2: non-finite latents" in said and "No layer has finite latents" in said, said


def test_token_dependence_names_a_domain_left_out_of_its_held_out_scores(tmp_path, monkeypatch):
    """The token-id predictors leave a domain of one window out of training and scoring (`left_out`), which
    the report and the dashboard name beside their accuracies; the notebook printed the same accuracies
    without a word of it."""
    from analyses.metrics import left_out_note
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "left", n_seq=5, domains=("code", "prose", "web"))  # web: window 2 only
    note = left_out_note(["web"])
    _, said = all_cells("token_dependence", tmp_path / "left", monkeypatch)
    assert note in said and said[-1].endswith(f"\n- {note}"), said
    write_run(tmp_path / "two", n_seq=6, domains=("code", "prose", "web"))  # the control: two windows of each
    _, said = all_cells("token_dependence", tmp_path / "two", monkeypatch)
    assert "Left out" not in " ".join(said) and "One token of context adds" in said[-1], said
