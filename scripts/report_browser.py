"""Check an anira HTML report in headless Chromium, and take screenshots of it.

    python scripts/report_browser.py REPORT.html                  # layout check at 1400 and 700 px
    python scripts/report_browser.py REPORT.html --shots docs/img  # one PNG per section

Only the Chromium command line is used, no driver and no Python package: the
check loads a copy of the page with a small script appended that measures the
laid-out page once it has loaded and writes the measurements into the DOM,
which ``--dump-dom`` then prints. (The report itself holds no script.)

What is measured (:func:`measure`): every pair of boxes (headings, paragraphs,
tables, images, cards, ...) that overlap on screen although neither contains
the other — a box's visible part is clipped by its scrolling ancestors, so a
wide table scrolling inside its box does not count; every image that failed to
load; every scroll box whose content is wider than the box; the page's own
width against the window's; each image's shown width against its design width;
each section's position. tests/test_report_browser.py asserts on these.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: headless flags that keep Chromium off the network and away from any profile
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: the boxes whose overlaps count (containers and leaves; table cells are left
#: out: their table is checked as a whole)
BOXES = "h1,h2,h3,h4,p,img,table,nav,dl,ul,details,.card,.block,.stats,.tokens,.legend,.verdict,.scroll,.meta,.note"

_MEASURE_JS = r"""
window.addEventListener('load', () => {
  const describe = el => {
    const cls = el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\s+/).join('.') : '';
    const sec = el.closest('section');
    const text = (el.getAttribute('alt') || el.textContent || '').trim().slice(0, 50);
    return `${el.tagName.toLowerCase()}${cls} in #${sec ? sec.id : '-'}: "${text}"`;
  };
  const visible = el => {
    const r = el.getBoundingClientRect();
    let box = {l: r.left, t: r.top, r: r.right, b: r.bottom};
    for (let a = el.parentElement; a; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.overflowX !== 'visible' || cs.overflowY !== 'visible') {
        const q = a.getBoundingClientRect();
        box = {l: Math.max(box.l, q.left), t: Math.max(box.t, q.top), r: Math.min(box.r, q.right), b: Math.min(box.b, q.bottom)};
      }
    }
    return box;
  };
  const els = [...document.querySelectorAll(BOXES)].filter(el => getComputedStyle(el).display !== 'none');
  const boxes = els.map(el => ({el, box: visible(el)})).filter(x => x.box.r - x.box.l > 0.5 && x.box.b - x.box.t > 0.5);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.el.contains(b.el) || b.el.contains(a.el)) continue;
      const w = Math.min(a.box.r, b.box.r) - Math.max(a.box.l, b.box.l);
      const h = Math.min(a.box.b, b.box.b) - Math.max(a.box.t, b.box.t);
      if (w > 1 && h > 1) overlaps.push([describe(a.el), describe(b.el), Math.round(w), Math.round(h)]);
    }
  }
  const images = [...document.images].map(img => ({
    alt: img.alt, loaded: img.complete && img.naturalWidth > 0,
    shown: img.getBoundingClientRect().width, design: Number(img.getAttribute('width')) || img.naturalWidth}));
  const scrolling = [...document.querySelectorAll('.scroll')]
    .filter(s => s.scrollWidth > s.clientWidth + 1).map(s => [describe(s), s.scrollWidth, s.clientWidth]);
  const sections = [...document.querySelectorAll('section')].map(s => {
    const r = s.getBoundingClientRect();
    return {id: s.id, title: (s.querySelector('h2') || {}).textContent || '', top: r.top + scrollY, height: r.height};
  });
  const out = {window: innerWidth, page: document.documentElement.scrollWidth, boxes: boxes.length,
               height: document.documentElement.scrollHeight, overlaps, images, scrolling, sections};
  const pre = document.createElement('pre');
  pre.id = 'anira-measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$ANIRA_CHROMIUM``, else the first on PATH."""
    explicit = os.environ.get("ANIRA_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def _run(chromium: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="anira-chromium-") as profile:  # a fresh profile every time
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BrowserError(f"chromium exited with status {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _with_injection(page: Path, dest: Path, *, script: str = "", style: str = "") -> Path:
    """A copy of ``page`` next to it (so relative links resolve alike) with a
    script and/or a style added at the end of the body."""
    text = page.read_text(encoding="utf-8")
    extra = (f"<style>{style}</style>" if style else "") + (f"<script>{script}</script>" if script else "")
    if "</body>" not in text:
        raise BrowserError(f"{page}: no </body> to add the measuring script before")
    dest.write_text(text.replace("</body>", extra + "</body>", 1), encoding="utf-8")
    return dest


def _isolate_style(section_id: str) -> str:
    # one section alone on the page, for its screenshot
    return (f"main > header, main > section:not(#{section_id}) {{ display: none !important; }}"
            f"#{section_id} {{ margin-top: 0 !important; }}")


def measure(page: str | Path, width: int = 1400, height: int = 900, *, chromium: str | None = None,
            section: str | None = None, timeout: float = 120) -> dict[str, Any]:
    """Load ``page`` at ``width`` × ``height`` CSS px and return the measurements
    (module doc); ``section``: only that section shown."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrowserError("no chromium on PATH (set ANIRA_CHROMIUM)")
    page = Path(page).resolve()
    script = _MEASURE_JS.replace("BOXES", json.dumps(BOXES))
    with tempfile.TemporaryDirectory(dir=page.parent, prefix=".measure-") as tmp:
        copy = _with_injection(page, Path(tmp) / page.name, script=script,
                               style=_isolate_style(section) if section else "")
        dom = _run(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom",
                              copy.as_uri()], timeout)
    found = re.search(r'<pre id="anira-measure">(.*?)</pre>', dom, re.S)
    if not found:
        raise BrowserError("the measuring script left no result in the page (did it load?)")
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: str | Path, out: str | Path, width: int, height: int, *, chromium: str | None = None,
               section: str | None = None, timeout: float = 120) -> Path:
    """A PNG of the top ``width`` × ``height`` CSS px of ``page`` (``section``: that section alone)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrowserError("no chromium on PATH (set ANIRA_CHROMIUM)")
    page, out = Path(page).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=page.parent, prefix=".shot-") as tmp:
        copy = _with_injection(page, Path(tmp) / page.name, style=_isolate_style(section) if section else "")
        _run(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000",
                        f"--screenshot={out}", copy.as_uri()], timeout)
    if not out.is_file():
        raise BrowserError(f"chromium wrote no screenshot to {out}")
    return out


