"""Helpers every page uses: the runs directory, the selected run, status banners and the error guard.

A page never shows a traceback: `guard()` turns a missing table into an info box, an unreadable
file into a warning and anything unexpected into an error box naming it, and the rest of the page
(and every other page) keeps working.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from probe.job import DEFAULT_RUNS
from probe.run import lost_why, one_window_cap

from . import charts, data

RUNS_ENV = "DSV3_RUNS_DIR"
RUN_KEY = "run"  # session-state key of the selected run's name


def runs_dir() -> Path:
    """The runs directory: `streamlit run dashboards/app.py -- DIR`, else $DSV3_RUNS_DIR, else the
    repository's runs/ (probe.job.DEFAULT_RUNS, where record writes by default)."""
    return _runs_dir()[0]


def _runs_dir() -> tuple[Path, bool]:
    """(the runs directory, whether it was named: by the command line, the environment or the session)."""
    if "runs_dir" in st.session_state:
        return Path(st.session_state["runs_dir"]), True
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    # under `streamlit run` argv[0] is the app; elsewhere (a test runner) argv is someone else's
    launched = Path(sys.argv[0]).resolve() == (Path(__file__).parent / "app.py").resolve() if sys.argv else False
    if args and (launched or Path(args[0]).is_dir()):
        return Path(args[0]), True
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]), True
    return DEFAULT_RUNS, False


def runs_dir_problem() -> str | None:
    """Why a runs directory the user named cannot be read (a typo served ./runs silently; a review);
    None when it can, or when it is the default runs/ that no record has made yet."""
    path, named = _runs_dir()
    if not named or path.is_dir():
        return None
    return f"Runs directory `{path}`: " + ("is a file, not a directory." if path.exists() else "not found.")


def all_runs() -> list[data.RunRef]:
    return data.discover(runs_dir())


def domain_colors(extra=()) -> dict[str, str]:
    """Every run's domains (from run.json) -> a colour, plus `extra` ones a page found only in a table."""
    doms = set(extra)
    for r in all_runs():
        doms.update(data.domains_of(r))
    return charts.domain_colors(doms)


def kind_text(ref: data.RunRef) -> str:
    """probe, train, or e.g. 'sglang import' for a run imported from a serving engine's dump."""
    src = (ref.info.get("source") or {}).get("name")
    return f"{src} import" if src else ref.kind


def kind_label(ref: data.RunRef) -> str:
    return f"{ref.name}  ·  {kind_text(ref)} · {ref.status}"


def selected_run(kinds: tuple[str, ...] = ("probe", "train")) -> data.RunRef | None:
    """The run picked in the sidebar, or None (with an explanation shown) when there is none usable."""
    runs = all_runs()
    if not runs:
        no_runs()
        return None
    name = st.session_state.get(RUN_KEY)
    ref = next((r for r in runs if r.name == name), runs[0])
    if ref.kind not in kinds:
        other = [r for r in runs if r.kind in kinds]
        what = " or ".join(kinds)
        if not other:
            st.info(f"This page needs a **{what}** run; `{runs_dir()}` has none. "
                    + ("Record one with `dsv3-probe record`." if "probe" in kinds
                       else f"Train one with `python -m train --out {runs_dir()}/NAME`."))
            return None
        # named as the sidebar names it ('sglang import', not the 'probe' kind an import has); a picker only
        # among two or more: one of one, the only train run beside probe runs, changed nothing (a tour)
        shown = "" if len(other) > 1 else f", here `{other[0].name}`"
        st.info(f"`{ref.name}` ({kind_text(ref)}) is not a {what} run: this page shows {what} runs{shown}.")
        pick = (st.selectbox(f"{what.capitalize()} run", [r.name for r in other], key=f"pick_{what}")
                if len(other) > 1 else other[0].name)
        ref = next(r for r in other if r.name == pick)
    status_banner(ref)
    return ref


def no_runs() -> None:
    out = shlex.quote(f"{runs_dir()}/NAME")
    st.info(f"No runs in `{runs_dir()}` yet. Record one with" + command_block(f"dsv3-probe record --out {out}")
            + "train one with" + command_block(f"python -m train --out {out}")
            + "or start the dashboard on another directory: `dsv3-probe dashboard DIR`.", icon="📭")


