"""One self-contained HTML page comparing evaluated checkpoints.

Every image is a PNG embedded as a base64 ``data:`` URI and all styling is
inline, so the page references nothing outside itself and opens offline.
Files are written through a temporary file and ``os.replace``: a reader (or a
crash) never sees a half-written report.

Other parts of anira add their own sections through ``extra_sections``: a list
of ``(title, html)`` pairs appended after the evaluation sections. The title is
escaped; the html is inserted as given (the caller is trusted to produce
self-contained markup — embed images with :func:`figure_img`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from anira.errors import AniraError
from anira.evaluate import EvalResult, Metrics, Progress, evaluate_checkpoint
from matplotlib.figure import Figure

from anira.plots import (
    accuracy_vs_difficulty_figure,
    atomic_write_bytes,
    depth_vs_difficulty_figure,
    png_bytes,
    read_training_curves,
    result_label,
    token_depth_figure,
    training_dynamics_figure,
)

REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"

#: What :func:`write_report` accepts per column: an evaluation result, a
#: checkpoint / run directory (evaluated here), or an ``anira eval --json`` file.
ReportItem = Union[EvalResult, str, Path]
ExtraSection = tuple[str, str]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.ood td { background: #fff6ec; } tr.train td.k { font-weight: bold; }
.grid { display: grid; gap: 1em; align-items: start; overflow-x: auto; }
.col { min-width: 340px; border: 1px solid #eee; padding: 0.5em; }
.col h3 { margin: 0.2em 0 0.4em; }
img { max-width: 100%; height: auto; display: block; margin: 0.3em 0; }
.note { color: #a33; font-size: 0.85em; }
dl.defs dt { font-weight: bold; margin-top: 0.4em; } dl.defs dd { margin-left: 1.5em; }
"""


def figure_img(fig: Figure, alt: str) -> str:
    """An ``<img>`` tag holding the rendered figure as a base64 PNG data URI."""
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _e(text: object) -> str:
    return html.escape(str(text))


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


@dataclass
class _Column:
    result: EvalResult
    metrics_path: Path | None  # metrics.jsonl of the checkpoint, when there is one


def load_items(
    items: Sequence[ReportItem],
    *,
    n_per_difficulty: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    progress: Progress | None = None,
) -> list[EvalResult]:
    """Turn report items into results: directories are evaluated, ``.json`` files read."""
    results = []
    for item in items:
        if isinstance(item, EvalResult):
            results.append(item)
            continue
        path = Path(item)
        if path.is_file() and path.suffix == ".json":
            results.append(EvalResult.from_json(path.read_text(encoding="utf-8")))
            continue
        results.append(
            evaluate_checkpoint(path, n_per_difficulty=n_per_difficulty, seed=seed, batch_size=batch_size,
                                device=device, progress=progress)
        )
    return results


def _unique_labels(results: list[EvalResult]) -> list[str]:
    labels: list[str] = []
    for res in results:
        base = result_label(res)
        label, i = base, 2
        while label in labels:
            label, i = f"{base} #{i}", i + 1
        labels.append(label)
    return labels


# ---------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------


def _depth(m: Metrics, lm: bool) -> float:
    # LANO-style tasks have no answer span to speak of: their measure is E[depth] over all tokens
    return m.mean_expected_depth_all if lm else m.mean_exit_depth


