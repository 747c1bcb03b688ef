"""Driving the Streamlit app under streamlit.testing.v1.AppTest (shared by the dashboard tests)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "dashboards" / "app.py")
PAGES = {  # page file -> title shown (dashboards/app.py's PAGES)
    "overview": "Overview", "load_balance": "Load balance", "specialisation": "Specialisation",
    "token_explorer": "Token explorer", "coactivation": "Co-activation & flow", "serving": "Serving",
    "latent_kv": "Latent KV", "mtp": "MTP", "ablations": "Ablations", "steering": "Steering", "compare": "Compare runs",
    "training": "Training",
}


def share_script_cache() -> None:
    """One compiled copy of app.py and each page for every AppTest run of the process, as the real
    server keeps one for all its sessions: AppTest builds a new ScriptCache for each run, so every
    widget change or page switch parsed, rewrote (Streamlit's "magic") and compiled app.py and the
    page again, about a tenth of a page's run (py-spy, 2026-12-06). The scripts do not change while
    the tests run. AppTest holds two: the pages manager's (the pages) and its script runner's (app.py,
    run first on every run): replacing the first alone still compiled app.py on each of the ~120 runs of
    test_dashboard.py (cProfile of the script thread, 2026-12-07)."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    if app_test.ScriptCache is ScriptCache:  # not yet replaced in this process
        shared = ScriptCache()
        app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared


def share_component_scan() -> None:
    """One scan of the installed packages for Streamlit components per process, as the real server
    scans once when it starts: each AppTest builds a component manager of its own, whose discovery
    read the metadata of every installed distribution (110 here) at its first run: ~0.12 s of CPU an
    AppTest, ~5 s over the quick loop's (cProfile, 2026-12-06). The installed packages do not change
    while the tests run; the app uses no custom components (the scan finds none)."""
    from streamlit.components.v2 import manifest_scanner

    real = manifest_scanner.scan_component_manifests
    if getattr(real, "shared", False):  # already replaced in this process
        return
    found: list = []

    def scan(max_workers: int | None = None):
        if not found:
            found.append(real(max_workers))
        return list(found[0])

    scan.shared = True
    manifest_scanner.scan_component_manifests = scan


def app(runs_dir: Path, run: str | None = None, page: str | None = None):
    """The app on `runs_dir`, with `run` selected, after its first run: on `page` when given (as a link
    to the page opens it; checked as `open_page` checks it), else on the first page, the Overview.
    A test of one page opens it so, rather than after a run of the Overview that it does not read
    (0.03-0.15 s of CPU a test on the tests' small runs, 2026-12-06)."""
    from streamlit.testing.v1 import AppTest

    share_script_cache()
    share_component_scan()
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["runs_dir"] = str(runs_dir)
    if run:
        at.session_state["run"] = run
    if page:
        return _opened(at.switch_page(f"views/{page}.py").run(), page)
    return at.run()


def open_page(at, page: str):
    """Switch to `page`; it must run without an exception and show its title."""
    return _opened(at.switch_page(f"views/{page}.py").run(), page)


def _opened(at, page: str):
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value == PAGES[page]
    return at


def texts(elems) -> str:
    return " | ".join(e.value for e in elems)


def one_line(text: str) -> str:
    """A page's text with each command it gives on one line: its code blocks break a long command into
    lines a shell joins (`dashboards.ui.command_lines`: ' \\', a newline and an indent)."""
    return text.replace(" \\\n    ", " ")


def array(v) -> np.ndarray:
    """A plotly JSON array: a list, or numpy's typed-array form {dtype, bdata (base64)[, shape]}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).astype(float)
    return np.array(v, dtype=float)


def chart(at, key: str) -> dict:
    """The plotly figure a page drew under `key` (its element id ends with the key)."""
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert found, (key, [c.proto.id for c in at.get("plotly_chart")])
    return found[0]