def status_banner(ref: data.RunRef) -> None:
    if ref.error:
        st.error(f"`{ref.name}`: {ref.error}")
    elif ref.status == "running":
        extra = ""
        if ref.kind == "train":
            extra = f" (step {ref.info.get('step', '?')} of {ref.info.get('steps', '?')})"
        st.info(f"`{ref.name}` is still **running**{extra}: showing what has been committed so far.", icon="⏳")
    elif ref.status in ("interrupted", "failed", "stopped"):  # failed / stopped: training runs of older versions
        hint = "`dsv3-probe record ... --resume`" if ref.kind == "probe" else "`python -m train ... --resume`"
        why = ref.info.get("stop_reason") or ref.info.get("error")
        if ref.info.get("status") == "running":  # data.discover: killed, and run.json still says running
            why = "its job was killed: run.json still says running, and no job holds the run"
        where = f" at step {ref.info['step']}" if ref.kind == "train" and "step" in ref.info else ""
        st.warning(f"`{ref.name}` was **interrupted**{where}{f' ({why})' if why else ''}: its tables hold what was "
                   f"committed before the stop; continue it with {hint}.", icon="⚠️")


def one_domain_note(ref: data.RunRef, doms: list[str], what: str) -> None:
    """Say plainly why a comparison across domains is not drawn for a run with fewer than two."""
    domains_note(what, [(ref, doms)])


def domains_note(what: str, runs: list[tuple[data.RunRef, list[str]]]) -> None:
    """`one_domain_note` of several runs, each with its domains, in one note: the Compare page said it
    twice, near word for word, when neither run had two domains (a tour). A reason the runs share is
    said once."""
    said = [_few_domains(ref, doms) for ref, doms in runs]
    if len({tail for _, tail in said}) == 1:
        body = " and ".join(has for has, _ in said) + said[0][1]
    else:
        body = "; ".join(has + tail.rstrip(".") for has, tail in said) + "."
    st.info(f"{what} compares domains, and {body}", icon="ℹ️")


def _few_domains(ref: data.RunRef, doms: list[str]) -> tuple[str, str]:
    """(what run `ref`, with `doms`, fewer than two, has, what it means: the rest of the sentence)."""
    if not doms:  # no rows yet (a run just started, or tables without rows): not a one-domain corpus
        return f"run `{ref.name}` has no routed tokens yet", "."
    planned = ref.info.get("domains") or []
    if ref.status != "complete" and len(planned) > len(doms):  # the corpus has more, not reached yet
        then = "continue it with `--resume`" if ref.status == "interrupted" else "they come as it records"
        return (f"run `{ref.name}` ({ref.status}) has rows from {len(doms)} of its {len(planned)} domains so far",
                f": {then}.")
    if ref.info.get("kind") == "import":  # serving traffic: one stream, no domains to tell apart
        return (f"run `{ref.name}` is imported serving traffic, one stream (`{doms[0]}`)",
                ": this view is for runs recorded from a corpus of two or more domains.")
    has = f"run `{ref.name}` has {len(doms)} domain{'' if len(doms) == 1 else 's'} (`{doms[0]}`)"
    if why := one_window_cap(ref.info):  # told to record two or more domains, as it had (a tour)
        return has, f": {why}."
    return has, (". Record a corpus with two or more (one sub-folder per domain, or a `domain` field per record); "
                 "with `--max-tokens` the default `--order domains` takes tokens from every domain.")


@contextmanager
def guard(what: str = "this section"):
    """Show a failure of `what` in the page instead of raising."""
    try:
        yield
    except data.MissingTable as e:
        st.info(f"{str(e)[:1].upper()}{str(e)[1:]}: cannot show {what}.", icon="ℹ️")
    except data.DataError as e:
        st.warning(f"{e}. {what[:1].upper()}{what[1:]} is skipped; the other pages still work.", icon="⚠️")
    except Exception as e:  # noqa: BLE001 - a page must never show a traceback
        if type(e).__name__ in ("StopException", "RerunException", "RerunData"):
            raise
        st.error(f"Could not draw {what}: {type(e).__name__}: {e}")


