"""The HTML report in a real browser: headless Chromium loads the page written from a small
trained workspace; the screenshot is not blank, the expected headings are in the rendered
DOM, and the console stays silent (no script error, no blocked resource). Skipped, with
the reason shown, where Chromium is not installed (`.ci/run` installs Debian's chromium)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from benchmarks.report_html import find_chromium, run_chromium
from demo_workspace import quick_demo

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed (apt-get install chromium; .ci/run does): the browser test cannot run",
)

HEADINGS = ["Summary", "Stages", "Stage × task matrices", "Forgetting curves", "Tasks", "Expert usage per task",
            "Heatmap gallery"]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out, result = quick_demo()
    assert result.exit_code == 0, result.output
    folder = tmp_path_factory.mktemp("html")
    done = CliRunner().invoke(cli.main, ["--workspace", str(out / "workspace"), "report", "--html", "--no-plots",
                                         "--out", str(folder)])
    assert done.exit_code == 0, done.output
    return folder / "report.html"


def test_chromium_renders_the_report(page, tmp_path):
    shot = tmp_path / "report.png"
    result = run_chromium(page, screenshot=shot, width=1400, height=2200)
    assert result["returncode"] == 0, result["stderr"]
    assert result["console"] == [], result["console"]  # no error, no CSP violation, nothing logged
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert image.shape[:2] == (2200, 1400)
    # not blank: many distinct colours and real contrast (a white or one-colour page fails)
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3)[::7], axis=0)) > 500
    # the header band is the dark blue of the style sheet and the body the light page colour
    assert image[:40, :, 2].mean() < 120 and image[-200:, :, :].mean() > 180


def test_rendered_dom_has_every_section_and_the_gallery(page):
    result = run_chromium(page, dump_dom=True)
    assert result["returncode"] == 0, result["stderr"]
    assert result["console"] == [], result["console"]
    dom = result["dom"]
    found = re.findall(r'<section id="[a-z]+"><h2>(.*?)</h2>', dom)
    assert [h.replace("&amp;", "&") for h in found] == HEADINGS
    assert 'class="gallery"' in dom and "Most anomalous at the latest stage" in dom
    # every image decoded from a data: URI (Chromium's DOM keeps the src as written)
    assert dom.count('src="data:image/') > 10 and 'src="http' not in dom
