"""The README screenshots' command (tests/e2e/readme_screenshots.py) without a browser: what it keeps
out of docs/screenshots (a missing run, a page with an error) and how it brings a PNG under its size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from readme_screenshots import PAGES, PROBE_PAGES, REPO, TRAIN_PAGES, check_runs, problems, store


def test_it_shoots_the_readmes_eight_pages_of_the_app():
    with open(REPO / "README.md", encoding="utf-8") as f:
        shown = {line.split("(docs/screenshots/")[1].split(".png")[0] for line in f if "](docs/screenshots/" in line}
    assert set(PROBE_PAGES) | set(TRAIN_PAGES) == shown and len(shown) == 8
    assert shown <= set(PAGES)  # each a page path of the app, its file named after it


def test_a_missing_run_stops_it_with_one_line_naming_the_run(tmp_path):
    (tmp_path / "model-val").mkdir()
    (tmp_path / "model-val" / "run.json").write_text("{}")
    check_runs(tmp_path, ["model-val"])
    with pytest.raises(SystemExit, match=r"no run 'train' in .*--train-run"):
        check_runs(tmp_path, ["model-val", "train"])


def test_a_page_with_an_error_or_a_browser_error_is_named():
    ok = {"errors": 0, "error_text": []}
    assert problems({"_js_errors": [], "_first_deep_link_nav": "", "serving": ok}) == []
    found = problems({"_js_errors": ["TypeError: x"], "serving": ok,
                      "steering": {"errors": 1, "error_text": ["Traceback (most recent call last)"]}})
    assert found == ["browser error: TypeError: x",
                     "steering: 1 error box(es), ['Traceback (most recent call last)']"], found
    # a command cut off at the box's edge in the picture
    cut = problems({"serving": ok | {"scrolled_code": ["python -m analyses.placement runs/model-val --gpus 8"]}})
    assert cut == ["serving: a command's code block scrolls, its end cut off: "
                   "'python -m analyses.placement runs/model-val --gpus 8'"], cut


def test_a_png_over_the_limit_is_brought_under_it_and_one_under_is_kept_as_shot(tmp_path):
    shot = tmp_path / "shot.png"
    # noise in a few hundred colours: incompressible as RGB (~480 KB), small in 256 colours
    palette = np.random.default_rng(0).integers(0, 256, (200, 3), dtype=np.uint8)
    Image.fromarray(palette[np.random.default_rng(1).integers(0, 200, (400, 400))]).save(shot)
    assert shot.stat().st_size > 300 * 1024
    line = store(shot, tmp_path / "out.png", 300)
    assert (tmp_path / "out.png").stat().st_size <= 300 * 1024 and "over" not in line, line
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (400, 400)
    store(shot, tmp_path / "kept.png", 1000)
    assert (tmp_path / "kept.png").read_bytes() == shot.read_bytes()  # Chromium's own PNG, not re-encoded
