"""The tests' torchrun launches through their zygote (helpers/zygote.py): torchrun's own behaviour (its
exit status and report, the other rank stopped when one fails), the client's streams, directory and
environment, signals forwarded, and no process left behind by a killed client or an ended pytest
process. The workers (tests/workers/zygote_worker.py) import no torch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import zygote
from helpers.processes import TORCHRUN, worker_pids

pytestmark = pytest.mark.slow  # torchrun launches

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(ROOT / "tests" / "workers" / "zygote_worker.py")


def _launch(mode: str, cwd: Path, popen: bool = False, script: str = WORKER, **env: str):
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", script, mode]
    kw = dict(cwd=cwd, env=os.environ | env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(cmd, **kw) if popen else subprocess.run(cmd, timeout=120, **kw)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(pids) -> list[int]:
    """Those of `pids` that still run (neither gone nor a zombie)."""
    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return [pid for pid in pids if alive(pid)]


def _workers(launch: int, cwd: Path) -> dict[int, int]:
    """{RANK: pid} of the launch's two workers, once both have said where they run."""
    deadline = time.time() + 60
    while len(list(cwd.glob("r*.ready"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    pids = worker_pids(launch)
    assert sorted(pids) == [0, 1], pids
    return pids


def _forked(cwd: Path) -> list[int]:
    """The pids the launch's workers wrote in their `rR.ready` (the processes forked from the zygote,
    where worker_pids finds their clients)."""
    return [int(p.read_text()) for p in sorted(cwd.glob("r*.ready"))]


def _gone(pids, within: float = 30) -> list[int]:
    """Those of `pids` still running after `within` seconds."""
    deadline = time.time() + within
    while _running(pids) and time.time() < deadline:
        time.sleep(0.02)
    return _running(pids)


def test_a_launch_is_torchruns_forked_by_the_zygote(tmp_path):
    """The launcher is the zygote's child, in the client's directory and environment, its workers'
    output on the client's pipes; a failing rank ends the launch as torchrun ends it: the other rank
    stopped by SIGTERM, exit status 1, torchrun's report naming the root cause."""
    p = _launch("sleep", tmp_path, popen=True, DSV3_TEST_WORKER_SAYS="hello")
    clients = _workers(p.pid, tmp_path)
    launcher = _parent(clients[0])
    assert launcher != p.pid and _parent(launcher) == zygote._zygote["proc"].pid
    # each worker is the zygote's child too, its client (what torchrun started) the launcher's
    workers = _forked(tmp_path)
    assert {_parent(w) for w in workers} == {zygote._zygote["proc"].pid} and not set(workers) & set(clients.values())
    p.send_signal(signal.SIGINT)  # forwarded to the launcher, which stops its workers and raises
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "SignalException: Process %d got signal: 2" % launcher in err, err[-2000:]
    assert sorted(out.splitlines()) == [f"rank {r}: {tmp_path} hello" for r in (0, 1)]
    p = _launch("fail", tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Root Cause (first observed failure):" in p.stderr and "exitcode  : 3 " in p.stderr
    assert "exitcode  : -15 " in p.stderr and "(SIGTERM)" in p.stderr, p.stderr[-2000:]


def test_a_killed_client_takes_its_launcher_and_workers_with_it(tmp_path):
    """The launch's client killed: its launcher, the workers' clients and the workers go. A worker's
    client killed (as a test kills a rank): its worker goes, and torchrun reports that rank's SIGKILL."""
    p = _launch("sleep", tmp_path, popen=True)
    workers = list(_workers(p.pid, tmp_path).values())
    launcher = _parent(workers[0])
    p.kill()
    p.communicate(timeout=60)
    assert not _gone([launcher, *workers, *_forked(tmp_path)])
    for ready in tmp_path.glob("r*.ready"):
        ready.unlink()
    p = _launch("sleep", tmp_path, popen=True)
    clients, forked = _workers(p.pid, tmp_path), _forked(tmp_path)
    os.kill(clients[1], signal.SIGKILL)
    assert not _gone([forked[1]], within=10)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "exitcode  : -9 (pid: %d)" % clients[1] in err, err[-2000:]
    assert not _gone(forked)


def test_a_forked_worker_is_what_a_fresh_interpreter_would_be(tmp_path):
    """What a worker sees of its interpreter (arguments, path, streams, signals, torch's threads from
    $OMP_NUM_THREADS, a temporary folder from $TMPDIR, its own session, none of the project imported)
    is the same forked from the zygote as in a fresh interpreter (DSV3_TEST_EXEC_WORKERS=1), and each
    worker draws its own random numbers. The script is given by a relative path: its directory leads
    sys.path, argv[0] is as given and __file__ absolute."""
    env = dict(OMP_NUM_THREADS="1", PYTHONPATH=f"extra{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TMPDIR=str(tmp_path))
    (tmp_path / "sub").mkdir()
    shutil.copy(WORKER, tmp_path / "sub" / "w.py")
    seen = {}
    for how in ("0", "1"):
        p = _launch("fresh", tmp_path, script="sub/w.py", DSV3_TEST_EXEC_WORKERS=how, **env)
        assert p.returncode == 1 and "exitcode  : 4 " in p.stderr, p.stderr[-2000:]
        ranks = sorted((json.loads(line) for line in p.stdout.splitlines()), key=lambda r: r["rank"])
        draws = [r.pop("random") for r in ranks]
        assert len(ranks) == 2 and draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]
        parents = {r.pop("parent") for r in ranks}
        assert (parents == {zygote._zygote["proc"].pid}) == (how == "0"), (how, parents)
        seen[how] = [r | {"pid": None} for r in ranks]
    assert seen["0"] == seen["1"], [(k, a[k], b[k]) for a, b in zip(*seen.values()) for k in a if a[k] != b.get(k)]
    assert seen["0"][0]["threads"] == 1 and seen["0"][0]["path"] == [str(tmp_path / "sub"), str(tmp_path / "extra")]
    assert seen["0"][0]["argv"] == ["sub/w.py", "fresh"] and seen["0"][0]["file"] == str(tmp_path / "sub" / "w.py")


def test_the_zygote_ends_with_its_pytest_process_and_its_launches_with_it(tmp_path):
    """A process standing for pytest starts a zygote and a launch through it, then exits without its exit
    handlers (as a killed pytest would): the zygote, the launcher and its workers go with it."""
    stand_in = subprocess.Popen([sys.executable, "-c", f"""
import os, subprocess, sys
sys.path.insert(0, {str(ROOT / "tests" / "helpers")!r})
import zygote
zygote.install({str(tmp_path)!r})
cmd = zygote.Command([sys.executable, "-c", zygote.CLIENT])
launch = subprocess.Popen([*cmd, "--standalone", "--nproc-per-node", "2", {WORKER!r}, "sleep"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(zygote._zygote["proc"].pid, launch.pid, flush=True)
sys.stdin.readline()
os._exit(0)
"""], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server, launch = map(int, stand_in.stdout.readline().split())
    workers = list(_workers(launch, tmp_path).values())
    launcher = _parent(workers[0])
    assert _parent(launcher) == server
    stand_in.communicate("\n", timeout=60)
    assert not _gone([server, launcher, *workers, launch])


def test_without_a_zygote_the_client_is_the_launcher(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != zygote.ENV}
    p = subprocess.Popen([*TORCHRUN, "--standalone", "--nproc-per-node", "2", WORKER, "sleep"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = _workers(p.pid, tmp_path)
    assert {_parent(pid) for pid in workers.values()} == {p.pid}
    p.terminate()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "SignalException: Process %d got signal: 15" % p.pid in err, err[-2000:]
    assert sorted(out.splitlines()) == [f"rank {r}: {tmp_path} None" for r in (0, 1)]


def test_a_child_that_ends_as_its_client_forwards_a_signal_leaves_the_zygote_serving(tmp_path):
    """A worker's end and its client's forwarded signal read by the zygote in one batch of events: the
    client's event, stale once the end had unregistered its socket, ended the zygote with an exception,
    and every launch through it then 'went away' (seen once in a helper's run of the torchrun tests).
    The zygote is stopped while the worker ends and the client forwards SIGTERM, so both wait for it."""
    wrapper = zygote.python_wrapper(str(tmp_path))
    server = zygote._zygote["proc"]
    gate, script = tmp_path / "gate", tmp_path / "gated.py"
    script.write_text("import os, sys, time\nopen(sys.argv[1] + '.ready', 'w').write(str(os.getpid()))\n"
                      "while os.path.exists(sys.argv[1]):\n    time.sleep(0.01)\n")
    gate.touch()
    p = subprocess.Popen([wrapper, str(script), str(gate)], cwd=tmp_path)
    ready = tmp_path / "gate.ready"
    deadline = time.time() + 60
    while not (ready.exists() and ready.read_text()) and time.time() < deadline:
        time.sleep(0.02)
    worker = int(ready.read_text())
    assert _parent(worker) == server.pid  # forked by the zygote
    os.kill(server.pid, signal.SIGSTOP)
    try:
        gate.unlink()  # the worker ends (a zombie until the zygote reaps it)
        while Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)  # the client forwards it: a byte on its socket
        time.sleep(0.3)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert p.wait(timeout=60) == 0  # the worker had ended (status 0) before the signal
    again = _launch("ok", tmp_path)  # the next launch: through the zygote, which still serves
    assert again.returncode == 0, again.stderr[-2000:]  # (it had 'gone away during the launch')
    assert server.poll() is None, "the zygote ended"
