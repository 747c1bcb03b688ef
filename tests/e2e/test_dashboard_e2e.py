"""End to end: the real `streamlit run` server, every page opened in headless Chromium (Debian
`chromium`, driven by Python `playwright` through `executable_path`), in a 1024 px window, plotly
charts rendered, no error text, no name in the text broken over two lines, no metric cut off;
screenshots saved under a folder the test prints. The test reaches the pages as a user
does, through the sidebar (the first and last by their URLs): loading each URL afresh reloads the
whole frontend and took 40 s for the twelve pages, against 25 s this way.

Also a screenshot tool, for any pages of a run (the README's eight: tests/e2e/readme_screenshots.py):

    python tests/e2e/test_dashboard_e2e.py RUNS_DIR OUT_DIR [RUN_NAME [PAGE,PAGE...]]   # one PNG per page
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # torchrun launches, a browser or notebook kernels: `pytest -m "not slow"` skips them

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboards" / "app.py"
CHROMIUM = os.environ.get("DSV3_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-extensions", "--no-first-run", "--mute-audio"]
# url path -> (title, plotly charts expected on the `demo` run)
PAGES = {
    "": ("Overview", 1), "load_balance": ("Load balance", 4), "specialisation": ("Specialisation", 4),
    "token_explorer": ("Token explorer", 2), "coactivation": ("Co-activation & flow", 3),
    "serving": ("Serving", 3),
    "latent_kv": ("Latent KV", 3), "mtp": ("MTP", 6), "ablations": ("Ablations", 5),
    "steering": ("Steering", 1), "compare": ("Compare runs", 6), "training": ("Training", 6),
}
ERROR_SELECTORS = ['[data-testid="stException"]', '[data-testid="stAlertContentError"]']
ERROR_TEXT = ("Traceback (most recent call last)", "StreamlitAPIException", "Could not draw")
# inline code of one word (a flag, a file, a table; not a name in `ui.code_html`, which may break after a
# slash or a dot) drawn over more than one line: the lines its text's boxes stand on
BROKEN_CODE = ("[...document.querySelectorAll(':is([data-testid=\"stMarkdownContainer\"], "
               "[data-testid=\"stCaptionContainer\"]) :not(pre) > code')]"
               ".filter(e => !e.closest('[data-stale=\"true\"]') && !e.classList.contains('dsv3-name') "
               "&& !/\\s/.test(e.textContent.trim())).filter(e => { const r = document.createRange(); "
               "r.selectNodeContents(e); return new Set([...r.getClientRects()].filter(b => b.width > 0)"
               ".map(b => Math.round(b.top))).size > 1; }).map(e => e.textContent)")
# a name in `ui.code_html` (a path, a module) wider than its box: a part of it longer than the line ran past
# the box's edge and was cut off there (the sidebar's runs directory, a long corpus file's name; a tour)
CUT_NAMES = ("[...document.querySelectorAll('code.dsv3-name')].filter(e => !e.closest('[data-stale=\"true\"]') "
             "&& e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
# a code block (a command to copy) whose text, scrolled to its end, meets the box's edge instead of ending the
# space from it that it starts from: the page's rule for inline code reached the block's own `code` (a `div`,
# not the `pre`, is its parent) and clamped it to the box, which then scrolled by the text alone
BLOCK_END = ("[...document.querySelectorAll('[data-testid=\"stCode\"] pre')].filter(e => "
             "!e.closest('[data-stale=\"true\"]') && e.scrollWidth > e.clientWidth).filter(e => { "
             "const r = document.createRange(); r.selectNodeContents(e.querySelector('code')); "
             "const box = () => e.getBoundingClientRect(), rects = () => [...r.getClientRects()].filter(b => b.width > 0); "
             "e.scrollLeft = 0; const lead = Math.min(...rects().map(b => b.left)) - box().left; "
             "e.scrollLeft = e.scrollWidth; const tail = box().right - Math.max(...rects().map(b => b.right)); "
             "e.scrollLeft = 0; return tail < lead - 1; }).map(e => e.textContent.slice(0, 60))")
# a code block (a command to copy) wider than its box: the reader scrolls it to see its end (the Serving page's
# placement command, cut at `--out plan.jso` in the README's screenshot, before dashboards.ui.command_lines)
SCROLLED_CODE = ("[...document.querySelectorAll('[data-testid=\"stCode\"] pre')].filter(e => "
                 "!e.closest('[data-stale=\"true\"]') && e.scrollWidth > e.clientWidth + 1)"
                 ".map(e => e.textContent.slice(0, 60))")
# a table wider than its box (the columns' widths together past the page's column): the reader scrolls it
# sideways to see its last columns; each as its width over its box's
WIDE_TABLES = ("[...document.querySelectorAll('[data-testid=\"stDataFrame\"] .dvn-scroller')]"
               ".filter(e => !e.closest('[data-stale=\"true\"]') && e.scrollWidth > e.clientWidth + 1)"
               ".map(e => `${e.scrollWidth} px in ${e.clientWidth} px`)")
# the pages whose tables are fitted to the page's column at 1024 px (the test asserts none wider than its box)
FITTED = ("overview", "load_balance", "specialisation", "coactivation", "compare", "ablations")
# a metric's label, value or delta cut off at its column's edge (Streamlit ends it with an ellipsis)
CUT_METRICS = ("[...document.querySelectorAll('[data-testid=\"stMetric\"] [data-testid=\"stMarkdownContainer\"]')]"
               ".filter(e => !e.closest('[data-stale=\"true\"]') && e.scrollWidth > e.clientWidth + 1)"
               ".map(e => e.textContent)")

# a chart's legend over its x axis's title (their boxes overlapping): hung below the plot at a share of its
# height, a legend of two or three rows rose over `share of routed experts disabled` and `step` (a tour)
LEGEND_OVER_TITLE = ("[...document.querySelectorAll('.js-plotly-plot')].filter(e => !e.closest('[data-stale=\"true\"]'))"
                     ".filter(e => { const t = e.querySelector('.xtitle'), l = e.querySelector('.legend'); "
                     "if (!t || !l) return false; const a = t.getBoundingClientRect(), b = l.getBoundingClientRect(); "
                     "return a.bottom > b.top + 1 && a.top < b.bottom - 1 && a.right > b.left && a.left < b.right; })"
                     ".map(e => e.querySelector('.gtitle')?.textContent)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run dashboards/app.py -- RUNS_DIR` on a free port, headless."""

    def __init__(self, runs_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(self.port), "--browser.gatherUsageStats",
               "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer", "--", str(runs_dir)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=os.environ | {"DSV3_RUNS_DIR": str(runs_dir)})
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}; log: {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"streamlit did not answer on {self.url} within 90 s; log: {log}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def open_page(page, url: str, title: str, charts: int | None, timeout_ms: int = 90_000, settle_ms: int = 800,
              click: bool = False) -> dict:
    """Load one page, wait until the script has finished and the charts are drawn; returns findings.
    charts: how many plotly charts the page must draw (the test's runs), or None: as many as it
    places, however many that is (a user's runs directory, where a page may hold a message instead,
    e.g. Training without a training run).
    click: follow the sidebar's link to `url` (the app stays loaded, as when a user navigates) instead
    of loading `url` afresh (a deep link: the whole frontend again, twice the time)."""
    if click:
        page.locator(f'[data-testid="stSidebarNav"] a[href="{url}"]').click()
        path = urllib.parse.urlsplit(url).path  # the app adds the selected run to the query
        page.wait_for_url(lambda u: urllib.parse.urlsplit(u).path == path, timeout=timeout_ms)
    else:
        page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=timeout_ms)
    # charts of this page: the previous page's elements stay in the DOM, marked stale, until replaced
    if charts is not None:
        page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot .main-svg')]"
                               f".filter(e => !e.closest('[data-stale=\"true\"]')).length >= {charts}",
                               timeout=timeout_ms)
    # the page's script has finished: the app says so (the heading above came from this page's run, so
    # "notRunning" is its end, not the state before it began), the "running" widget is gone and no
    # element of the previous page is left
    page.wait_for_function("document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === "
                           "'notRunning' && !document.querySelector('[data-testid=\"stStatusWidget\"] button') "
                           "&& !document.querySelector('[data-stale=\"true\"]')", timeout=timeout_ms)
    if charts is None:  # every chart the script placed has drawn
        page.wait_for_function("[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                               ".every(e => e.querySelector('.main-svg'))", timeout=timeout_ms)
    page.wait_for_timeout(settle_ms)  # plotly's transitions
    body = page.inner_text("body")
    return {"charts": page.locator(".js-plotly-plot").count(),
            "errors": sum(page.locator(s).count() for s in ERROR_SELECTORS),
            "error_text": [t for t in ERROR_TEXT if t in body],
            # tables whose rows scroll inside them (a reader of the page sees only the first ones)
            "tables_cut": page.evaluate("[...document.querySelectorAll('[data-testid=\"stDataFrame\"] "
                                        ".dvn-scroller')].filter(e => e.scrollHeight > e.clientHeight + 2).length"),
            "wide_tables": page.evaluate(WIDE_TABLES),
            "broken_code": page.evaluate(BROKEN_CODE), "cut_metrics": page.evaluate(CUT_METRICS),
            "cut_names": page.evaluate(CUT_NAMES), "block_end": page.evaluate(BLOCK_END),
            "scrolled_code": page.evaluate(SCROLLED_CODE),
            "legend_over_title": page.evaluate(LEGEND_OVER_TITLE)}


def shoot(page, path: Path, width: int, height: int, max_height: int = 5000, settle_ms: int = 700,
          whole: bool = True) -> None:
    """Screenshot the whole page: Streamlit scrolls inside its main container, so the viewport is
    stretched to the container's height first (plotly then lays every chart out again). whole=False:
    the viewport as it is (what the test needs to see a page drawn; 4 s less over the twelve)."""
    if not whole:
        page.screenshot(path=str(path))
        return
    h = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                      "[data-testid=stAppViewContainer], section')].map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": width, "height": int(min(max(h, height), max_height))})
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": width, "height": height})


