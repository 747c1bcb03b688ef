"""Steering: what forcing (or biasing) chosen experts does, from the `steering` table of
`python -m analyses.steer`: the loss change per domain of each steering, how many tokens it applied
to and how often the steered experts made the top-k, and greedy continuations with and without it."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit as st

from analyses.metrics._common import listed
from dashboards import charts, data, ui
from probe.schema import layer_label


def describe(spec: str) -> str:
    """'force layer 2: experts 5+7 · domains code' from a steering's spec JSON."""
    try:
        s = json.loads(spec) if isinstance(spec, str) else {}
    except ValueError:
        return "?"
    if not isinstance(s, dict):
        return "?"
    sel = "; ".join(f"{layer_label(int(k))}: expert{'s' if len(v) > 1 else ''} {'+'.join(map(str, v))}"
                    for k, v in (s.get("experts") or {}).items())
    mode = s.get("mode", "?")
    out = f"{mode} {s['bias']:g} · {sel}" if mode == "bias" and "bias" in s else f"{mode} · {sel}"
    if s.get("domains"):
        out += f" · only {listed(s['domains'])} tokens"
    if s.get("token_ids") is not None:
        out += f" · only {len(s['token_ids'])} token ids"
    return out


def main() -> None:
    st.title("Steering")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    missing = (f"Run `{ref.name}` has no steering results yet. Steer chosen experts with"
               + ui.command_block(ui.analysis_command(ref, 'steer', '--experts L:E'))
               + "(e.g. `--experts 2:5+7`: force experts 5 and 7 of layer 2 into every token's top-k; `--mode bias "
               "--bias 2` adds to their scores instead). It writes `steering/` into the run directory and the results "
               "appear here.")
    with ui.guard("the steering results"):
        df = ui.result_table(ref, "steering", data.steering, missing)
        if df is None:
            return
        df = df.assign(entry=entries(df))
        loss = df[df.kind == "loss"]
        if len(loss):
            loss_chart(loss)
        steers = list(dict.fromkeys(df.entry))
        specs = df.drop_duplicates("entry").set_index("entry").spec.to_dict()  # each entry's (first) spec
        pick = st.selectbox("Steering", steers, key="steer_pick",
                            format_func=lambda n: f"{n} · {describe(specs[n])}" if n in specs else str(n))
        one(df[df.entry == pick])


def entries(df) -> list[str]:
    """A label per row: the steering's name, and when one name was written by several commands (its
    part files), the part and the tokens it scored, so their rows are never mixed."""
    if "part" not in df or df.groupby("steer").part.nunique().max() <= 1:
        return list(df.steer)
    toks = df[df.kind == "loss"].groupby(["steer", "part"]).tokens.max()
    return [f"{s} [{p[:6]}, {int(toks.get((s, p), 0)):,} tokens]" if df[df.steer == s].part.nunique() > 1 else s
            for s, p in zip(df.steer, df.part)]


def loss_chart(loss) -> None:
    colors = ui.domain_colors()
    per = loss[loss.domain != "all"] if (loss.domain != "all").any() else loss
    fig = go.Figure()
    for dom, g in per.groupby("domain"):
        fig.add_trace(go.Bar(x=g.entry, y=g.delta, name=dom, marker_color=colors.get(dom),
                             customdata=g[["loss", "baseline_loss", "steered_tokens", "tokens"]].to_numpy(),
                             hovertemplate=f"{dom} · %{{x}}<br>Δ loss %{{y:+.4f}} nats<br>"
                                           "loss %{customdata[0]:.4f} vs %{customdata[1]:.4f}<br>"
                                           "steered %{customdata[2]:,} of %{customdata[3]:,} tokens<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="steering", type="category")
    fig.update_yaxes(title="Δ loss (nats)")
    fig.add_hline(y=0, line_color="#444")
    st.plotly_chart(charts.style(fig, "Loss change per domain for each steering", 380), key="steer_delta")


def one(g) -> None:
    """One steering: its numbers over all tokens, its per-domain rows and its generations side by side."""
    loss, gen = g[g.kind == "loss"], g[g.kind == "generation"]
    st.caption(f"Spec: `{g.spec.iloc[0]}`")
    if len(loss):
        al = loss[loss.domain == "all"].iloc[0] if (loss.domain == "all").any() else loss.iloc[0]
        c = st.columns(4)
        measured = al.delta == al.delta  # NaN: the model gave a NaN surprisal at a scored token (kept, warned of)
        nan = " (NaN: the model gave a NaN surprisal at a scored token, which the job keeps and warned of)"
        c[0].metric(f"Δ loss ({al.domain})", f"{al.delta:+.4f}" if measured else "n/a",
                    help=f"{al.loss:.4f} vs {al.baseline_loss:.4f} nats" + ("" if measured else nan))
        c[1].metric("Steered tokens", f"{int(al.steered_tokens):,}", help=f"of {int(al.tokens):,} tokens scored")
        c[2].metric("Share steered", f"{al.steered_tokens / al.tokens:.1%}" if al.tokens else "–",
                    help="share of the scored tokens the steering applied to: all of them, unless --steer-tokens "
                         "or --steer-domain narrowed it")
        c[3].metric("Forced share", f"{al.forced_share:.1%}" if al.forced_share == al.forced_share else "–",
                    help="share of (steered token, steered layer) pairs whose top-k holds every steered expert "
                         "(1 when forcing; lower for a bias the router can refuse)")
        per = loss[loss.domain != "all"]
        st.caption(f"Scored on {int(al.tokens):,} tokens"
                   + (f" ({listed(f'{r.domain} {int(r.tokens):,}' for r in per.itertuples())})" if len(per) else "")
                   + ", the steering command's own sample: the Ablations page's losses come from their commands' "
                     "samples, so their baselines and Δ loss are not on the same tokens as these.")
        st.dataframe(loss[["domain", "tokens", "steered_tokens", "forced_share", "baseline_loss", "loss", "delta"]],
                     hide_index=True, width="stretch", key="steer_rows",
                     column_config={c: st.column_config.NumberColumn(format="%.4f")
                                    for c in ("forced_share", "baseline_loss", "loss", "delta")})
    if gen.empty:
        st.caption("No generation rows for this steering.")
        return
    st.markdown("**Greedy continuations**: without steering (left) and with it (right)")
    dcol = ui.domain_colors()
    for _, r in gen.iterrows():
        dom = r.domain if isinstance(r.domain, str) else None
        badge = (f"<span style='color:{dcol.get(dom, '#888')};font-weight:600'>{ui.html_text(dom)}</span> · "
                 if dom else "")
        st.markdown(f"{badge}prompt: {text_box(r.prompt, '#f4f4f4')}", unsafe_allow_html=True)
        left, right = st.columns(2)
        left.markdown(text_box(r.baseline_text, "#eef3fa", "baseline"), unsafe_allow_html=True)
        right.markdown(text_box(r.steered_text, "#fdf0e6", "steered"), unsafe_allow_html=True)


def text_box(text, bg: str, label: str | None = None) -> str:
    """A text in a box, every markup character escaped, line breaks kept."""
    # line breaks as <br>: a blank line would end the HTML block and Markdown would show the rest as code
    body = ui.html_text(text if isinstance(text, str) else "").replace("\r", "").replace("\n", "<br>")
    head = f"<div style='font-size:0.8em;color:#666'>{label}</div>" if label else ""
    return (f"<div style='background:{bg};border-radius:6px;padding:6px 10px;margin-bottom:8px'>{head}"
            f"<span style='font-family:monospace;white-space:pre-wrap'>{body}</span></div>")


with ui.guard("this page"):
    main()
