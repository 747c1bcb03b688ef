"""Driving the Streamlit app under streamlit.testing.v1.AppTest (shared by the dashboard tests)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "dashboards" / "app.py")
PAGES = {  # page file -> title shown (dashboards/app.py's PAGES)
    "overview": "Overview", "load_balance": "Load balance", "specialisation": "Specialisation",
    "token_explorer": "Token explorer", "coactivation": "Co-activation & flow", "serving": "Serving",
    "latent_kv": "Latent KV", "mtp": "MTP", "ablations": "Ablations", "steering": "Steering", "compare": "Compare runs",
    "training": "Training",
}


def app(runs_dir: Path, run: str | None = None):
    """The app on `runs_dir`, with `run` selected, after its first run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["runs_dir"] = str(runs_dir)
    if run:
        at.session_state["run"] = run
    return at.run()


def open_page(at, page: str):
    """Switch to `page`; it must run without an exception and show its title."""
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value == PAGES[page]
    return at


def texts(elems) -> str:
    return " | ".join(e.value for e in elems)
