"""Claims of the README's prose that the code can answer cheaply: which jobs take a flag, which
modules the folder table names, the signatures it writes out. A job or a module added without the
README saying so, or a default changed under it, fails here."""

import argparse
import importlib
import re


from helpers import REPO

README = (REPO / "README.md").read_text()


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def _jobs_with(flag: str) -> set[str]:
    """The commands (as the README writes them) whose parser has `flag`: dsv3-probe's subcommands and
    the analyses' `python -m` jobs."""
    from probe.__main__ import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {f"dsv3-probe {name}" for name, p in sub.choices.items() if flag in _flags(p)}
    for job in ("ablate", "importance", "steer", "report"):
        if flag in _flags(importlib.import_module(f"analyses.{job}.__main__").parser()):
            found.add(f"python -m analyses.{job}")
    return found


def test_the_jobs_named_as_taking_model_parallel_are_those_that_do():
    sentence = re.search(r"\n\n(`dsv3-probe record`(?:(?!\n\n).)*?)take `--model-parallel M`", README, re.S)
    assert sentence, "the README's sentence on the jobs that take --model-parallel is gone"
    named = set(re.findall(r"`([^`]+)`", sentence.group(1)))
    assert named == _jobs_with("--model-parallel")


def _named(row: str, folder: str, name: str) -> bool:
    return f"`{name}`" in row or f"`{folder}/{name}`" in row


def _table_row(folder: str) -> str:
    row = re.search(rf"^\| `{folder}/` \|.*$", README, re.M)
    assert row, f"the folder table has no row for {folder}/"
    return row.group(0)


def test_the_folder_table_names_every_module():
    """Each module of the flat packages, each page of docs/ and each entry of analyses/ is named in
    its folder's row (as `name.py` or `folder/name.py`)."""
    missing = []
    modules = [(f, "*.py") for f in ("model", "generate", "train", "probe", "dashboards")]
    for folder, pattern in modules + [("docs", "*.md")]:
        row = _table_row(folder)
        missing += [f"{folder}/{f.name}" for f in sorted((REPO / folder).glob(pattern))
                    if f.name not in ("__init__.py", "__main__.py") and not _named(row, folder, f.name)]
    row = _table_row("analyses")
    missing += [f"analyses/{f.name}" for f in sorted((REPO / "analyses").iterdir())
                if not f.name.startswith(("_", ".")) and f.suffix in (".py", "")
                and not _named(row, "analyses", f.name + ("/" if f.is_dir() else ""))]
    assert missing == []


def test_the_commands_named_as_a_packages_main_are_packages_with_one():
    """The commands the README names as "the `__main__.py` of its package" are packages that have one
    (a command that is a single module's `main`, such as `analyses.variants`, is said apart)."""
    listed = re.search(r"every command is the `__main__.py` of its package\s*\(([^)]*)\)", README)
    assert listed, "the README's sentence on where the commands live is gone"
    modules = re.findall(r"`python -m ([\w.]+)`", listed.group(1))
    assert {"model", "probe", "analyses.report"} <= set(modules)  # the list was read whole
    assert [m for m in modules if not (REPO / m.replace(".", "/") / "__main__.py").is_file()] == []


_CALL = re.compile(r"`((?:model|generate|probe|analyses)(?:\.\w+)+)\(([^`]*)\)`")


def _arguments(text: str) -> list[str]:
    """A call's arguments as written, split at the commas outside brackets."""
    out, depth, word = [], 0, ""
    for ch in text:
        depth += ch in "([{" and 1 or ch in ")]}" and -1 or 0
        if ch == "," and depth == 0:
            out.append(word.strip())
            word = ""
        else:
            word += ch
    return [w for w in out + [word.strip()] if w]


def signature_problems(readme: str) -> list[str]:
    """The README's signatures of our functions (`model.load(path, *, dtype=None, ...)`) against the
    code: every keyword it names is a parameter, and a default it writes as a literal is the default."""
    import ast
    import inspect

    problems = []
    for m in _CALL.finditer(readme):
        module, name = m.group(1).rsplit(".", 1)
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        loose = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for arg in _arguments(m.group(2)):
            key, eq, written = (s.strip() for s in arg.partition("="))
            if not eq or not key.isidentifier():
                continue  # positional (named as the prose likes), `*`, `...`
            if key not in params:
                problems += [] if loose else [f"{m.group(1)}: no parameter {key}"]
                continue
            try:
                value = ast.literal_eval(written)
            except (ValueError, SyntaxError):
                continue  # `max_new_tokens=` (a value of yours), `sampling=SamplingParams(...)`
            if value != params[key].default:
                problems.append(f"{m.group(1)}: {key}={written}, but its default is {params[key].default!r}")
    return problems


def test_the_signatures_the_readme_writes_are_the_code_s():
    assert len(_CALL.findall(README)) >= 4  # model.load, model.save, generate.generate, ablate.ablated
    assert signature_problems(README) == []


def test_a_signature_out_of_date_is_named():
    """Negative control: a default changed and a keyword renamed, in a page of its own."""
    page = ('`model.load(path, *, dtype=None, attn_impl="naive")` and\n'
            '`model.save(m, dir, *, fp8=False, max_shard=None)`; `generate.generate(model, prompts, max_new_tokens=)`')
    assert signature_problems(page) == ["model.load: attn_impl=\"naive\", but its default is 'absorb'",
                                        "model.save: no parameter max_shard"]


def test_each_claim_that_drafts_leave_greedy_output_alone_names_float32():
    """Greedy MTP drafts leave the output as plain greedy decoding makes it in float32 only: in bfloat16
    a 2-token verify pass rounds differently from a 1-token step (3 of the bundled model's 64 default
    spec prompts continued differently, 2026-12-07). `spec`'s help and the README's spec paragraph said
    it without the dtype, though spec takes --dtype bfloat16 (a tour)."""
    import generate
    import probe.speculative

    claim = re.compile(r"greedy output (?:is the same|equals|is identical)", re.I)
    for where, text in (("README.md", README), ("dsv3-probe spec --help", probe.speculative.__doc__),
                        ("generate's docstring", generate.__doc__)):
        found = [m.start() for m in claim.finditer(text)]
        assert found, f"{where}: the claim is gone (update this test)"
        for at in found:
            said = " ".join(text[at:at + 100].split())  # the claim and its qualifier
            assert "float32" in said, f"{where}: {said!r}"
