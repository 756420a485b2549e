"""The reports in a real browser: headless Chromium lays them out, and the DOM says
that no two boxes overlap, every image loaded and, at 1400 px, every table and
figure fits its box at a readable size. Skipped where Chromium is not installed
(CI installs Debian's chromium before running the tests: .ci/run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("report_browser", ROOT / "scripts" / "report_browser.py")
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

pytestmark = pytest.mark.skipif(
    browser.find_chromium() is None,
    reason="headless Chromium not installed (apt-get install chromium, or set ANIRA_CHROMIUM); CI installs it",
)

# one checkpoint whose policy varies depth (verdict, figures) and one of fixed depth
# (skipped attribution, constant-decision verdict): both kinds of section
CHECKPOINTS = [ROOT / "checkpoints" / "mano-anira-o", ROOT / "checkpoints" / "brevo-fixed"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    from anira.cli import main

    out = tmp_path_factory.mktemp("reports")
    assert main(["run", *map(str, CHECKPOINTS), "--n", "8", "--probe-n", "120", "--out", str(out / "run")]) == 0
    assert main(["probe", *map(str, CHECKPOINTS), "--suite", "attribution,decision", "--n", "120",
                 "--out", str(out / "probe")]) == 0
    return {"run": out / "run" / "report.html", "probe": out / "probe" / "probe_report.html"}


@pytest.mark.parametrize("which", ["run", "probe"])
@pytest.mark.parametrize("width", [1400, 700])
def test_report_lays_out_cleanly(reports, which, width):
    m = browser.measure(reports[which], width)
    assert m["window"] == width
    assert m["boxes"] > 40  # the measuring script really saw the page
    assert m["images"], "the report should hold figures"
    # at 1400 px everything must also fit: no table scrolls, no figure shrunk below 75 % of its design size
    assert browser.problems(m, fit=width >= 1400) == []
    assert {s["id"] for s in m["sections"]} >= {"overview"}


def test_the_check_catches_overlaps_broken_images_and_overflow(tmp_path):
    """Planted faults: the check must report each of them."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset=utf-8><style>"
        ".card{width:300px;height:100px;border:1px solid}"
        ".grid{display:grid;grid-template-columns:200px 200px}"
        "</style></head><body><section id=a><h2>cards</h2><div class=grid>"
        "<div class=card>left</div><div class=card>right</div></div>"  # 300 px cards in 200 px columns
        "<img alt=broken src='data:image/png;base64,AAAA' width=50>"
        "<table style='width:3000px'><tr><td>wide</td></tr></table></section></body></html>",
        encoding="utf-8",
    )
    m = browser.measure(page, 1000)
    found = browser.problems(m, fit=True)
    assert any("overlap" in p and "left" in p and "right" in p for p in found)
    assert any("image did not load: broken" in p for p in found)
    assert any("3000" in p or "wide" in p for p in found)  # the page is wider than the window


def test_screenshot_of_one_section(reports, tmp_path):
    m = browser.measure(reports["run"], 1000, section="overview")
    assert [s["id"] for s in m["sections"] if s["height"] > 0] == ["overview"]
    (overview,) = [s for s in m["sections"] if s["id"] == "overview"]
    png = browser.screenshot(reports["run"], tmp_path / "overview.png", 1000, int(overview["top"] + overview["height"]),
                             section="overview")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
