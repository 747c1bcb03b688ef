"""Claims of the README's prose that the code can answer cheaply: which jobs take a flag. A job
given the flag without the README saying so fails here."""

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