def rows(what: str, load, empty: str):
    """`load()`'s frame, read under `guard(what)`; None once the page has said why there is nothing to
    draw: the read failed (guard's message), or it has no rows (`empty`)."""
    df = None
    with guard(what):
        df = load()
        if df.empty:
            st.info(empty)
    return None if df is None or df.empty else df


def result_table(ref: data.RunRef, table: str, load, missing: str):
    """A job's result table of the run (`load(ref)`), or None after saying why there is nothing to
    draw: `missing` (how to compute it) when the run has no such table, a line when it has no rows.
    Call it inside `guard`, which turns a failing read into a message."""
    if not data.has_table(ref, table):
        st.info(missing, icon="ℹ️")
        return None
    df = load(ref)
    if df.empty:
        st.info(f"The {table} table is empty.")
        return None
    return df


def all_held_out_note(ref: data.RunRef, what: str, where=st) -> None:
    """Say why a held-out accuracy is missing: it is learned on 4 of every 5 windows of each domain and
    scored on the 5th, its first window included, so a run of one window a domain (a low --max-tokens)
    has nothing to learn from. The chart was drawn empty and the metric read 'nan%' (a tour)."""
    where.info(f"{what} is learned on 4 of every 5 windows of each domain and scored on the 5th, the first "
               f"included; the windows read of run `{ref.name}` hold one per domain, all held out, so there is "
               "nothing to learn from. Record two windows or more per domain (a larger `--max-tokens`).", icon="ℹ️")


def left_out_note(df, where=st, unmeasured: str | None = None) -> None:
    """Say which domains a held-out score leaves out (its `left_out` column): a domain of one window in the
    windows read is held out whole and never trained on, so the metric scores the others only, in the
    sentence the report and the notebooks say (`analyses.metrics.left_out_note`). `unmeasured`: the score
    that is not measured because fewer than two domains are left to train on. Nothing when none is left out."""
    from analyses.metrics import left_out_note as note

    said = note(df)
    if said:
        tail = f" {unmeasured} needs two domains or more to train on, so it is not measured." if unmeasured else ""
        where.info(said + tail, icon="ℹ️")


def analysis_command(ref: data.RunRef, module: str, flags: str = "") -> str:
    """The command line that writes `analyses.<module>`'s results into `ref`. An imported run has no
    checkpoint or corpus of its own and the command refuses it without --ckpt and --corpus: the pages
    offered it bare, a line that could only fail (a tour)."""
    cmd = f"python -m analyses.{module} --run {path_arg(ref.path)}"
    if (ref.info.get("source") or {}).get("name"):
        cmd += " --ckpt CKPT --corpus CORPUS"
    return cmd + (f" {flags}" if flags else "")


def path_arg(path) -> str:
    """`path` as a command the pages offer gives it to a shell: relative to the working folder when inside it
    (the runs/ the dashboard was started beside, as a user types it; the whole path ran the Serving page's
    command past its box), quoted where it needs to be (a path with a space was two arguments, and the
    Serving page's command did not quote it: a review)."""
    p = Path(str(path))
    p = relative_inside(p, Path.cwd()) or p
    # a relative path that starts with '-' reads as an option: `--run -runs/r` is argparse's 'expected one
    # argument' (the whole path, /.../-runs/r, was not; a review)
    return shlex.quote(f"./{p}" if str(p).startswith("-") else str(p))


def relative_inside(path: Path, base: Path) -> Path | None:
    """`path` relative to `base` where it is an absolute path inside it (not `base` itself), else None: how
    the pages shorten a path, in commands (`path_arg`) and in tables (the Overview's `short_path`)."""
    if path.is_absolute() and path.is_relative_to(base) and path != base:
        return path.relative_to(base)
    return None


def command_block(cmd: str) -> str:
    """`cmd` as a Markdown code block of its own, for a message that gives a command to run, with the code
    block's copy button; longer than `COMMAND_WIDTH`, in lines as `command_lines` breaks it. As inline code
    a command longer than its line broke where the browser chose, once between the two hyphens of
    `--control` (`-` at a line's end, `-control` on the next; a tour at 1024 px)."""
    return f"\n\n```bash\n{command_lines(cmd)}\n```\n\n"