def summary_table(results: Sequence[EvalResult], labels: Sequence[str]) -> str:
    head = (
        "<tr><th class=l>checkpoint</th><th class=l>task</th><th class=l>policy</th><th>D</th>"
        "<th>acc ID</th><th>acc OOD</th><th>depth ID</th><th>depth OOD</th>"
        "<th>E[depth] ID</th><th>cost ratio ID</th><th>cost ratio OOD</th>"
        "<th>ρ(exit depth, cx) ID</th><th>ρ(E[depth], cx) ID</th><th>ρ(exit depth, cx) OOD</th></tr>"
    )
    rows = []
    for res, label in zip(results, labels):
        i = res.in_distribution.metrics if res.in_distribution else None
        o = res.ood.metrics if res.ood else None
        lm = res.language_modelling

        def g(m: Metrics | None, attr: str) -> float | None:
            return None if m is None else getattr(m, attr)

        rows.append(
            "<tr>"
            f"<td class=l>{_e(label)}</td><td class=l>{_e(res.task)}</td><td class=l>{_e(res.policy)}</td>"
            f"<td>{res.max_iters}</td>"
            f"<td>{fmt(g(i, 'accuracy'))}</td><td>{fmt(g(o, 'accuracy'))}</td>"
            f"<td>{fmt(None if i is None else _depth(i, lm), 2)}</td><td>{fmt(None if o is None else _depth(o, lm), 2)}</td>"
            f"<td>{fmt(g(i, 'mean_expected_depth_all' if lm else 'mean_expected_depth'), 2)}</td>"
            f"<td>{fmt(g(i, 'cost_ratio'))}</td><td>{fmt(g(o, 'cost_ratio'))}</td>"
            f"<td>{fmt(g(i, 'spearman_exit_depth'))}</td><td>{fmt(g(i, 'spearman_expected_depth'))}</td>"
            f"<td>{fmt(g(o, 'spearman_exit_depth'))}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def difficulty_table(result: EvalResult) -> str:
    """Per-difficulty metrics; training-range difficulties in bold, OOD rows tinted."""
    head = (
        "<tr><th class=l>k</th><th>n</th><th>acc</th><th>exit depth</th><th>E[depth]</th>"
        "<th>E[depth] all</th><th>cost ratio</th><th>ρ exit</th><th>ρ E[d]</th></tr>"
    )
    rows = []
    for row in result.per_difficulty:
        m = row.metrics
        cls = " ".join(c for c, on in (("train", row.in_train), ("ood", row.in_test_ood and not row.in_test_id)) if on)
        rows.append(
            f"<tr class='{cls}'><td class='l k'>{row.difficulty}</td><td>{m.n}</td><td>{fmt(m.accuracy)}</td>"
            f"<td>{fmt(m.mean_exit_depth, 2)}</td><td>{fmt(m.mean_expected_depth, 2)}</td>"
            f"<td>{fmt(m.mean_expected_depth_all, 2)}</td><td>{fmt(m.cost_ratio)}</td>"
            f"<td>{fmt(m.spearman_exit_depth)}</td><td>{fmt(m.spearman_expected_depth)}</td></tr>"
        )
    notes = "".join(
        f"<div class=note>difficulty {_e(s['difficulty'])} skipped: {_e(s['reason'])}</div>" for s in result.skipped
    )
    return f"<table>{head}{''.join(rows)}</table>{notes}"


def feature_table(results: Sequence[EvalResult], labels: Sequence[str]) -> str:
    """Spearman of expected depth with every task feature, pooled in-distribution,
    one column per checkpoint (the paper's LANO alignment table, for any task)."""
    names = list(dict.fromkeys(n for r in results for n in r.feature_kinds))
    if not names:
        return ""
    head = "<tr><th class=l>feature</th><th class=l>kind</th>" + "".join(
        f"<th>{_e(label)}</th>" for label in labels) + "</tr>"
    rows = []
    for name in names:
        kind = next((r.feature_kinds[name] for r in results if name in r.feature_kinds), "")
        cells = []
        for r in results:
            rho = (r.in_distribution.metrics.feature_spearman.get(name, {}) if r.in_distribution else {})
            cells.append(f"<td>{fmt(rho.get('expected_depth'))}</td>")
        rows.append(f"<tr><td class=l>{_e(name)}</td><td class=l>{_e(kind)}</td>{''.join(cells)}</tr>")
    return (
        "<h3>Alignment with task features</h3><div class=meta>Spearman ρ of per-token expected depth with each "
        "feature, in-distribution, over the positions where the feature is defined</div>"
        f"<table>{head}{''.join(rows)}</table>"
    )


def _column(col: _Column, label: str) -> str:
    res = col.result
    where = f"{_e(res.checkpoint)}" + (f", step {res.step}" if res.step is not None else "") if res.checkpoint else "in memory"
    parts = [
        f"<div class=col><h3>{_e(label)}</h3>",
        f"<div class=meta>policy {_e(res.policy)} · D = {res.max_iters} · {where}</div>",
        difficulty_table(res),
        figure_img(token_depth_figure(res), f"{label}: per-token exit depth"),
    ]
    curves = read_training_curves(col.metrics_path) if col.metrics_path else {}
    if curves:
        parts.append(
            figure_img(
                training_dynamics_figure(curves, max_iters=res.max_iters, title=f"{label}: training dynamics"),
                f"{label}: training dynamics",
            )
        )
    else:
        parts.append("<div class=meta>no training metrics recorded</div>")
    parts.append("</div>")
    return "".join(parts)


_DEFINITIONS = """
<dl class=defs>
<dt>acc</dt><dd>exact match: every answer token predicted correctly (teacher-forced argmax).</dd>
<dt>exit depth / E[depth]</dt><dd>mean over answer positions (position i predicts answer token i+1) of the
iterations run, and of Σ<sub>d</sub> d·q(d). “E[depth] all”: over every non-pad position.</dd>
<dt>cost ratio</dt><dd>Σ<sub>d</sub>|A<sub>d</sub>| over non-pad tokens divided by D × tokens (1 for fixed depth).</dd>
<dt>ρ</dt><dd>Spearman correlation of per-token depth with the task's ground-truth complexity, over the
positions where complexity is defined; — when undefined (e.g. constant depth).</dd>
<dt>ID / OOD</dt><dd>pooled over the task's in-distribution / out-of-distribution test ranges.</dd>
</dl>
"""


def render_report(
    results: Sequence[EvalResult],
    *,
    metrics_paths: Sequence[Path | None] | None = None,
    title: str = "anira report",
    extra_sections: Sequence[ExtraSection] = (),
) -> str:
    """The report's HTML text (see :func:`write_report`)."""
    results = list(results)
    if not results:
        raise AniraError("a report needs at least one checkpoint or evaluation result")
    paths = list(metrics_paths) if metrics_paths is not None else [
        Path(r.checkpoint) / "metrics.jsonl" if r.checkpoint else None for r in results
    ]
    labels = _unique_labels(results)
    cols = [_Column(r, p) for r, p in zip(results, paths)]
    from anira import __version__

    body = [
        f"<h1>{_e(title)}</h1>",
        f"<div class=meta>anira {_e(__version__)} · "
        + " · ".join(sorted({f"{r.n_per_difficulty} instances per difficulty, seed {r.seed}" for r in results}))
        + "</div>",
        "<h2>Summary</h2>",
        summary_table(results, labels),
        _DEFINITIONS,
    ]
    tasks = list(dict.fromkeys(r.task for r in results))  # first-seen order
    for task in tasks:
        idx = [i for i, r in enumerate(results) if r.task == task]
        group = [results[i] for i in idx]
        # overlays use the unique labels so the legend tells the columns apart
        relabelled = [_with_label(results[i], labels[i]) for i in idx]
        body.append(f"<h2>{_e(task)} ({_e(group[0].knob)})</h2>")
        body.append('<div class=grid style="grid-template-columns: repeat(2, minmax(340px, 1fr))">')
        body.append(f"<div>{figure_img(depth_vs_difficulty_figure(relabelled), f'{task}: depth vs difficulty')}</div>")
        body.append(f"<div>{figure_img(accuracy_vs_difficulty_figure(relabelled), f'{task}: accuracy vs difficulty')}</div>")
        body.append("</div>")
        body.append(feature_table(group, [labels[i] for i in idx]))
        body.append(f'<div class=grid style="grid-template-columns: repeat({len(idx)}, minmax(340px, 1fr))">')
        body.extend(_column(cols[i], labels[i]) for i in idx)
        body.append("</div>")
    for section_title, section_html in extra_sections:
        body.append(f"<section><h2>{_e(section_title)}</h2>{section_html}</section>")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _with_label(result: EvalResult, label: str) -> EvalResult:
    import dataclasses

    return dataclasses.replace(result, label=label)


def write_report(
    items: Sequence[ReportItem],
    out_dir: str | Path,
    *,
    title: str = "anira report",
    extra_sections: Sequence[ExtraSection] = (),
    n_per_difficulty: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``report.html`` (and ``results.json``, the results in the ``anira eval
    --json`` schema) under ``out_dir``; returns the report's path.

    ``items``: :class:`EvalResult` objects, checkpoint or run directories
    (evaluated with ``n_per_difficulty`` / ``seed`` / ``batch_size`` / ``device``),
    or ``anira eval --json`` files; one column each. ``extra_sections``:
    ``(title, html)`` pairs appended after the evaluation sections.
    """
    for i, section in enumerate(extra_sections):
        if not (isinstance(section, tuple) and len(section) == 2 and all(isinstance(s, str) for s in section)):
            raise AniraError(f"extra_sections[{i}] must be a (title, html) pair of strings")
    results = load_items(items, n_per_difficulty=n_per_difficulty, seed=seed, batch_size=batch_size,
                         device=device, progress=progress)
    page = render_report(results, title=title, extra_sections=extra_sections)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AniraError(f"{out_dir}: exists and is not a directory")
    payload = json.dumps({"results": [r.to_dict() for r in results]}, indent=2, allow_nan=False)
    atomic_write_bytes(out_dir / RESULTS_FILE, payload.encode("utf-8"))
    return atomic_write_bytes(out_dir / REPORT_FILE, page.encode("utf-8"))
