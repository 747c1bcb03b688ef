"""A function run in a process forked from the test's own: for the tests whose subject is a process
(killed at a known point, or two at once) but not a fresh interpreter, which costs ~2-3 s of CPU to
import torch and the project again (a `python -c` of train's, 4.4 s of CPU against 1.6 s of training;
2-core EPYC, 2026-12-06). A forked child has them already."""

from __future__ import annotations

import multiprocessing

import torch


def _child(fn, args) -> None:
    # GNU OpenMP's pool is not carried over a fork: a parallel region of more than one thread in the child
    # can wait for ever on the parent's workers (torch's DataLoader workers take one thread too)
    torch.set_num_threads(1)
    fn(*args)


def forked(fn, *args, timeout: float = 300) -> int:
    """`fn(*args)` in a forked child; its exit code as subprocess gives it (-N: killed by signal N). Its
    output and a traceback go to the test's captured output."""
    p = multiprocessing.get_context("fork").Process(target=_child, args=(fn, args))
    p.start()
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise TimeoutError(f"{fn.__name__}{args!r}: still running after {timeout} s (killed)")
    return p.exitcode
