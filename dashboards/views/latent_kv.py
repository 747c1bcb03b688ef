"""Latent KV: the spectrum of the compressed KV latent per layer, its effective rank and energy
components, and the cache bytes per token of each attention form."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analyses.metrics._common import listed, unrecorded_why
from dashboards import charts, data, ui

LAYER_COLORS = charts.EXPERT_PALETTE


def too_few(ref: data.RunRef) -> str | None:
    """Why a run's latents give no covariance to speak of: under two tokens a layer (a covariance
    needs two), else None."""
    kv = data.kv_stats(ref) if data.has_table(ref, "kv_stats") else None
    n = int(kv.tokens.min()) if kv is not None and len(kv) else None
    return (f"a covariance needs two tokens or more, and the run recorded {n} token{'' if n == 1 else 's'} a layer "
            "(record with a larger `--max-tokens`)" if n is not None and n < 2 else None)


def not_written(ref: data.RunRef) -> bool:
    """Whether the run has neither latent table, as run.json says why (recorded with --no-kv-stats, or
    a record not yet complete: it writes them at the end); if so, one note says so. Such a run said 'has
    no `kv_spectrum` table' and 'has no `kv_stats` table' in a box each, naming neither why nor what
    writes them (a tour). A table the run has lost is left to the reads' warnings."""
    tables = ("kv_stats", "kv_spectrum")
    if any(data.has_table(ref, t) for t in tables) or data.whole_lost(ref, tables):
        return False
    st.info(f"Run `{ref.name}` has no `kv_stats` or `kv_spectrum` table: {unrecorded_why(ref, 'kv_stats')}.",
            icon="ℹ️")
    return True


def spectrum(ref: data.RunRef) -> None:
    spec = data.kv_spectrum(ref)
    if len(spec) and not spec.share.notna().any():  # no energy in any layer: every share 0 / 0, an empty chart
        why = too_few(ref)
        st.info(f"No spectrum: the latent covariance of run `{ref.name}` holds no energy in any layer"
                + (f": {why}." if why else "."), icon="ℹ️")
        return
    log = st.toggle("Log scale", True, key="kv_log")
    series = {data.layer_label(ref, l): (g.component, g.share) for l, g in spec.groupby("layer")}
    colors = {k: LAYER_COLORS[i % len(LAYER_COLORS)] for i, k in enumerate(series)}
    st.plotly_chart(charts.lines(series, title="Spectrum of the latent covariance (eigenvalue / total)",
                                 xlabel="component", ylabel="share of energy", colors=colors, log_y=log,
                                 fmt=".3e", markers=True), key="spectrum")