# characters of a line that the narrowest box shows whole: a message's (st.info) at 1024 px, 502 px at 8.4 px a
# character less 2 x 16 px of padding (Chromium, 2026-12-07)
COMMAND_WIDTH = 55


def command_lines(cmd: str, width: int = COMMAND_WIDTH) -> str:
    """`cmd` as the lines a shell reads as one command: where it is longer than `width`, broken before an
    option (`--x` and its values stay on one line), each line but the last ending in ` \\`, the next
    indented. On one line the Serving page's placement command ran past its box at 1400 px, its
    `--out plan.json` cut to `plan.jso` behind a scroll bar (the README's screenshot)."""
    if len(cmd) <= width:
        return cmd
    parts: list[list[str]] = [[]]
    for word in shlex.split(cmd):
        if word.startswith("--") and parts[-1]:
            parts.append([])
        parts[-1].append(shlex.quote(word))
    lines = [" ".join(parts[0])]
    for part in (" ".join(words) for words in parts[1:]):
        if len(lines[-1]) + len(part) + 3 <= width:  # the part, its space and the line's ' \'
            lines[-1] += " " + part
        else:
            lines.append("    " + part)
    return " \\\n".join(lines)


def whole_table_height(n_rows: int, most: int = 40, row: int = 35) -> int:
    """Pixels for st.dataframe to show its header and up to `most` rows without a scroll bar of its
    own (`row` px a row: 35, Streamlit's, unless its row_height says otherwise; its default height
    stops at 10 rows, which hid the end of short tables such as a run's options and its tables' health)."""
    return 38 + row * max(1, min(n_rows, most))


# each character's width in px in the tables' font (Streamlit's Source Sans at 14 px, as Chromium measures it,
# 2026-12-06, rounded up to half a pixel); any other (…, CJK) a whole 14 px. A flat 7 px a character, 34 to the
# options' value column, let MMLU-WMT-MGSM-HU…ANEVAL-2026.jsonl (255 px) run past its 239 px, its end cut off,
# and showed a lowercase path in two thirds of it (a tour, at 1400 px)
_GLYPH_PX = {3.0: " ", 3.5: "',.:;ij|", 4.0: "Il", 4.5: "!()-[]f{}", 5.0: "/\\rt", 6.0: '"*?sz', 6.5: "cx",
             7.0: "0123456789#$+<=>FJLY^_ekvy~", 7.5: "ESVXag", 8.0: "ACPRTZ`bdhnopqu", 8.5: "BK", 9.0: "&DG",
             9.5: "HNOQU", 10.5: "Mw", 11.5: "W", 12.0: "%@m"}
GLYPH_PX = {c: w for w, chars in _GLYPH_PX.items() for c in chars}


def text_px(text: str) -> float:
    """`text`'s width in px in the tables' font (`GLYPH_PX`), an estimate no narrower than Chromium draws it."""
    return sum(GLYPH_PX.get(c, 14.0) for c in text)


CELL_PAD_PX = 16  # px: a table cell's padding, left and right together


def cell_lines(text: str, width: int) -> int:
    """The lines `text` takes in a column `width` px wide, wrapped at spaces as the table does (a word
    longer than a line broken where the line ends), each word measured by `text_px`, as the Overview's `fit_path`
    measures the paths. A flat 7 px a character made the bundled model's `4 layers, dim 192, 32 experts
    (top-4)`, two lines in the 140 px column in Chromium, three: every row a line taller than its text."""
    if "\n" in str(text):  # a line break of its own (`break_name`): each line wrapped on its own
        return sum(cell_lines(line, width) for line in str(text).split("\n"))
    room, lines, used = max(1.0, width - CELL_PAD_PX), 1, 0.0
    for word in str(text).split():
        w = text_px(word)
        if used and used + GLYPH_PX[" "] + w > room:
            lines, used = lines + 1, 0.0
        used += w + (GLYPH_PX[" "] if used else 0.0)
        while used > room:  # a word past the line's end
            lines, used = lines + 1, used - room
    return lines


