"""Overview: every run of the directory (model, corpus, tokens, status, options) and the selected
run's health (status, unreadable files, tables missing against run.json)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards import charts, data, ui
from dashboards.ui import CELL_PAD_PX, break_name, text_px, wrapped_table
from probe.run import lost_tables, lost_why
from probe.schema import TABLES


def _when(v) -> str:
    if isinstance(v, (int, float)):
        return dt.datetime.fromtimestamp(v, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(v or "")[:16].replace("T", " ")


def _model(info: dict) -> str:
    a = info.get("model_args") or {}
    if not a:
        return ""
    # an import (SGLang) knows layers and experts but not the hidden size: say only what is known
    parts = [f"{a['n_layers']} layers" if a.get("n_layers") is not None else None,
             f"dim {a['dim']}" if a.get("dim") is not None else None,
             f"{a['n_routed_experts']} experts" + (f" ({_topk(info)})"
                                                  if a.get("n_activated_experts") is not None else "")
             if a.get("n_routed_experts") is not None else None]
    return ", ".join(p for p in parts if p)


def _topk(info: dict) -> str:
    """'top-8'; 'top-8, assumed' for an import whose top-k no --config gave and the dump did not show
    (run.json source.topk_assumed: SGLang's stat and per_pass counts), its tokens per pass then
    assignments / that top-k."""
    k = (info.get("model_args") or {}).get("n_activated_experts", "?")
    return f"top-{k}, assumed" if (info.get("source") or {}).get("topk_assumed") else f"top-{k}"


def _tokens(ref: data.RunRef) -> int | None:
    i = ref.info
    if ref.kind == "train":
        return i.get("tokens_seen")
    if i.get("kind") == "spec":  # prompt + generated tokens
        return sum((i.get("spec_decode") or {}).get("tokens_per_domain", {}).values()) or None
    if i.get("kind") in ANALYSIS_RUNS:  # the tokens scored, as its summary shows them (the column was blank)
        try:
            return analysis_tokens(ref)[0]
        except data.DataError:  # an unreadable table: its summary and health check say so
            return None
    return data.tokens_in_run(ref)


def _source(ref: data.RunRef) -> str:
    """The runs table's corpus cell. Its path, one word to the table, is fitted to a line of the column
    (`fit_path`): longer, the table broke it where the line ended, mid-name (a tour); the run's summary
    below names it whole."""
    i = ref.info
    src, room = i.get("source") or {}, RUN_COLUMNS["corpus"] - CELL_PAD_PX
    if src.get("name"):
        # the files' folder, not the first file's path (the summary below lists the files), on a line of its own
        files = src.get("files") or []
        where = fit_path(os.path.commonpath([str(Path(f).parent) for f in files]), room, text_px) if files else "?"
        return f"{src['name']} {src.get('mode', '')} dump: {len(files)} file{'s' * (len(files) != 1)} in {where}"
    if ref.kind == "train":
        return fit_path((i.get("flags") or {}).get("corpus", ""), room, text_px)
    return fit_path((i.get("corpus") or {}).get("path", ""), room, text_px)


def short_path(path) -> str:
    """A path as the tables show it: relative to the working folder when inside it (the bundled model and
    corpus: data/corpus/val.jsonl), else with the home folder as ~. A whole path, one word that cannot
    wrap, ran past the runs table's column and the options table's, cut off (a tour)."""
    if not path:
        return ""
    p = Path(str(path))
    for base, shown in ((Path.cwd(), None), (Path.home(), "~")):
        if (rel := ui.relative_inside(p, base)) is not None:
            return f"{shown}/{rel}" if shown else str(rel)
    return str(path)


def fit_path(path, room: float, width=len) -> str:
    """`short_path` in at most `room`, as `width` measures text (characters by default; `text_px`, pixels),
    for a cell that does not wrap (the Recording options table's: a longer path was cut at its end, the
    file's name with it; a tour): the folders in its middle give way to `…`, the first one and as many of
    the last ones as fit kept (/mnt/…/corpora/val.jsonl); a last name too long for that, cut in its own
    middle. The caption below the table gives it whole."""
    text = short_path(path)
    if width(text) <= room:
        return text
    parts = text.split("/")
    first = 2 if parts[0] == "" and len(parts) > 2 else 1  # an absolute path's first folder, with its root
    head, middle, tail = "/".join(parts[:first]) + "/", parts[first:-1], parts[-1]
    while middle and width(f"{head}…/{middle[-1]}/{tail}") <= room:
        tail = f"{middle.pop()}/{tail}"
    for lead in ([head + "…/"] if middle else []) + ["…/"]:
        if width(lead + tail) <= room:
            return lead + tail
    cut = tail
    for keep in range(len(tail) - 1, 1, -1):  # the name's ends, as much of them as fits (2 characters at least)
        cut = tail[:keep // 2] + "…" + tail[len(tail) - (keep - keep // 2):]
        if width(cut) <= room:
            break
    return cut


# the runs table's columns in pixels, together within the page's column at 1024 px with the sidebar open
# (562 px; 938 at 1400 px), a vertical scroll bar's 15 px spared: wider windows stretch every column by as
# much. Eight columns took 930 px, tokens, domains and started behind a sideways scroll bar below about
# 1,400 px (a tour): the domains and start times moved to a table of their own under an expander
# (`MORE_COLUMNS`), the tokens shortened (359K; the summary below gives them whole). A longer cell wraps
RUN_COLUMNS = {"run": 104, "kind": 60, "status": 86, "model": 116, "corpus": 120, "tokens": 58}
MORE_COLUMNS = {"run": 110, "domains": 270, "started": 130}  # the expander's box: 32 px narrower


def runs_table(runs: list[data.RunRef]) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": break_name(r.name, RUN_COLUMNS["run"]), "kind": ui.kind_text(r), "status": r.status,
        "model": _model(r.info), "corpus": _source(r), "tokens": _tokens(r),
    } for r in runs])


def runs_more_table(runs: list[data.RunRef]) -> pd.DataFrame:
    """The runs table's secondary columns (`MORE_COLUMNS`), shown under an expander below it."""
    return pd.DataFrame([{"run": break_name(r.name, MORE_COLUMNS["run"]), "domains": ", ".join(data.domains_of(r)),
                          "started": _when(r.info.get("started"))} for r in runs])


def domain_bars(per: dict, title: str, key: str, where=st) -> None:
    """Tokens per domain as bars in the domains' colours (nothing when there are none)."""
    if per:
        colors, doms = ui.domain_colors(per), sorted(per)  # per: a run.json without `domains` named none
        where.plotly_chart(charts.bars(doms, [per[d] for d in doms], title=title, xlabel="domain", ylabel="tokens",
                                       colors=[colors[d] for d in doms], fmt=",d"), key=key)


def cap_cut(info: dict) -> str | None:
    """Which domains the run's --max-tokens cut, from run.json's planned capped_domains (the domains the
    cap cut with text left), so that a short bar of the tokens per domain reads as the cap's or as all
    the corpus holds; None where the run had no cap or does not say (recorded before the key). Under
    --order corpus, which notes none, what the order leaves unknown: a one-domain run of a five-domain
    corpus drew one bar without a word (a browser tour)."""
    from analyses.metrics._common import listed

    opts, planned = info.get("options") or {}, info.get("planned") or {}
    cap, per = opts.get("max_tokens"), planned.get("tokens_per_domain") or {}
    held, cut, flag = sorted(per), planned.get("capped_domains"), f"`--max-tokens {cap or 0:,}`"
    if cap and held and cut is None and opts.get("order") == "corpus":
        if (planned.get("tokens") or sum(per.values())) < cap:
            return f"{flag} cut no domain: the run holds the whole corpus."
        return (f"{flag} with `--order corpus`: the corpus's first {cap:,} tokens in its own order, so it may hold "
                "more of the domain being read where the cap stopped, and domains never reached; the default "
                "`--order domains` takes a window of each domain in turn.")
    if not cap or not isinstance(cut, list) or not held:
        return None
    cut, whole = [d for d in held if d in cut], [d for d in held if d not in cut]
    if len(held) == 1:  # 'cut every domain: the corpus holds more of each', under one bar (a browser tour)
        return (f"{flag} cut the run's one domain, {held[0]}: the corpus holds more of it." if cut else
                f"{flag} cut nothing: the bar is all the corpus holds of {held[0]}.")
    if not whole:
        return f"{flag} cut every domain: the corpus holds more of each."
    if not cut:
        return f"{flag} cut no domain: each bar is all the corpus holds of it."
    return (f"{flag} cut {listed(cut, 4)} (the corpus holds more); {listed(whole, 4)} "
            f"{'is' if len(whole) == 1 else 'are'} recorded whole.")


PATH_OPTIONS = ("ckpt", "corpus", "out", "tokenizer")  # the recording options that name a path
# the Recording options table's columns in pixels: the value column all the room the options' names leave
# in the page's right half at 1024 px (274 px, the sidebar open); wider windows stretch both. In the right
# 2/5 it was given 255 px of, 218 px at 1024 px, the table scrolled sideways, the values cut off (a tour)
OPTION_COLUMNS = {"option": 105, "value": 165}


def probe_details(ref: data.RunRef) -> None:
    i = ref.info
    planned, opts = i.get("planned") or {}, i.get("options") or {}
    a = i.get("model_args") or {}
    docs, windows, per = (i.get("corpus") or {}).get("documents", 0), planned.get("windows", 0), \
        planned.get("tokens_per_domain") or {}
    if i.get("status") != "complete" and data.has_table(ref, "tokens"):
        # what was recorded, not what was planned (an interrupted run showed the plan's 200k tokens
        # per domain beside its 42k recorded; a review)
        got = data.recorded_tokens(ref)
        docs, windows = int(got.documents.sum()), int(got.windows.sum())
        per = dict(zip(got.domain, got.tokens.astype(int)))
        st.caption(f"Status {ref.status!r}: the figures count what was recorded so far "
                   f"({sum(per.values()):,} of the {planned.get('tokens', 0):,} tokens planned).")
    elif i.get("status") != "complete" and planned and not i.get("recorded"):  # its plan showed as recorded
        docs, windows, per = 0, 0, {}
        then = "the figures fill in as the record commits" if ref.status == "running" else "resume it to record them"
        st.caption(f"Status {ref.status!r}: no batch committed yet ({planned.get('tokens', 0):,} tokens "
                   f"planned); {then}.")
    c = st.columns(5)
    c[0].metric("Tokens", f"{_tokens(ref) or 0:,}")
    c[1].metric("Documents", f"{docs:,}")
    c[2].metric("Windows", f"{windows:,}", help=f"seq_len {opts.get('seq_len')}")
    c[3].metric("MoE layers", len(data.moe_layers(ref)))
    c[4].metric("Experts", f"{a.get('n_routed_experts', '?')} · top-{a.get('n_activated_experts', '?')}")
    if layout := _layout(i):
        st.caption(layout)
    left, right = st.columns(2)
    domain_bars(per, "Tokens per domain", "tokens_per_domain", left)
    if i.get("status") == "complete" and per and (cut := cap_cut(i)):  # the bars are the plan's then
        left.caption(cut)
    with right:
        st.markdown("**Recording options**")
        # an option left unset shows what the run used: the checkpoint and corpus run.json names
        used = {"ckpt": (i.get("checkpoint") or {}).get("path"), "corpus": (i.get("corpus") or {}).get("path")}
        shown = {k: v if v is not None else used.get(k) or "default" for k, v in opts.items()}
        # a path whole ran past the narrow value column, cut off (a tour): fitted to it, and whole below
        room = OPTION_COLUMNS["value"] - CELL_PAD_PX
        value = {k: fit_path(v, room, text_px) if k in PATH_OPTIONS else str(v) for k, v in shown.items()}
        whole = {k: str(v) for k, v in shown.items() if k in PATH_OPTIONS and value[k] != str(v)}
        st.dataframe(pd.DataFrame({"option": list(value), "value": list(value.values())}),
                     hide_index=True, width="stretch", height=ui.whole_table_height(len(shown)),
                     column_config={c: st.column_config.TextColumn(width=w) for c, w in OPTION_COLUMNS.items()})
        if whole:  # a path breaks after a slash only (it broke mid-name at 1024 px; a tour)
            st.caption("; ".join(f"{k}: {ui.code_html(v)}" for k, v in whole.items()), unsafe_allow_html=True)
    rep = (i.get("corpus") or {}).get("replaced_bytes", 0)
    if rep:
        st.warning(f"The corpus had {rep:,} bytes that were not valid UTF-8 (replaced); files: "
                   f"{', '.join((i.get('corpus') or {}).get('files_with_replacements', [])[:5])}")
    if opts.get("router_logits") == "none":
        # every view that reads it: naming two, the others (the domain probe left out of its page unsaid) read
        # as unaffected (a browser tour)
        st.info("Recorded with `--router-logits none`: no routing table, which the Token explorer's colours and "
                "routes, Specialisation's top tokens, domain probe and token-id dependence, Co-activation & flow "
                "and Compare runs' run vs run read.")


def _layout(i: dict) -> str | None:
    """How the ranks held the model, from run.json's world (None for one process): the options table
    showed only the flag, `--model-parallel auto` saying nothing of the ranks (a tour)."""
    w = i.get("world") or {}
    size, mp = w.get("size") or 1, w.get("model_parallel") or 1
    if size < 2:
        return None
    hosts = len({d.split(":")[0] for d in w.get("devices") or []}) or 1
    reps = size // mp
    held = f"a model sharded over {mp} ranks" if mp > 1 else "a whole model"
    text = (f"Recorded on {size} ranks ({w.get('backend') or '?'}, {hosts} host{'s' if hosts > 1 else ''}): "
            f"{reps} replica{'s' if reps > 1 else ''}, each {held}.")
    peaks = [r.get("peak_rss") for r in (i.get("memory") or {}).get("per_rank") or [] if r.get("peak_rss")]
    if peaks:
        text += f" Peak memory per rank {min(peaks) / 1e9:.2f}-{max(peaks) / 1e9:.2f} GB."
    return text


def spec_details(ref: data.RunRef) -> None:
    """A run that holds only `dsv3-probe spec`'s tables: its summary (it showed zeros and an empty
    options table, the record's; a review)."""
    s = ref.info.get("spec_decode") or {}
    c = st.columns(4)
    c[0].metric("Prompts", f"{s.get('prompts', 0):,}")
    c[1].metric("Generated tokens", f"{s.get('generated', 0):,}")
    rate = s.get("acceptance_rate")
    c[2].metric("MTP draft acceptance", f"{rate:.3f}" if rate is not None else "n/a",
                help="accepted / proposed drafts (the MTP page has the details)")
    length = s.get("mean_acceptance_length")  # None when no draft was proposed: not 0 (a review)
    c[3].metric("Mean acceptance length", f"{length:.3f}" if length is not None else "n/a",
                help="1 + accepted / proposed: the tokens a verifying pass yields with one MTP draft a pass, "
                     "before a prompt's last pass is cut at its new-token budget")
    domain_bars(s.get("tokens_per_domain") or {}, "Prompt + generated tokens per domain", "spec_tokens_per_domain")
    st.caption(f"A `dsv3-probe spec` run: {s.get('prompt_tokens', '?')}-token prompts, {s.get('new_tokens', '?')} "
               f"new tokens each, of `{s.get('checkpoint', '?')}` on `{s.get('corpus', '?')}`. It holds no "
               "routing: the MTP page shows its speculative-decoding tables.")


# run.json's kind of a run that `python -m analyses.X --out DIR` wrote -> (its command, table, page)
ANALYSIS_RUNS = {"ablations": ("python -m analyses.ablate", data.ablations, "Ablations"),
                 "expert_importance": ("python -m analyses.importance", data.expert_importance, "Ablations"),
                 "steering": ("python -m analyses.steer", data.steering, "Steering")}


def analysis_tokens(ref: data.RunRef) -> tuple[int, dict[str, int]]:
    """The tokens an analysis-only run scored, in all and per domain, from its table: per domain the
    most any of the run's commands scored (each command writes its own part); in all, its `all` rows'."""
    df = ANALYSIS_RUNS[ref.info["kind"]][1](ref)
    if "kind" in df:  # steering: the loss rows count tokens scored, the generation rows tokens generated
        df = df[df.kind == "loss"]
    per = {str(d): int(n) for d, n in df.groupby("domain").tokens.max().items()}
    return per.pop("all", sum(per.values())), per


def analysis_details(ref: data.RunRef) -> None:
    """A run that holds only an analysis' results (`--out DIR`): the tokens it scored per domain, from its
    table. It showed the record's figures, 0 tokens, documents and windows (a tour)."""
    kind = ref.info["kind"]
    cmd, _, page = ANALYSIS_RUNS[kind]
    total, per = analysis_tokens(ref)
    a = ref.info.get("model_args") or {}
    c = st.columns(4)
    c[0].metric("Tokens scored", f"{total:,}", help="tokens whose loss the command compared with its baseline")
    c[1].metric("Domains", len(per))
    c[2].metric("MoE layers", len(data.moe_layers(ref)))
    c[3].metric("Experts", f"{a.get('n_routed_experts', '?')} · top-{a.get('n_activated_experts', '?')}")
    domain_bars(per, "Tokens scored per domain", "analysis_tokens_per_domain")
    st.caption(f"A `{cmd} --out` run of `{(ref.info.get('checkpoint') or {}).get('path', '?')}` on "
               f"`{(ref.info.get('corpus') or {}).get('path', '?')}`: it holds only the `{kind}` table, no routing, "
               f"loads or tokens of its own; the {page} page shows it.")


def import_details(ref: data.RunRef) -> None:
    """A run imported from a serving engine's dump: where it came from and what it holds."""
    i = ref.info
    src, a = i.get("source") or {}, i.get("model_args") or {}
    c = st.columns(5)
    # the engine in the label, the mode as the value: "sglang · per_token" was cut off at 1400 px (a review)
    c[0].metric(f"Source: {src.get('name')}", str(src.get("mode")), help="the engine and its dump's mode")
    c[1].metric("Forward passes", f"{src.get('passes', 0):,}")
    c[2].metric("Ranks", len(src.get("ranks") or []))
    c[3].metric("MoE layers", len(src.get("moe_layers") or data.moe_layers(ref)))
    # the value kept short (five columns); the note below says what the assumed top-k is and what rests on it
    c[4].metric("Experts", f"{a.get('n_routed_experts', '?')} · top-{a.get('n_activated_experts', '?')}",
                help=f"{_topk(i)}: see the note below" if src.get("topk_assumed") else None)
    pl = src.get("placement")
    has = set(i.get("tables") or [])
    st.markdown(
        f"Imported with `dsv3-probe import {src.get('name')}` from {len(src.get('files') or [])} file(s). "
        + ("Per-token routing and tokens: every routing page applies. " if "routing" in has else
           "Loads per forward pass only (no per-token routing): Load balance and Serving apply; the per-token "
           "pages say what they lack. ")
        + (f"Placement: {pl['physical_experts']} physical experts on {pl['gpus']} GPUs (from `{pl['from']}`)."
           if pl else "No placement in the dump."))
    if src.get("topk_assumed"):
        st.info(f"Imported without `--config`, from counts that do not show the top-k: it was assumed to be "
                f"{a.get('n_activated_experts', '?')} (DeepSeek-V3's), so the tokens per pass (`expert_load.tokens` = "
                "assignments / top-k) rest on it; the loads and their shares do not. Re-import with `--config "
                "config.json` for exact token counts and dense layers.")
    with st.expander("Source files"):
        st.json(src, expanded=True)  # the expander is the fold: a folded `{...}` inside it needed a second click


def train_details(ref: data.RunRef) -> None:
    i = ref.info
    f = i.get("flags") or {}
    c = st.columns(5)
    c[0].metric("Step", f"{i.get('step', 0):,} / {i.get('steps', '?'):,}" if isinstance(i.get('steps'), int)
                else str(i.get("step")))
    c[1].metric("Tokens seen", f"{i.get('tokens_seen', 0):,}")
    c[2].metric("Balancing", str(f.get("balance", "?")))
    c[3].metric("Batch", f"{f.get('batch_size', '?')} × {f.get('seq_len', '?')}")
    fin = i.get("final") or {}
    c[4].metric("Final val loss", f"{fin['val_loss']:.3f}" if "val_loss" in fin else "—")
    domain_bars(i.get("train_tokens") or {}, "Training tokens per domain (corpus)", "train_tokens_per_domain")
    with st.expander("Training flags"):
        st.json(f, expanded=True)  # as the source files above


def health(ref: data.RunRef) -> None:
    st.subheader("Tables and health")
    h = data.file_health(ref)
    if h.empty:
        st.info("No Parquet files yet.")
        return
    bad = h[h.error.notna()]
    for _, r in bad.iterrows():
        st.warning(f"Unreadable Parquet file `{r.file}` ({r.error}): pages that read `{r.table}` show a warning.",
                   icon="⚠️")
    expected = ref.info.get("tables") or []
    missing = [t for t in expected if t not in set(h.table)]
    gone: list[str] = []  # the tables lost whole or in part: not readable
    if missing and ref.status == "complete":
        # a table without rows keeps its folder (the mtp table needs two more tokens after a position
        # in its window); a missing folder, or parts the record's progress names, is a run that lost files
        lost = set(lost_tables(ref.path, ref.info | {"status": ref.status}))
        empty = [t for t in missing if data.table_folder_exists(ref, t) and t not in lost]
        if empty:
            st.info(f"No rows recorded in: {', '.join(empty)} (the run's windows gave these tables nothing to record).")
        if gone := [t for t in missing if t not in empty]:
            st.warning(f"run.json lists tables with no files: {', '.join(gone)}")
    elif missing:
        st.info(f"Not written yet: {', '.join(missing)} (written when the run finishes).")
    if partly := data.partly_lost(ref, tuple(t for t in expected if t not in missing)):
        gone += partly
        st.warning(f"Tables missing part files the run committed: {', '.join(partly)} ("
                   f"{lost_why(ref.path, partly[0], ref.info)}); the pages that read them show a warning")
    summary = h.groupby("table", as_index=False).agg(files=("file", "count"), rows=("rows", "sum"),
                                                     bytes=("bytes", "sum"))
    summary["unreadable"] = summary.table.map(bad.table.value_counts()).fillna(0).astype(int)
    st.dataframe(summary, hide_index=True, width="stretch", height=ui.whole_table_height(len(summary)),
                 column_config={"rows": st.column_config.NumberColumn(format="%d"),
                                "bytes": st.column_config.NumberColumn(format="%d")})
    if not bad.empty or ref.status != "complete":
        if not bad.empty:
            st.caption(f"{len(bad)} of {len(h)} files unreadable.")
    elif not gone:  # said above the table: 'Every table is readable' below a lost one's warning contradicted it
        st.success("Every table is readable.", icon=":material/check_circle:")


def without_run_json(root) -> list[str]:
    """Folders of the runs directory that hold a run's tables but no run.json: no page can read them as
    runs (their kind, model and status are in it), and the runs list left them out without a word."""
    root = Path(root)
    if not root.is_dir():
        return []
    # a hidden folder is a job's own work in progress (an import's .NAME.importing, renamed when whole)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and not (d / "run.json").exists() and any((d / t).is_dir() for t in TABLES))


st.title("Overview")
runs = ui.all_runs()
if lost := without_run_json(ui.runs_dir()):  # a half-written run (a tour)
    st.info(f"Not listed: {', '.join(f'`{n}`' for n in lost[:5])}{' and others' if len(lost) > 5 else ''} "
            f"{'hold' if len(lost) > 1 else 'holds'} a run's tables but no run.json (which names a run's kind, model "
            "and status), so no page can read it as a run. A job that has just started writes it in a moment; "
            "otherwise it was deleted, or not copied with the tables.")
if not runs:
    ui.no_runs()
else:
    paths = ("paths relative to the working folder, or with ~ for the home folder; the run's summary below "
             "names them whole")
    wrapped_table(runs_table(runs), RUN_COLUMNS, {
        "tokens": st.column_config.NumberColumn(format="compact", width=RUN_COLUMNS["tokens"],
                                                help="rounded; the selected run's summary below gives them whole"),
        "corpus": st.column_config.TextColumn(width=RUN_COLUMNS["corpus"], help=paths)})
    with st.expander("Domains and start times"):
        wrapped_table(runs_more_table(runs), MORE_COLUMNS)
    ref = ui.selected_run(("probe", "train", "unknown"))
    if ref is not None:
        st.header(ref.name, divider="gray")
        with ui.guard("the run's summary"):
            if ref.kind == "train":
                train_details(ref)
            elif (ref.info.get("source") or {}).get("name"):
                import_details(ref)
            elif ref.info.get("kind") == "spec":
                spec_details(ref)
            elif ref.info.get("kind") in ANALYSIS_RUNS:
                analysis_details(ref)
            elif ref.kind == "probe":
                probe_details(ref)
            else:
                st.info("Not a probe or training run: only its files are listed.")
        with ui.guard("the health check"):
            health(ref)
