"""Plotly figures and the colour maps every page shares (one colour per domain and per expert).

Domains get colours in sorted order of all the domains seen across the runs directory, so a domain
has the same colour on every page and in every run; experts take a fixed qualitative palette by
id, 48 colours (a 256-expert layer repeats them every 48 ids: hover texts and legends name the id).
Heatmaps use one sequential scale for counts and one diverging scale centred on the
balanced value for relative loads and lifts.
"""

from __future__ import annotations

import numbers
import re

from collections.abc import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

DOMAIN_PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D",
                  "#FF9DA6", "#BAB0AC"]
EXPERT_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf", "#393b79", "#e6550d", "#31a354", "#756bb1", "#636363", "#843c39",
                  "#7b4173", "#3182bd", "#fd8d3c", "#74c476", "#9e9ac8", "#bd9e39", "#ad494a", "#6baed6",
                  *qualitative.Dark24]  # 48: ids 24 apart shared a colour in a 32-expert layer (a review)
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
TEMPLATE = "plotly_white"


def domain_colors(domains: Iterable[str]) -> dict[str, str]:
    """A stable domain -> colour map over the given (all known) domains."""
    return {d: DOMAIN_PALETTE[i % len(DOMAIN_PALETTE)] for i, d in enumerate(sorted(set(domains)))}


def expert_color(e: int) -> str:
    return EXPERT_PALETTE[int(e) % len(EXPERT_PALETTE)]


def text_color(bg: str) -> str:
    """Black or white text for a hex background."""
    r, g, b = (int(bg[i:i + 2], 16) for i in (1, 3, 5))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def _set_template(fig: go.Figure) -> None:
    """fig's template = TEMPLATE, as plotly sets its default template on a new figure: without
    validating it again. `template="plotly_white"` through update_layout deep-copies and validates the
    registered template each time, 20 ms a figure (a quarter of the pages' script time, measured
    2026-12-06); this is under 1 ms, and the figure's JSON is the same."""
    layout = fig.layout
    validate = getattr(layout, "_validate", None)  # plotly's own switch (private: a later plotly may lack it)
    if validate is None:
        layout.template = TEMPLATE  # validated, as before
        return
    layout._validate = False
    try:
        layout.template = pio.templates[TEMPLATE]
    finally:
        layout._validate = validate


def style(fig: go.Figure, title: str | None = None, height: int = 380, **layout) -> go.Figure:
    _set_template(fig)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      title=dict(text=title, x=0.01, font=dict(size=15)) if title else None,
                      hoverlabel=dict(font_size=12), legend=LEGEND, **layout)
    return fig


# The legend at the figure's foot, plotly's margin making room for it below the x axis's title (8 px apart
# whatever the rows). At y=-0.18 of the plot's height its box met the title, and the more rows it wrapped
# into the less room was left, as the plot shrank to make room for them: the masked-fraction curve's
# `share of routed experts disabled` under its 7 rules at 1024 px, the Training page's `step` (a tour)
LEGEND = dict(orientation="h", yref="container", yanchor="bottom", y=0)


# A chart in a column gets a share of the page's width, 548 px at 1024 px (the sidebar open) less the
# columns' gaps; a title (15 px) takes 6.5 px a character on average (36 of them filled 254 px in
# Chromium), and plotly draws it on one line, cut off at the chart's edge (`I(domain; expert) / H(domain) pe`
# in 2/5 of the page, a tour at 1024 px)
NARROW_PAGE_PX, TITLE_CHAR_PX, TITLE_MARGIN_PX = 548, 6.5, 20


def fit_title(fig: go.Figure, share: float) -> go.Figure:
    """`fig`'s title broken into lines at spaces to fit a chart `share` of the page wide at 1024 px, the
    top margin grown by a line for each line added. A title that fits is left as it is. Plotly's markup in
    it counts for nothing and is never broken: a line it breaks with `<br>` is fitted on its own, and a
    space inside a tag (`<span style="...">`) is no place to break (textwrap split the tag in two, and
    counted the tags' characters and the given lines as text of one line: a review)."""
    title = fig.layout.title.text
    chars = max(12, int((share * NARROW_PAGE_PX - TITLE_MARGIN_PX) / TITLE_CHAR_PX))
    given = _BREAK.split(title) if title else []
    if all(_shown_len(line) <= chars for line in given):
        return fig
    lines = [part for line in given for part in _wrap_markup(line, chars)]
    fig.update_layout(title_text="<br>".join(lines),
                      margin_t=(fig.layout.margin.t or 50) + 20 * (len(lines) - len(given)))
    return fig


_TAG, _BREAK = re.compile(r"<[^>]*>"), re.compile(r"<br\s*/?>", re.IGNORECASE)


def _shown_len(text: str) -> int:
    """The characters of `text` that plotly draws: its tags left out."""
    return len(_TAG.sub("", text))


