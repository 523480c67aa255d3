"""The self-contained HTML/Markdown report, and that a headless browser renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.reporting_results import make_results

from adagc_repro.errors import ConfigError
from adagc_repro.reporting.report import write_report

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    root = make_results(tmp_path_factory.mktemp("results"))
    return write_report(root, "sweep-spike", tmp_path_factory.mktemp("report"))


def test_html_is_self_contained(report):
    html_path, _ = report
    html = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched over a network
    assert "<script" not in html and "<link" not in html
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(images) == 2  # the curves of the sweep's setting and one AdaGC clip-rate heatmap
    for title in ("Runs of sweep sweep-spike", "Loss-spike counts and spike scores", "Headline claims"):
        assert title in html
    assert html.count("<tr>") > 9


def test_markdown_links_its_figures(report):
    _, md_path = report
    markdown = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 2 and all((md_path.parent / link).exists() for link in links)
    assert "### Loss-spike counts and spike scores" in markdown


def test_unknown_target_lists_what_exists(tmp_path):
    root = make_results(tmp_path / "results")
    with pytest.raises(ConfigError, match="sweep-spike"):
        write_report(root, "no-such-sweep", tmp_path / "out")


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); .ci/run installs it")
    from PIL import Image

    html_path, _ = report
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--window-size=1280,2200",
            f"--screenshot={screenshot}",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert screenshot.exists(), "chromium wrote no screenshot"
    image = Image.open(screenshot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, table shading and figures, not one flat colour
    white = sum(count for count, rgb in (colours or []) if rgb == (255, 255, 255))
    assert white < 0.97 * image.width * image.height