def break_name(name: str, width: int) -> str:
    """`name` for a cell `width` px wide: where longer than a line, a line break after the `-`, `_` or `.`
    that ends as much of it as fits a line (`text_px`). The table breaks a word longer than its line
    where the line ends, mid-name (`demo-finetun` / `ed` in the 1024 px window's 104 px run column)."""
    room, lines = width - CELL_PAD_PX, [""]
    for part in re.split(r"(?<=[-_.])", name):
        if lines[-1] and text_px(lines[-1] + part) > room:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def row_lines(table, columns: dict[str, int]) -> int:
    """The lines the tallest row of a table of `columns` needs (at most 4), its text wrapped at their widths
    (`cell_lines`); a number takes one line."""
    return min(4, max((cell_lines(v, w) for c, w in columns.items() if table[c].dtype.kind not in "biuf"
                       for v in table[c]), default=1))


# a table's room at 1024 px, the narrowest window the dashboard is laid out for, with the sidebar open: the
# page's column is 562 px (938 at 1400 px), an expander's box inside it 528; a table whose rows may outgrow
# its height spares a vertical scroll bar's 15 px. Columns of widths that fit this room together do not
# scroll sideways there, and wider windows stretch every column by as much (`wrapped_table`)
PAGE_PX, EXPANDER_PX, SCROLL_BAR_PX = 562, 528, 15


def wrapped_table(table, columns: dict[str, int], config: dict | None = None, key: str | None = None,
                  most: int = 10) -> None:
    """`table` in columns of `columns`' widths, its rows as tall as its longest cell's lines: a cell longer
    than its column wraps, which Streamlit allows in rows taller than 4rem, taken only when a value is that
    long (and then the `most` rows the table shows before it scrolls, in rows that tall). `config`: the
    columns' `st.column_config` (a format, a shorter label with the whole name as its help), each given
    its width in `columns`. Streamlit sized each column to its header and values, and a table of many
    columns scrolled sideways in the page's column at 1024 px (Load balance, Specialisation, Co-activation,
    Compare runs; a tour)."""
    lines = row_lines(table, columns)
    row = 26 + 22 * lines if lines > 1 else None
    shown = {c: v for c, v in (config or {}).items() if c in table.columns}
    for c, w in columns.items():
        shown[c] = dict(shown.get(c) or {})
        shown[c]["width"] = shown[c].get("width") or w
    st.dataframe(table, hide_index=True, width="stretch", row_height=row, key=key,
                 height=whole_table_height(len(table), most, row or 35) if row or most != 10 else "auto",
                 column_config=shown)


def layer_picker(layers: list, key: str, label: str = "MoE layer", index: int = 0, ref: data.RunRef | None = None):
    """A layer from `layers`: labels as they are, or the tables' layer numbers with `ref` (shown as
    `data.layer_label`, 'layer 3'). `LAYER_PICKER_PX` wide wherever it stands: in a third of the page's
    width, it shrank to 90 px in the Serving page's right half at 1024 px and showed `layer` (a tour)."""
    if not layers:
        return None
    shown = (lambda x: data.layer_label(ref, x)) if ref is not None else str
    return st.selectbox(label, layers, index=min(index, len(layers) - 1), key=key, format_func=shown,
                        width=LAYER_PICKER_PX)


LAYER_PICKER_PX = 180  # a third of the page's 548 px at 1024 px, as the picker took at the top of a page


def lacks_per_token(ref: data.RunRef, what: str) -> bool:
    """Whether the run lacks the per-token `tokens` or `routing` table that `what` reads (an SGLang stat
    or per-pass dump holds loads only); if so, one note says which and what to record. Each section
    of such a run said 'has no `tokens` table' in a box of its own, under pickers with nothing to pick
    and a caption of the ~250,000 tokens it sampled (a browser tour)."""
    missing = [t for t in ("tokens", "routing") if not data.has_table(ref, t)]
    if lost_note(ref, ("tokens", "routing"), what):
        return True
    if missing:
        st.info(f"{what} needs the per-token `tokens` and `routing` tables, and run `{ref.name}` has "
                f"no {' and no '.join(f'`{t}`' for t in missing)} table"
                f"{data.why_missing(ref, tuple(missing), data.RECORD_PER_TOKEN)}.", icon="ℹ️")
    return bool(missing)