def _wrap_markup(line: str, chars: int) -> list[str]:
    """`line` in lines of at most `chars` drawn characters, broken at spaces outside its tags (a word
    longer than that on a line of its own)."""
    words = _TAG.sub(lambda m: m.group().replace(" ", "\0"), line).split(" ")
    lines: list[str] = []
    for word in words:
        if lines and _shown_len(f"{lines[-1]} {word}".replace("\0", " ")) <= chars:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return [x.replace("\0", " ") for x in lines if x]


def ratio_scale(zmax: float, centre: float = 1.0) -> list:
    """Blue below `centre`, white at it, red above, on the range [0, zmax] (relative loads, lifts):
    unlike a symmetric diverging scale it never shows impossible negative values."""
    zmax = max(float(zmax), centre * 1.01)
    w = centre / zmax
    return [[0.0, "#2166ac"], [w / 2, "#92c5de"], [w, "#f7f7f7"], [w + (1 - w) / 2, "#f4a582"], [1.0, "#b2182b"]]


def heatmap(z: np.ndarray, x: Sequence, y: Sequence, *, title: str | None = None, xlabel: str = "",
            ylabel: str = "", zlabel: str = "value", colorscale: str = SEQUENTIAL, zmid: float | None = None,
            fmt: str = ".3g", customdata: np.ndarray | None = None, extra_hover: str = "",
            height: int | None = None, y_numeric: bool = False, zmax: float | None = None) -> go.Figure:
    """A heatmap whose tooltip gives the exact cell value (and `customdata` when given).
    colorscale=DIVERGING with zmid: a ratio scale on [0, zmax] with white at zmid. `zmax`: the top
    of the colour scale (default: the largest value), to draw several heatmaps on one scale."""
    z = np.asarray(z, dtype=float)
    hover = f"{ylabel} %{{y}}<br>{xlabel} %{{x}}<br>{zlabel}: %{{z:{fmt}}}{extra_hover}<extra></extra>"
    extra = {}
    finite = bool(np.isfinite(z).any())
    top = float(zmax) if zmax is not None else float(np.nanmax(z)) if finite else None
    low = float(np.nanmin(z)) if finite else top
    if colorscale == DIVERGING and zmid and top is not None and low >= 0:
        colorscale, extra = ratio_scale(top, zmid), dict(zmin=0.0, zmax=max(top, zmid * 1.01))
    elif zmid is not None and top is not None:  # symmetric around zmid (e.g. 0 for a loss change)
        lim = (abs(top - zmid) if zmax is not None else float(np.nanmax(np.abs(z - zmid)))) or 1.0
        extra = dict(zmin=zmid - lim, zmax=zmid + lim)
    elif zmax is not None:
        extra = dict(zmin=min(low, top), zmax=top)
    fig = go.Figure(go.Heatmap(z=z, x=[str(v) for v in x], y=list(y) if y_numeric else [str(v) for v in y],
                               colorscale=colorscale, customdata=customdata, hovertemplate=hover,
                               colorbar=dict(title=dict(text=zlabel), thickness=12), **extra))
    fig.update_xaxes(title=xlabel, type="category")
    fig.update_yaxes(title=ylabel, type="linear" if y_numeric else "category", autorange="reversed")
    ys = np.asarray(y, dtype=float) if y_numeric and len(y) else None
    if ys is not None and np.all(ys == np.round(ys)) and ys.max() - ys.min() <= 10:
        fig.update_yaxes(dtick=1)  # a few integer rows (steps): no in-between ticks such as 0.5
    return style(fig, title, height or max(260, 60 + 28 * len(y)))


def relative_load_heatmaps(rels: dict[str, tuple[list[str], np.ndarray]], **kw) -> dict[str, go.Figure]:
    """One relative-load heatmap per name {name: (layers, [L, N] relative loads)}, all on one colour
    scale (white at 1, the top at the largest relative load of any of them), so that the same colour
    means the same load in each."""
    finite = [float(np.nanmax(r)) for _, r in rels.values() if np.isfinite(r).any()]
    zmax = max(finite) if finite else None
    return {n: heatmap(rel, list(range(rel.shape[1])), layers, title=f"{n}: relative load", xlabel="expert",
                       zlabel="relative load", colorscale=DIVERGING, zmid=1.0, fmt=".3f", zmax=zmax, **kw)
            for n, (layers, rel) in rels.items()}


def bars(x: Sequence, y: Sequence, *, title: str | None = None, xlabel: str = "", ylabel: str = "",
         colors: Sequence[str] | str | None = None, fmt: str = ".4g", height: int = 340,
         hover_extra: Sequence[str] | None = None) -> go.Figure:
    tmpl = f"{xlabel} %{{x}}<br>{ylabel}: %{{y:{fmt}}}" + ("<br>%{customdata}" if hover_extra is not None else "")
    fig = go.Figure(go.Bar(x=[str(v) for v in x], y=list(y), marker_color=colors, customdata=hover_extra,
                           hovertemplate=tmpl + "<extra></extra>"))
    fig.update_xaxes(title=xlabel, type="category")
    fig.update_yaxes(title=ylabel, tickformat=".0%" if "%" in fmt else None)
    return style(fig, title, height)


