"""The README's eight dashboard screenshots (docs/screenshots/*.png), retaken in one command:

    python tests/e2e/readme_screenshots.py runs/     # RUNS_DIR: its probe run and its training run, below

Seven pages of the probe run (`--run`, the Quickstart's `model-val`: Load balance, Specialisation,
Token explorer, Co-activation & flow, Serving, Steering, Compare runs) and Training of the training run
(`--train-run`), each 1400 px wide and whole (`test_dashboard_e2e.browse`: headless Chromium on the real
`streamlit run` server, each page shot once the charts it placed have drawn). A page that shows an
error, a browser error or a command cut off by its code block's edge writes nothing: the command names
the page and stops. A PNG over
`--max-kb` (500) is saved again with Pillow's `optimize`, and in 256 colours if that leaves it over
(on 2026-12-07 the eight came out at 195-483 KB as shot, and none needed either); the sizes are printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from test_dashboard_e2e import PAGES, REPO, browse

PROBE_PAGES = ("load_balance", "specialisation", "token_explorer", "coactivation", "serving", "steering", "compare")
TRAIN_PAGES = ("training",)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", nargs="?", type=Path, default=REPO / "runs",
                   help="the runs directory the dashboard serves (default: the repository's runs/)")
    p.add_argument("--run", default="model-val", help="the probe run of the seven routing and experiment pages")
    p.add_argument("--train-run", default="train", help="the training run of the Training page")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="where the PNGs go")
    p.add_argument("--width", type=int, default=1400, help="the window's width in px (the README's: 1400)")
    p.add_argument("--max-kb", type=int, default=500,
                   help="a PNG over this is saved again optimised, and in 256 colours if still over")
    return p.parse_args(argv)


def check_runs(runs_dir: Path, names: list[str]) -> None:
    """Stop with one line naming the run that is missing (the pages would show another run instead)."""
    for name in names:
        if not (runs_dir / name / "run.json").is_file():
            sys.exit(f"readme_screenshots: no run {name!r} in {runs_dir} (no {runs_dir / name / 'run.json'}); "
                     "record it first (the README's 'Dashboard' says how) or name another with --run / --train-run")


def problems(found: dict) -> list[str]:
    """What makes a page's shot unfit for the README: error boxes or text, the browser's own errors, and a
    command whose code block scrolls (its end cut off in the picture: `--out plan.jso` on the Serving page)."""
    out = [f"browser error: {e}" for e in found.get("_js_errors", [])]
    for page, f in found.items():
        if page.startswith("_"):
            continue
        if f["errors"] or f["error_text"]:
            out.append(f"{page}: {f['errors']} error box(es), {f['error_text']}")
        out += [f"{page}: a command's code block scrolls, its end cut off: {c!r}" for c in f.get("scrolled_code", [])]
    return out


def store(png: Path, dest: Path, max_kb: int) -> str:
    """`png` copied to `dest` if it is at most `max_kb`, else saved with Pillow's optimize, and in 256
    colours if that leaves it over (Chromium's own PNGs came out 1-3% smaller than Pillow's optimize)."""
    from PIL import Image

    shutil.copyfile(png, dest)
    with Image.open(png) as im:
        w, h = im.size
        if dest.stat().st_size > max_kb * 1024:
            im.convert("RGB").save(dest, optimize=True)
        if dest.stat().st_size > max_kb * 1024:
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                       dither=Image.Dither.NONE).save(dest, optimize=True)
    kb = dest.stat().st_size / 1024
    return (f"{dest.name}: {w} x {h} px, {kb:.0f} KB (as shot {png.stat().st_size / 1024:.0f} KB)"
            + (f", over {max_kb} KB" if kb > max_kb else ""))


def main(argv=None) -> None:
    a = parse(argv)
    check_runs(a.runs_dir, [a.run, a.train_run])
    with tempfile.TemporaryDirectory() as tmp:
        shots = {}
        for run, names in ((a.run, PROBE_PAGES), (a.train_run, TRAIN_PAGES)):
            found = browse(a.runs_dir, Path(tmp) / run, {k: PAGES[k] for k in names}, run=run, width=a.width,
                           counts=False)
            if bad := problems(found):
                sys.exit(f"readme_screenshots: {run}: " + "; ".join(bad) + f" (nothing written to {a.out})")
            shots |= {k: Path(tmp) / run / f"{k}.png" for k in names}
        a.out.mkdir(parents=True, exist_ok=True)
        for name, png in shots.items():
            print(store(png, a.out / png.name, a.max_kb))


if __name__ == "__main__":
    main()
