"""The pieces every anira HTML page shares: style, escaping, numbers, figures, links.

Pages are self-contained (inline CSS, figures as base64 PNG ``data:`` URIs, no
scripts, fonts or web addresses) so they open offline and can be mailed as one
file. The only references out of a page are plain relative links to the
repository's own documents (:func:`doc_link`), which work wherever the
repository checkout sits and degrade to the document's name elsewhere.

Layout rules that keep boxes from overlapping at any width: every grid item
has ``min-width: 0`` and every table sits in a ``.scroll`` box, so a table
that is wider than its column scrolls inside its own box instead of spilling
into the neighbour.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

from matplotlib.figure import Figure

from anira.plots import DPI, png_bytes

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa;
  --static: #3e64a8; --execution: #c4622d; --mixed: #3b8a4f; --none: #6e7781; --undetermined: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 1.2em 1.5em 4em; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; line-height: 1.25; }
h2 { font-size: 1.3em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; margin: 0 0 0.6em; }
h3 { font-size: 1.08em; margin: 1.2em 0 0.4em; }
h4 { font-size: 0.95em; margin: 0.8em 0 0.3em; }
section { margin-top: 2.2em; }
p { margin: 0.4em 0 0.6em; max-width: 75em; }
a { color: #0a59c7; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 0.9em;
  background: var(--soft); padding: 0 0.25em; border-radius: 3px; }
.meta { color: var(--muted); font-size: 0.9em; }
.note { color: #a4262c; font-size: 0.88em; }
nav.toc { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; font-size: 0.9em; margin: 0.8em 0 0;
  padding: 0.5em 0.8em; background: var(--soft); border-radius: 6px; }
.intro { display: grid; gap: 0.6em 2em; grid-template-columns: repeat(auto-fit, minmax(min(100%, 380px), 1fr)); }
.intro > * { min-width: 0; }
.intro ul, .guide { margin: 0.3em 0; padding-left: 1.2em; }
.guide li { margin: 0.15em 0; }
.cards { display: grid; gap: 1em; grid-template-columns: repeat(auto-fill, minmax(min(100%, 330px), 1fr)); }
.card { min-width: 0; border: 1px solid var(--line); border-radius: 8px; padding: 0.7em 0.9em; background: #fff; }
.card h3 { margin: 0 0 0.1em; font-size: 1.05em; overflow-wrap: anywhere; }
.card .meta { overflow-wrap: anywhere; }
.block { border: 1px solid var(--line); border-radius: 8px; padding: 0.8em 1em; margin: 1em 0; }
.block > h3:first-child { margin-top: 0; }
.split { display: grid; gap: 1em 1.5em; align-items: start;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 470px), 1fr)); }
.split > * { min-width: 0; }
.scroll { max-width: 100%; overflow-x: auto; }
.stats { display: grid; gap: 0.2em 0.8em; grid-template-columns: repeat(auto-fill, minmax(6.5em, 1fr)); margin: 0.5em 0; }
.stats div { min-width: 0; }
.stats b { display: block; font-size: 1.25em; font-variant-numeric: tabular-nums; }
.stats span { color: var(--muted); font-size: 0.8em; }
.bar { height: 6px; background: var(--soft); border-radius: 3px; margin-top: 2px; }
.bar i { display: block; height: 100%; background: #6b8fd6; border-radius: 3px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e6e9ed; padding: 3px 8px; text-align: right; white-space: nowrap; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: normal; vertical-align: bottom; }
th.group { text-align: center; border-bottom: 1px solid var(--line); }
td.l, th.l { text-align: left; }
td.text { text-align: left; white-space: normal; min-width: 14em; }
tr.ood td { background: #fff5e8; } tr.train td.k { font-weight: 700; }
img { display: block; max-width: 100%; height: auto; margin: 0.4em 0; }
.badge { display: inline-block; padding: 0 0.55em; border-radius: 1em; font-weight: 600; font-size: 0.85em;
  color: #fff; background: var(--none); white-space: nowrap; }
.v-static { background: var(--static); } .v-execution { background: var(--execution); }
.v-mixed { background: var(--mixed); } .v-undetermined { background: var(--undetermined); }
.v-skipped, .v-error { background: #fff; color: var(--muted); border: 1px solid var(--line); }
.why { color: var(--muted); font-size: 0.88em; margin: 0.2em 0; }
.flags { display: flex; flex-wrap: wrap; gap: 0.25em; margin: 0.25em 0; padding: 0; list-style: none; }
.flags li { font-size: 0.78em; background: var(--soft); border: 1px solid var(--line); border-radius: 4px;
  padding: 0 0.4em; overflow-wrap: anywhere; }
.flags li.warn { background: #fff4e5; border-color: #f0b46a; }
.verdict { margin: 0.3em 0 0.5em; }
dl.defs { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; font-size: 0.9em; margin: 0.6em 0; }
dl.defs dt { font-weight: 600; } dl.defs dd { margin: 0; min-width: 0; }
.tokens { display: flex; flex-wrap: wrap; gap: 3px; margin: 0.3em 0 0.8em;
  font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 12px; }
.tok { display: inline-flex; flex-direction: column; align-items: stretch; text-align: center; min-width: 1.9em;
  border: 1px solid transparent; border-radius: 3px; }
.tok > span { padding: 0 2px; }
.tok > b { font-weight: 600; padding: 0 2px; border-radius: 0 0 2px 2px; }
.tok.ans { border-color: #d1242f; }
.tok.miss > span { background: #ffd8d3; color: #a4262c; font-weight: 700; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 0.3em; font-size: 0.8em; color: var(--muted); }
.legend b { display: inline-block; min-width: 1.6em; text-align: center; border-radius: 3px; font-weight: 600; }
details { margin: 0.4em 0; } summary { cursor: pointer; color: var(--muted); font-size: 0.9em; }
details pre { font-size: 0.75em; max-height: 30em; overflow: auto; background: var(--soft); padding: 0.5em; }
"""

