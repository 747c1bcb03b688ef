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
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value == PAGES[page]
    return at


def texts(elems) -> str:
    return " | ".join(e.value for e in elems)


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
