"""The dashboard: `dsv3-probe dashboard [RUNS_DIR]`, or directly

    streamlit run dashboards/app.py -- runs/          # the runs directory (default: runs/, or $DSV3_RUNS_DIR)

Every page reads Parquet through `dashboards.data` (DuckDB, cached); torch is never imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboards/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards import ui  # noqa: E402

# (file, title, icon, section): the file path is also what AppTest.switch_page takes
PAGES = [
    ("views/overview.py", "Overview", ":material/dashboard:", "Runs"),
    ("views/load_balance.py", "Load balance", ":material/balance:", "Routing"),
    ("views/specialisation.py", "Specialisation", ":material/category:", "Routing"),
    ("views/token_explorer.py", "Token explorer", ":material/text_fields:", "Routing"),
    ("views/coactivation.py", "Co-activation & flow", ":material/hub:", "Routing"),
    ("views/serving.py", "Serving", ":material/dns:", "Routing"),
    ("views/latent_kv.py", "Latent KV", ":material/memory:", "Model"),
    ("views/mtp.py", "MTP", ":material/fast_forward:", "Model"),
    ("views/ablations.py", "Ablations", ":material/content_cut:", "Experiments"),
    ("views/steering.py", "Steering", ":material/tune:", "Experiments"),
    ("views/compare.py", "Compare runs", ":material/compare:", "Experiments"),
    ("views/training.py", "Training", ":material/monitoring:", "Experiments"),
]

# about as many characters of a run's label as the sidebar's selectbox shows before cutting it off
SIDEBAR_LABEL_CHARS = 30

st.set_page_config(page_title="DeepSeek-V3 probe", page_icon=":material/biotech:", layout="wide")

here = Path(__file__).parent
sections: dict[str, list] = {}
for i, (f, title, icon, section) in enumerate(PAGES):
    sections.setdefault(section, []).append(st.Page(str(here / f), title=title, icon=icon, default=i == 0))
nav = st.navigation(sections)
ui.page_style()

with st.sidebar:
    st.markdown("### :material/biotech: DeepSeek-V3 probe")
    runs = ui.all_runs()
    st.caption(f"Runs directory: {ui.code_html(ui.runs_dir())}", unsafe_allow_html=True)
    if ui.runs_dir_problem():
        st.error(ui.runs_dir_problem())
    if runs:
        names = [r.name for r in runs]
        asked = st.query_params.get("run")  # a shared link: ?run=NAME
        if asked in names and st.session_state.get("_asked_run") != asked:
            st.session_state[ui.RUN_KEY] = st.session_state["_asked_run"] = asked
        elif asked and asked not in names and st.session_state.get("_asked_run") != asked:
            # a stale or mistyped link showed the first run as if it were the one asked for (a review):
            # said until another run is picked
            st.session_state["_asked_run"] = asked
            st.session_state[ui.RUN_KEY] = names[0]
            st.session_state["_missing_run"] = (asked, names[0])
        if st.session_state.get(ui.RUN_KEY) not in names:
            st.session_state[ui.RUN_KEY] = names[0]
        missing = st.session_state.get("_missing_run")
        if missing and missing[1] == st.session_state[ui.RUN_KEY]:
            st.warning(f"No run `{missing[0]}` in `{ui.runs_dir()}`: showing `{missing[1]}` instead.")
        elif missing:
            del st.session_state["_missing_run"]
        labels = {r.name: f"{r.name} · {ui.kind_text(r)} · {r.status}" for r in runs}
        st.selectbox("Run", names, key=ui.RUN_KEY, format_func=labels.get)
        if len(labels[st.session_state[ui.RUN_KEY]]) > SIDEBAR_LABEL_CHARS:
            # the selectbox cuts a long label off with an ellipsis; a caption wraps
            st.caption(labels[st.session_state[ui.RUN_KEY]])
        # the link follows the run shown; noted as asked, so that the next rerun does not take the app's own
        # write for a new link (after a link to a missing run, the first run picked in the sidebar was put
        # back, and the warning stayed: found in a browser once the pages moved out of `pages/`)
        st.query_params["run"] = st.session_state["_asked_run"] = st.session_state[ui.RUN_KEY]
    else:
        st.caption("No runs yet.")
    if st.button("Reload runs", icon=":material/refresh:", help="Forget cached queries and re-read the runs"):
        st.cache_data.clear()
        st.rerun()

nav.run()