def browse(runs_dir: Path, out_dir: Path, pages: dict = PAGES, run: str | None = None,
           width: int = 1400, height: int = 1000, settle_ms: int = 800, navigate: bool = False,
           whole: bool = True, counts: bool = True) -> dict[str, dict]:
    """Start the server, open every page, screenshot each into out_dir; returns findings per page.
    `settle_ms`: the wait for plotly's transitions before reading and shooting a page (the README's
    screenshots use the default; the test, which checks errors and charts, waits less).
    `navigate`: reach the pages between the first and the last through the sidebar, as a user does,
    the first and last through their own URLs (deep links); otherwise (and with `run`, which rides in
    the URL) every page through its URL. `whole`: screenshots of the whole page (else the viewport).
    `counts`: wait for each page's count of charts in `pages` (the test's runs); False: for whatever
    charts each page places (any runs directory)."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    server = Server(runs_dir, out_dir / "streamlit.log")
    found, js_errors = {}, []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda e: js_errors.append(str(e)))
            # throw-away load that warms the server up: a deep link, the first request the server sees, as
            # from a bookmark (with the pages in a folder named `pages/`, Streamlit served such a link the
            # page's file on its own, without app.py: a bare list of file names in the sidebar, no run picker)
            page.goto(f"{server.url}/load_balance", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Load balance", exact=True).first.wait_for(timeout=120_000)
            page.wait_for_function("document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState "
                                   "=== 'notRunning'", timeout=60_000)
            found["_first_deep_link_nav"] = page.inner_text('[data-testid="stSidebarNav"]')
            if run:
                page.goto(server.url)
            for i, (path, (title, n)) in enumerate(pages.items()):
                url = f"{server.url}/{path}" + (f"?run={run}" if run else "")
                click = navigate and not run and 0 < i < len(pages) - 1
                t = time.time()
                found[path or "overview"] = open_page(page, url, title, n if counts else None, settle_ms=settle_ms,
                                                      click=click)
                found[path or "overview"]["seconds"] = round(time.time() - t, 1)
                shoot(page, out_dir / ((path or "overview") + ".png"), width, height, settle_ms=settle_ms, whole=whole)
            browser.close()
    finally:
        server.close()
    found["_js_errors"] = js_errors
    return found


def have_chromium() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    from helpers.dashboard_runs import dashboard_runs

    return dashboard_runs(probe_env, tmp_path_factory)


def test_every_page_in_a_real_browser(runs, tmp_path_factory, capsys):
    if not have_chromium():
        msg = f"{CHROMIUM} not found: install Debian `chromium` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = Path(os.environ.get("DSV3_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    t = time.time()
    # a narrow window (1024 px, the sidebar open): where a name in the text is likeliest to meet a line's end
    # served through a folder name longer than the sidebar's line, which names the runs directory
    served = runs["good"].parent / "runs_served_through_a_folder_name_longer_than_a_line_of_the_sidebar"
    if not served.exists():
        served.symlink_to(runs["good"], target_is_directory=True)
    found = browse(served, out, width=1024, settle_ms=100, navigate=True, whole=False)
    with capsys.disabled():  # shown even when pytest captures output
        print(f"\nscreenshots of every page: {out} ({time.time() - t:.1f} s; seconds to open each: "
              + ", ".join(f"{k} {v['seconds']}" for k, v in found.items() if not k.startswith("_")) + ")")
    assert found.pop("_js_errors") == []
    nav = found.pop("_first_deep_link_nav").splitlines()
    assert "Routing" in nav and "Load balance" in nav and "app" not in nav, nav  # the app's navigation
    for page, f in found.items():
        assert f["errors"] == 0 and not f["error_text"], (page, f)
        assert f["broken_code"] == [], (page, f["broken_code"])  # a flag or a file's name split over two lines
        assert f["cut_metrics"] == [], (page, f["cut_metrics"])  # `32 · …` in a row of five metrics
        assert f["cut_names"] == [], (page, f["cut_names"])  # a path's long folder name run past its box
        assert f["block_end"] == [], (page, f["block_end"])  # a command's code block, its end at the box's edge
        assert f["legend_over_title"] == [], (page, f["legend_over_title"])  # `step` under the legend's rows
        assert (out / f"{page}.png").stat().st_size > 10_000, page
    # the overview's short tables (the run's options, its tables' health) and the specialisation page's
    # (an expert's 15 top tokens scrolled inside a 250 px table, its 7th row cut in half) show every row
    assert found["overview"]["tables_cut"] == 0, found["overview"]
    assert found["specialisation"]["tables_cut"] == 0, found["specialisation"]
    # every table's columns in view at 1024 px (the narrowest the dashboard is laid out for): the Overview's
    # runs table took 930 px of the page's 562, tokens, domains and started behind a sideways scroll up to
    # a window of about 1,400 px (a tour); Load balance's metrics 596 px, Specialisation's token-id
    # dependence 790 px, its domain-specific experts 406 in their 328 and top tokens 453 in 413, Co-activation's
    # common paths 740 px and paths per domain 341 in the 216 beside a chart, Compare's changed tokens 528
    # in the 328 beside a chart, Ablations' sweep 823 px and its experts whose ranks disagree 480 in the 328
    # beside a chart (a tour)
    wide = {page: found[page]["wide_tables"] for page in FITTED if found[page]["wide_tables"]}
    assert wide == {}, wide


def test_the_overview_metrics_of_a_deepseek_v3_import_fit_at_1024_px(tmp_path):
    """An SGLang import of DeepSeek-V3 (256 experts, top-8, a per_token dump): in the Overview's row of five
    metrics at 1024 px, `256 · top-8` took 107 px and `per_token` 105 of their columns' 100, cut off by an
    ellipsis (a tour; the runs of the test above have 32 experts at most). One page in a browser of its own."""
    import json

    from playwright.sync_api import sync_playwright

    from helpers import sglang_dumps as sg
    from probe.sglang import import_sglang

    if not have_chromium():
        pytest.fail(f"{CHROMIUM} not found: install Debian `chromium` (.ci/run does)")
    passes = sg.traffic(seed=1, passes=2)
    run = tmp_path / "runs" / "v3"
    import_sglang(sg.write_per_token(tmp_path / "pt", passes, sg.physical_map())[0].parent, run,
                  config=str(sg.config(tmp_path / "model")))
    info = json.loads((run / "run.json").read_text())  # the value's width is what counts: DeepSeek-V3's
    info["model_args"].update(n_routed_experts=256, n_activated_experts=8)
    (run / "run.json").write_text(json.dumps(info))
    server = Server(run.parent, tmp_path / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1024, "height": 1000})
            found = open_page(page, f"{server.url}/?run=v3", "Overview", None, settle_ms=100)
            page.wait_for_function("document.querySelectorAll('[data-testid=\"stMetricValue\"]').length >= 5")
            found["cut_metrics"] = page.evaluate(CUT_METRICS)  # once the row has drawn whole
            shown = page.evaluate("[...document.querySelectorAll('[data-testid=\"stMetricValue\"]')].map(e => e.textContent)")
            browser.close()
    finally:
        server.close()
    assert {"per_token", "256 · top-8"} <= set(shown) and not found["errors"], (shown, found)
    assert found["cut_metrics"] == [], found["cut_metrics"]


if __name__ == "__main__":
    runs_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    only = sys.argv[4].split(",") if len(sys.argv) > 4 else None
    pages = {k: v for k, v in PAGES.items() if only is None or (k or "overview") in only}
    res = browse(runs_dir, out_dir, pages, run=sys.argv[3] if len(sys.argv) > 3 else None, counts=False)
    res.pop("_first_deep_link_nav", None)
    print(res)