def lines(series: dict[str, tuple[Sequence, Sequence]], *, title: str | None = None, xlabel: str = "",
          ylabel: str = "", colors: dict[str, str] | None = None, fmt: str = ".4g", height: int = 360,
          log_y: bool = False, markers: bool = False, dash: dict[str, str] | None = None) -> go.Figure:
    """One line per named series {name: (x, y)}; the tooltip shows the exact value."""
    fig = go.Figure()
    for name, (x, y) in series.items():
        fig.add_trace(go.Scatter(
            x=list(x), y=list(y), name=name, mode="lines+markers" if markers else "lines",
            line=dict(color=(colors or {}).get(name), dash=(dash or {}).get(name)),
            hovertemplate=f"{name}<br>{xlabel} %{{x}}<br>{ylabel}: %{{y:{fmt}}}<extra></extra>"))
    fig.update_xaxes(title=xlabel)
    xs = [v for x, _ in series.values() for v in x]
    whole = all(isinstance(v, numbers.Real) and float(v).is_integer() for v in xs)  # ints, and floats like 3.0
    if xs and whole and max(xs) - min(xs) <= 12:
        fig.update_xaxes(dtick=1)  # whole batches or passes: plotly's ticks were 0.2, 0.4... on short runs (a review)
    fig.update_yaxes(title=ylabel, type="log" if log_y else None, tickformat=".0%" if "%" in fmt else None)
    if log_y:  # ticks at powers of ten only, written out (plotly's default adds lone-digit minor labels and SI "µ")
        fig.update_yaxes(dtick=1, exponentformat="power", tickformat=None)
    return style(fig, title, height)


def layered_sankey(columns: list[list[tuple[str, str, float]]], links: list[tuple], *, title: str | None = None,
                   height: int = 560) -> go.Figure:
    """Flows between consecutive columns (layers). columns[c] = [(label, colour, size), ...] top to bottom
    (size: the node's share of its column's drawn height); links = (column c, node index in c, node index
    in c + 1, value, colour, hover text). Node positions are given, so a node without incoming links
    still sits in its own column."""
    links = list(links) + _column_anchors(columns, links)
    offset = np.cumsum([0] + [len(c) for c in columns])
    sizes = [np.array([max(float(s), 1e-9) for _, _, s in col]) for col in columns]
    plot_h, pad = height - 60, 6  # style()'s margins; node padding in pixels
    ky = min((plot_h - (len(v) - 1) * pad) / v.sum() for v in sizes if len(v))  # pixels per token, as plotly
    xs, ys = [], []
    for c, v in enumerate(sizes):
        top = (plot_h - v.sum() * ky - (len(v) - 1) * pad) / 2  # each column centred, nodes `pad` apart
        mid = top + (np.cumsum(v) - v / 2) * ky + np.arange(len(v)) * pad
        xs += [0.001 + 0.998 * c / max(len(columns) - 1, 1)] * len(v)
        ys += list(np.clip(mid / plot_h, 0.001, 0.999))
    labels = [lab for col in columns for lab, _, _ in col]
    colors = [col_ for col in columns for _, col_, _ in col]
    fig = go.Figure(go.Sankey(
        arrangement="snap", textfont=dict(color="#222", size=12),
        node=dict(label=labels, color=colors, x=xs, y=ys, pad=6, thickness=14,
                  hovertemplate="%{label}<br>tokens: %{value:,.0f}<extra></extra>"),
        link=dict(source=[int(offset[c] + i) for c, i, *_ in links],
                  target=[int(offset[c + 1] + j) for c, _, j, *_ in links],
                  value=[v for *_, v, _, _ in links],
                  color=[_rgba(col, 0.4) if col else "rgba(0,0,0,0)" for *_, col, _ in links],
                  customdata=[t for *_, t in links],
                  hovertemplate="%{source.label} → %{target.label}<br>tokens: %{value:,}<br>%{customdata}"
                                "<extra></extra>")))
    return style(fig, title, height)


def _column_anchors(columns: list[list], links: list[tuple]) -> list[tuple]:
    """Invisible links of a negligible value into every node past the first column that has none and
    out of every node before the last that has none. Plotly scales nodes by the columns of its own
    layout (a node without incoming links in the first, one without outgoing links in the last), not
    by the positions given; without these, a layer whose nodes it spreads over two of its columns gets
    a larger scale than layered_sankey's, and the tallest layer ran off the bottom of the chart."""
    has_in = {(c + 1, j) for c, _, j, *_ in links}
    has_out = {(c, i) for c, i, *_ in links}
    tiny = 1e-6 * min((v for *_, v, _, _ in links), default=1.0)
    anchors = []
    for c, col in enumerate(columns):
        for i in range(len(col)):
            if c > 0 and (c, i) not in has_in and columns[c - 1]:
                anchors.append((c - 1, 0, i, tiny, None, ""))
            if c < len(columns) - 1 and (c, i) not in has_out and columns[c + 1]:
                anchors.append((c, i, 0, tiny, None, ""))
    return anchors


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