def lost_note(ref: data.RunRef, tables: tuple[str, ...], what: str) -> bool:
    """Whether the complete run `ref` has lost one of `tables` whole (its folder deleted, run.json listing
    it: `data.whole_lost`); if so, one warning says which and why. Such a run read as one that never had
    the table: its per-token sections said 'has no `routing` table. Record a run with `dsv3-probe record`'
    while the Overview warned that the table was lost (a hunt)."""
    lost = data.whole_lost(ref, tables)
    if lost:
        st.warning(f"{what} reads {' and '.join(f'`{t}`' for t in tables)}, and run `{ref.name}` cannot read "
                   f"`{lost[0]}` ({lost_why(ref.path, lost[0], ref.info)}).", icon="⚠️")
    return bool(lost)


ENGINES = {"sglang": "SGLang"}  # run.json source names as the engines spell themselves


def engine_lacks(ref: data.RunRef, tables: tuple[str, ...], what: str) -> bool:
    """Whether `ref` is a serving engine's import without any of `tables`, which its dumps never hold;
    if so, one note says so. An SGLang import's Latent KV page said 'has no `kv_spectrum` table' and
    'has no `kv_stats` table' in a box each, its MTP page 'has no `mtp` table' above a hint to run
    `dsv3-probe spec` on it: read as lost tables, or as a flag the import missed (a browser tour)."""
    source = (ref.info.get("source") or {}).get("name")
    if not source or any(data.has_table(ref, t) for t in tables):
        return False
    st.info(f"Run `{ref.name}` is imported from {ENGINES.get(source, source)}'s dumps, which record expert loads (and, per token, "
            f"routing), not {what}: record a run with `dsv3-probe record` for this page.", icon="ℹ️")
    return True


def caption_sample(ref: data.RunRef) -> None:
    held = data.tokens_in_run(ref)
    if held and held <= data.SAMPLE_TOKENS:
        st.caption(f"Per-token view over all {held:,} tokens of the run.")
    else:
        st.caption(f"Per-token view over the first ~{data.SAMPLE_TOKENS:,} tokens of the run "
                   "(aggregate views use every token).")