#: figures are rendered at DPI but shown at this many CSS pixels per inch, so
#: that a 9 pt label reads as 9 pt on a normal screen and stays sharp on a dense one
CSS_PX_PER_INCH = 100


def e(text: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(text))


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, "—" for missing or non-finite."""
    if value is None or isinstance(value, bool):
        return "—" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def slug(text: str) -> str:
    """An HTML id from a title: lower case, runs of other characters become '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def scroll(table_html: str) -> str:
    """A table inside its own horizontally scrolling box."""
    return f"<div class=scroll>{table_html}</div>"


def _png_width(png: bytes) -> int:
    # the IHDR chunk follows the 8-byte signature: length, type, then width and height
    return struct.unpack(">I", png[16:20])[0]


def figure_img(fig: Figure, alt: str) -> str:
    """An ``<img>`` holding the figure as a base64 PNG, sized to show at its design
    size (``figsize`` inches × 100 CSS px) and never wider than its box."""
    png = png_bytes(fig)
    width = round(_png_width(png) * CSS_PX_PER_INCH / DPI)
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{e(alt)}" width="{width}" src="data:image/png;base64,{data}">'


def badge(label: str | None, title: str = "") -> str:
    """A coloured verdict / reading label (grey for labels without a colour)."""
    text = label or "—"
    tip = f' title="{e(title)}"' if title else ""
    return f'<span class="badge v-{e(slug(text))}"{tip}>{e(text)}</span>'


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    """``<dl>`` of (term, html description) pairs."""
    return "<dl class=defs>" + "".join(f"<dt>{e(t)}</dt><dd>{d}</dd>" for t, d in items) + "</dl>"


def page(title: str, sections: Sequence[tuple[str, str, str]], header: str = "") -> str:
    """The whole page: ``sections`` are ``(id, title, html)``; a table of contents
    links them. ``header`` is inserted under the title."""
    nav = "".join(f'<a href="#{e(sid)}">{e(t)}</a>' for sid, t, _ in sections)
    body = "\n".join(f'<section id="{e(sid)}"><h2>{e(t)}</h2>{h}</section>' for sid, t, h in sections)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>\n"
        f"<header><h1>{e(title)}</h1>{header}<nav class=toc>{nav}</nav></header>\n{body}\n</main></body></html>\n"
    )


def numbered(names: Sequence[str], sep: str, taken: Iterable[str] = ()) -> list[str]:
    """The names made distinct: a repeat gets ``sep`` and a number (2, 3, ...)."""
    seen = set(taken)
    out = []
    for base in names:
        name, i = base, 2
        while name in seen:
            name, i = f"{base}{sep}{i}", i + 1
        seen.add(name)
        out.append(name)
    return out


def unique_ids(titles: Sequence[str], taken: Iterable[str] = ()) -> list[str]:
    """One distinct id per title (a suffix where two titles slug alike)."""
    return numbered([slug(t) for t in titles], "-", taken)


# ---------------------------------------------------------------------------------------
# Links to the repository's documents
# ---------------------------------------------------------------------------------------


def _repository_roots(near: Sequence[Path]) -> list[Path]:
    """Where the repository's documents may be: the working directory, the checkout
    holding this package (an editable install) and the parents of ``near`` paths."""
    roots = [Path.cwd(), Path(__file__).resolve().parent.parent]
    for p in near:
        roots.extend(Path(p).resolve().parents)
    return list(dict.fromkeys(roots))


def find_document(relative: str, near: Sequence[Path] = ()) -> Path | None:
    """The first existing ``root / relative`` over :func:`_repository_roots`."""
    for root in _repository_roots(near):
        candidate = root / relative
        if candidate.is_file():
            return candidate.resolve()
    return None


def href(target: Path, out_dir: Path | None) -> str:
    """A link to ``target``: relative to the page's directory when both sit on one
    file system root (the link survives moving the whole checkout), else a file URI."""
    if out_dir is not None:
        try:
            rel = os.path.relpath(target, Path(out_dir).resolve())
            return html.escape(Path(rel).as_posix().replace(" ", "%20"))
        except ValueError:  # different drives (Windows)
            pass
    return html.escape(target.as_uri())


def display_path(path: str | Path) -> str:
    """A path as the reader knows it: relative to the working directory when under it."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


def doc_link(relative: str, text: str | None = None, *, out_dir: Path | None, near: Sequence[Path] = (),
             target: Path | None = None) -> str:
    """``<a>`` to a repository document, or just its name in ``<code>`` when the
    document is not on this machine (e.g. anira installed from a wheel)."""
    found = target if target is not None else find_document(relative, near)
    label = e(text) if text else f"<code>{e(relative)}</code>"
    if found is None:
        return f"{label} (in the anira repository)"
    return f'<a href="{href(found, out_dir)}">{label}</a>'