def main() -> None:
    st.title("Latent KV")
    ref = ui.selected_run(("probe",))
    if ref is None or ui.engine_lacks(ref, ("kv_spectrum", "kv_stats"), "the attention's latent KV") \
            or not_written(ref):
        return
    with ui.guard("the latent spectrum"):
        spectrum(ref)
    with ui.guard("the latent statistics"):
        kv = data.kv_stats(ref)
        if kv.empty:  # a part file without rows (the recorder writes none; another writer might)
            st.info("The `kv_stats` table holds no rows: nothing to draw.")
            return
        c = kv.iloc[0]
        finite = kv.effective_rank.astype(float).map(math.isfinite)
        if not finite.all():  # the probe writes NaN for a layer whose latents were (a diverged checkpoint): the
            bad = [str(int(x)) for x in kv.layer[~finite]]  # mean left it out unsaid (a review)
            st.warning(f"Layer{'' if len(bad) == 1 else 's'} {listed(bad)}: non-finite latents (NaN or inf) in "
                       "this recording, so no effective rank or spectrum; the mean below is over the other layers.")
        few = int(kv.tokens.min()) < 2  # a covariance of one token is zero: its rank of 0.0 was shown (a tour)
        if few:
            st.info(f"No effective rank or energy components: {too_few(ref)}.", icon="ℹ️")
        m = st.columns(4)
        m[0].metric("Latent dim C", int(c.latent_dim))
        m[1].metric("Mean effective rank", f"{kv.effective_rank[finite].mean():.1f}" if finite.any() and not few
                    else "n/a", help=f"over the {int(finite.sum())} of {len(kv)} layers with finite latents")
        m[2].metric("Tokens", f"{int(c.tokens):,}")
        m[3].metric("Absorb vs MHA cache", f"{c.bytes_absorb / c.bytes_mha:.1%}",
                    help="bytes per token per layer, absorb form / standard MHA of the same width")
        left, right = st.columns(2)
        labels = [data.layer_label(ref, l) for l in kv.layer]
        fig = go.Figure()
        fig.add_trace(go.Bar(x=labels, y=kv.effective_rank, name="effective rank", marker_color="#4C78A8",
                             hovertemplate="%{x}<br>effective rank %{y:.2f}<extra></extra>"))
        for col, colr in (("energy90", "#9ecae1"), ("energy95", "#6baed6"), ("energy99", "#2171b5")):
            fig.add_trace(go.Scatter(x=labels, y=kv[col], name=f"{col[6:]}% energy", mode="lines+markers",
                                     line=dict(color=colr),
                                     hovertemplate="%{x}<br>" + col[6:] + "% of energy in %{y} components"
                                                   "<extra></extra>"))
        fig.update_yaxes(title="components")
        if not few:
            left.plotly_chart(charts.style(fig, "Effective rank and energy components", 360), key="erank")
        forms = ["bytes_absorb", "bytes_naive", "bytes_mha"]
        names = ["MLA absorb (C + R)", "MLA naive (H·(N+R+V))", "standard MHA (2·dim)"]
        vals = [int(kv[f].iloc[0]) for f in forms]
        # of the checkpoint's dtype, as a server caches it, whatever the run computed in: 'bytes' alone read as the
        # run's float32 elements (a browser tour)
        elem = (ref.info.get("model_args") or {}).get("dtype")
        title = "KV cache bytes per token per layer" + (f" ({elem} elements)" if elem else "")
        fig = charts.bars(names, vals, title=title, xlabel="form", ylabel="bytes",
                          colors=["#54A24B", "#EECA3B", "#E45756"], fmt=",d")
        right.plotly_chart(charts.fit_title(fig, 0.5), key="bytes")  # the page's right half at 1024 px
        with st.expander("Norm statistics per layer"):
            ui.wrapped_table(norm_table(ref, kv), NORM_COLUMNS, NORM_CONFIG, most=min(2 * len(kv), NORM_ROWS))


# the norms a row per layer and vector, in an expander's 528 px at 1024 px (ui.EXPANDER_PX): the whole kv_stats
# row, 19 columns (tokens and latent_dim repeating the metrics, the ranks and bytes the charts), took 1,707 px
# at 1400 px, the k_pe norms and the rest behind a sideways scroll (a tour)
NORM_COLUMNS = {"layer": 70, "vector": 150, "mean": 72, "std": 72, "min": 72, "max": 72}
NORM_CONFIG = {c: st.column_config.NumberColumn(format="%.4f", help=f"the {c} of the vector's L2 norm over the "
                                                 "run's tokens") for c in ("mean", "std", "min", "max")}
# every row shown up to 40, as the pages' whole tables (`ui.whole_table_height`); past them it scrolls: two rows a
# layer, DeepSeek-V3's 61 MLA layers stood 4,308 px tall in the expander (a review)
NORM_ROWS = 40
VECTORS = {"latent_norm": "c_kv after kv_norm", "k_pe_norm": "k_pe after RoPE"}


def norm_table(ref: data.RunRef, kv) -> pd.DataFrame:
    """kv_stats' L2 norm statistics, a row per layer and vector (the latent, the shared RoPE key)."""
    rows = [{"layer": data.layer_label(ref, r.layer), "vector": name,
             **{s: float(getattr(r, f"{col}_{s}")) for s in ("mean", "std", "min", "max")}}
            for r in kv.itertuples() for col, name in VECTORS.items()]
    return pd.DataFrame(rows, columns=list(NORM_COLUMNS))


with ui.guard("this page"):
    main()