def shrink_png(path: Path, colours: int = 128) -> None:
    """Re-save a screenshot with a palette (a fraction of the size; text stays crisp)."""
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib; without it the PNG stays as Chromium wrote it
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def problems(m: dict[str, Any], *, fit: bool) -> list[str]:
    """Human-readable failures of one measurement; ``fit``: also require that no
    table needs scrolling and every figure shows at >= 75 % of its design width."""
    out = [f"overlap {w}×{h} px: {a}  <->  {b}" for a, b, w, h in m["overlaps"]]
    out += [f"image did not load: {i['alt']}" for i in m["images"] if not i["loaded"]]
    if m["page"] > m["window"]:
        out.append(f"the page is {m['page']} px wide in a {m['window']} px window")
    if fit:
        out += [f"scrolls ({w} px in {c} px): {d}" for d, w, c in m["scrolling"]]
        out += [f"figure shown at {i['shown']:.0f} of {i['design']} px: {i['alt']}"
                for i in m["images"] if i["shown"] < 0.75 * i["design"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--shots", type=Path, metavar="DIR", help="write one PNG per section here")
    parser.add_argument("--prefix", default="report", help="screenshot file names: PREFIX-SECTION.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--sections", help="comma-separated section ids to shoot (default: all)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"{args.report}: no such file")
    try:
        failures = []
        for width, fit in ((args.width, True), (700, False)):
            m = measure(args.report, width)
            failures += [f"[{width} px] {p}" for p in problems(m, fit=fit)]
            print(f"{width} px: {m['boxes']} boxes, {len(m['images'])} images, page {m['page']} px wide, "
                  f"{m['height']} px tall", file=sys.stderr)
        if args.shots:
            wanted = set(args.sections.split(",")) if args.sections else None
            for s in measure(args.report, args.width)["sections"]:
                if wanted is not None and s["id"] not in wanted:
                    continue
                alone = measure(args.report, args.width, section=s["id"])
                # the section's own bottom: the document is never shorter than the window
                bottom = max(x["top"] + x["height"] for x in alone["sections"] if x["id"] == s["id"])
                out = args.shots / f"{args.prefix}-{s['id']}.png"
                screenshot(args.report, out, args.width, int(bottom) + 24, section=s["id"])
                shrink_png(out)
                print(f"{out}  ({out.stat().st_size // 1024} KiB)")
    except BrowserError as exc:
        print(f"report_browser: error: {exc}", file=sys.stderr)
        return 2
    for f in failures:
        print(f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