@st.cache_resource(show_spinner=False)
def _tokenizer(path: str, digest: str):
    """The tokenizer in file `path`, kept for its bytes' sha256 `digest`: kept by path alone, a file written
    over with another run's tokenizer read as the first one loaded (a review)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def tokenizer_for(ref: data.RunRef):
    """The run's tokenizer (`tokenizer_file`), or None, said on the page above the token texts, which then
    show ids (`token_text`): a tokenizer other than the run's showed other tokens' texts without a word (a
    review)."""
    path, why = tokenizer_file(ref)
    if path is not None:
        try:
            from probe.corpus import fingerprint

            return _tokenizer(path, fingerprint(path))
        except Exception as e:  # noqa: BLE001 - an unreadable tokenizer only costs us the text
            why = f"its tokenizer {path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    st.info(f"Token texts are shown as ids (#id): {why}.", icon="ℹ️")
    return None


def tokenizer_file(ref: data.RunRef) -> tuple[str | None, str | None]:
    """(the run's tokenizer file, None), or (None, why there is none), as `probe.tokenizer_identity.
    run_tokenizer_file` decides it for the jobs too: the file run.json names (a record's path, resolved;
    the option as typed), else the checkpoint's tokenizer.json, else a training run's --tokenizer; a file
    whose sha256 is not the one run.json recorded is not the run's (its token ids would read as other text),
    and one elsewhere that holds the run's bytes stands in for it (the checkpoint's copy of a --tokenizer
    tok.json is the same tokenizer; a run recorded before run.json kept a sha256 has none: a copy is known by
    it)."""
    from probe.tokenizer_identity import run_tokenizer_file, tokenizer_refusal

    found = run_tokenizer_file(ref.info, copies=True)
    if found.path is not None:
        return found.path, None
    if found.why == "unnamed":
        return None, tokenizer_refusal(found)
    gone = f"the tokenizer it was recorded with, {found.named}, is no longer there" if found.why in (
        "gone", "relative") else ""
    other = found.others and (f"{' and '.join(found.others)} {'is' if len(found.others) == 1 else 'are'} not the "
                              "run's tokenizer (sha256 not the one run.json keeps)")
    return None, "; ".join(filter(None, (gone, other)))


def token_text(tok, ids, stream: bool = True) -> list[str]:
    """Display text of each token id (ids only when the tokenizer is missing), from the bytes each
    stands for (probe/token_text.py, as `TextCodec.str_tokens` and the report read them).

    stream=True (a run of consecutive tokens): the tokens' bytes are decoded as one UTF-8 stream, so
    a character split over several tokens (CJK, emoji) appears on the token that completes it; the
    tokens before it show "·". stream=False (unrelated tokens): each on its own between quotes, as
    repr() writes it, a byte of a partial character as an escape ('\\xe5\\xad')."""
    if tok is None:
        return [f"#{int(i)}" for i in ids]
    import codecs

    from probe.token_text import text_of, token_bytes

    dec, out = codecs.getincrementaldecoder("utf-8")(errors="replace"), []
    for i, raw in zip(ids, token_bytes(tok, ids)):
        if raw is None:
            out.append(f"#{int(i)}")
        elif not stream:
            out.append(f"'{text_of(raw, quoted=True)}'")
        else:
            out.append(dec.decode(raw) or "·")
    return out


_MARKDOWN_CHARS = "\\`*_{}[]()#+-!|$~<>&\"'"

# Every page's style, set once by app.py. Inline code (a flag, a file, a table, a command) is an inline
# block: one that fits on a line is never broken inside, so it moves to the next line whole (the browser
# broke `--max-tokens` at its hyphen, `--max-` at one line's end, `tokens` at the next's), and only one
# longer than the whole line wraps inside it. Code blocks keep their own scroll bar: their `code` is not
# the `pre`'s child but a `div`'s (`:not(pre) > code` clamped it to the box, the text's end then flush
# with the box's edge when scrolled there). A name's
# parts (`code_html`) are inline blocks as well, so one longer than the line wraps inside it: kept on one
# line (nowrap), a long folder's name ran past the box and was cut at the sidebar's or the column's edge.
# A metric's value shrinks with the window (36 px from 1470 px up, 33.6 px at 1400, 20.4 px at 1024), and its
# label and delta wrap: in a row of five at 1024 px (100 px a column) Streamlit cut them off with an ellipsis
# (`32 · …`, `Distinct pa…`, `-0.082 vs …`; a tour). At 24.6 px there (2.4vw) DeepSeek-V3's `256 · top-8`
# took 107 px, an import's `per_token` 105 and a long training run's `11,468,800` tokens 110 (a tour).
PAGE_CSS = """<style>
:is([data-testid="stMarkdownContainer"], [data-testid="stCaptionContainer"]) code:not(pre code) {
  display: inline-block; max-width: 100%; }
code.dsv3-name > span { display: inline-block; max-width: 100%; overflow-wrap: anywhere; }
[data-testid="stMetricValue"] { font-size: clamp(1.25rem, calc(3.5vw - 15.4px), 2.25rem); }
:is([data-testid="stMetricLabel"], [data-testid="stMetricDelta"]) :is([data-testid="stMarkdownContainer"], p, div) {
  white-space: normal; }
</style>"""


def page_style() -> None:
    """The app's CSS (`PAGE_CSS`): only style tags, which Streamlit places without a gap in the page."""
    st.html(PAGE_CSS)


def code_html(name, after: str = "/") -> str:
    """`name` as inline code for HTML markdown (`unsafe_allow_html=True`) that a line may break after an
    `after` only (a path's `/`, a module's `.`): each part is kept whole where it fits a line (one longer
    wraps inside itself; `PAGE_CSS`), a `<wbr>` after its separator.
    A path longer than its line broke wherever the line ended, mid-name (`val.jso` on one line, `nl` on
    the next; a tour at 1024 px)."""
    parts = str(name).split(after)
    spans = [f"<span>{html_text(p + after)}</span>" for p in parts[:-1]] + [f"<span>{html_text(parts[-1])}</span>"]
    return '<code class="dsv3-name">' + "<wbr>".join(spans) + "</code>"


def html_text(s: str) -> str:
    """Text for an HTML snippet passed to st.markdown: every markup character as an entity, so
    neither HTML, Markdown (a backslash, `*`, `_`) nor LaTeX (`$`) can act on it."""
    return "".join(f"&#{ord(c)};" if c in _MARKDOWN_CHARS else c for c in s)
