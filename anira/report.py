"""One self-contained HTML page comparing evaluated checkpoints.

The page reads top to bottom as: an overview (what the run did, how to read
it, one card per checkpoint), the summary table with the metric definitions,
then one section per task (overlays of every checkpoint, feature alignment,
and a block per checkpoint with its per-difficulty table, training dynamics
and per-token exit depths), then the sections other tools add.

Every figure is a PNG embedded as a base64 ``data:`` URI and all styling is
inline (:mod:`anira.htmlpage`), so the page opens offline. Files are written
through a temporary file and ``os.replace``: a reader (or a crash) never sees
a half-written report.

Other parts of anira add their own sections through ``extra_sections``: a list
of ``(title, html)`` pairs appended after the evaluation sections. The title is
escaped; the html is inserted as given (the caller is trusted to produce
self-contained markup — embed images with :func:`figure_img`). ``intro`` adds
paragraphs to the overview and ``card_extras`` adds markup to a checkpoint's
overview card (the main job puts the probe verdicts there).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import matplotlib

from anira.errors import AniraError
from anira.evaluate import EvalResult, Metrics, Progress, Sample, evaluate_checkpoint
from anira.htmlpage import (
    definition_list,
    display_path,
    doc_link,
    e,
    figure_img,
    fmt,
    numbered,
    page,
    scroll,
    slug,
    unique_ids,
)
from anira.plots import (
    accuracy_vs_difficulty_figure,
    atomic_write_bytes,
    depth_vs_difficulty_figure,
    pick_samples,
    read_training_curves,
    result_label,
    training_dynamics_figure,
)

__all__ = ["REPORT_FILE", "RESULTS_FILE", "figure_img", "load_items", "render_report", "write_report"]

REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"

#: What :func:`write_report` accepts per column: an evaluation result, a
#: checkpoint / run directory (evaluated here), or an ``anira eval --json`` file.
ReportItem = Union[EvalResult, str, Path]
ExtraSection = tuple[str, str]


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


@dataclass
class _Column:
    result: EvalResult
    label: str
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
    return numbered([result_label(res) for res in results], " #")


def _depth(m: Metrics, lm: bool) -> float:
    # LANO-style tasks have no answer span to speak of: their measure is E[depth] over all tokens
    return m.mean_expected_depth_all if lm else m.mean_exit_depth


def _metric(m: Metrics | None, attr: str) -> float | None:
    return None if m is None else getattr(m, attr)


def _id(res: EvalResult) -> Metrics | None:
    return res.in_distribution.metrics if res.in_distribution else None


def _ood(res: EvalResult) -> Metrics | None:
    return res.ood.metrics if res.ood else None


# ---------------------------------------------------------------------------------------
# Overview
# ---------------------------------------------------------------------------------------


def _span(lo_hi: Sequence[int]) -> str:
    lo, hi = lo_hi
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _what_ran(results: Sequence[EvalResult]) -> str:
    tasks = list(dict.fromkeys(r.task for r in results))
    policies = list(dict.fromkeys(r.policy for r in results))
    sizes = sorted({r.n_per_difficulty for r in results})
    seeds = sorted({r.seed for r in results})
    ranges = "; ".join(
        f"<b>{e(t)}</b> ({e(r.knob)}): trained on {_span(r.ranges['train'])}, tested in-distribution on "
        f"{_span(r.ranges['test_id'])} and out-of-distribution on {_span(r.ranges['test_ood'])}"
        for t in tasks for r in [next(x for x in results if x.task == t)]
    )
    n = len(results)
    return (
        f"<p>Evaluated <b>{n} checkpoint{'s' if n != 1 else ''}</b> (tasks {e(', '.join(tasks))}; halting policies "
        f"{e(', '.join(policies))}) on {e(' / '.join(map(str, sizes)))} fresh test instances per difficulty "
        f"(seed {e(', '.join(map(str, seeds)))}), teacher-forced, recording each token's exit depth — how many "
        f"of the D loop iterations it ran before halting. {ranges}.</p>"
    )


def _how_to_read(out_dir: Path | None, near: Sequence[Path]) -> str:
    readme = None
    for p in near:
        candidate = Path(p).resolve().parent / "README.md"
        if candidate.is_file():
            readme = candidate
            break
    links = [
        doc_link("docs/findings.md", out_dir=out_dir, near=near) + " — what the bundled reference checkpoints "
        "show, and why their verdicts read as they do",
        doc_link("checkpoints/README.md", out_dir=out_dir, near=near, target=readme)
        + " — how the checkpoints were trained and what they reach",
        doc_link("docs/evaluation.md", out_dir=out_dir, near=near) + " — every metric on this page",
        doc_link("docs/probes.md", out_dir=out_dir, near=near) + " — how the probe suites reach a verdict",
    ]
    return (
        "<p><b>How to read it.</b> A policy that spends compute where the work is shows depth rising with "
        "difficulty, a cost ratio below 1 at equal accuracy, and a positive ρ between a token's depth and its "
        "ground-truth complexity. A fixed-depth model is the reference: every token runs all D iterations "
        "(cost ratio 1, ρ undefined). OOD rows show whether the allocation extrapolates beyond the training "
        "range.</p><ul>" + "".join(f"<li>{link}</li>" for link in links) + "</ul>"
    )


def _card(col: _Column, extra: str) -> str:
    res = col.result
    m_id, m_ood = _id(res), _ood(res)
    depth = None if m_id is None else _depth(m_id, res.language_modelling)
    share = 0.0 if depth is None or depth != depth else max(0.0, min(1.0, depth / res.max_iters))
    stats = [
        (fmt(_metric(m_id, "accuracy")), "accuracy ID"),
        (fmt(_metric(m_ood, "accuracy")), "accuracy OOD"),
        (f"{fmt(depth, 2)}<small> / {res.max_iters}</small>"
         f"<div class=bar title='mean depth as a share of D'><i style='width:{100 * share:.0f}%'></i></div>",
         "mean depth ID"),
        (fmt(_metric(m_id, "cost_ratio")), "cost ratio ID"),
        (fmt(_metric(m_id, "spearman_exit_depth")), "ρ(depth, cx) ID"),
    ]
    cells = "".join(f"<div><b>{v}</b><span>{e(k)}</span></div>" for v, k in stats)
    return (
        f'<div class=card><h3><a href="#{e(_block_id(col.label))}">{e(col.label)}</a></h3>'
        f"<div class=meta>{e(res.task)} · policy {e(res.policy)} · D = {res.max_iters}</div>"
        f"<div class=stats>{cells}</div>{extra}</div>"
    )


def _block_id(label: str) -> str:
    return "ckpt-" + slug(label)


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def summary_table(results: Sequence[EvalResult], labels: Sequence[str]) -> str:
    """One row per checkpoint; in-distribution and OOD side by side under group headers."""
    head = (
        "<tr><th class=l rowspan=2>checkpoint</th><th class=l rowspan=2>task</th><th class=l rowspan=2>policy</th>"
        "<th rowspan=2>D</th><th class=group colspan=2>accuracy</th><th class=group colspan=2>mean depth</th>"
        "<th rowspan=2>E[depth] ID</th><th class=group colspan=2>cost ratio</th>"
        "<th class=group colspan=2>ρ(exit depth, cx)</th><th rowspan=2>ρ(E[depth], cx) ID</th></tr>"
        "<tr>" + "<th>ID</th><th>OOD</th>" * 4 + "</tr>"
    )
    rows = []
    for res, label in zip(results, labels):
        i, o, lm = _id(res), _ood(res), res.language_modelling
        rows.append(
            "<tr>"
            f'<td class=l><a href="#{e(_block_id(label))}">{e(label)}</a></td><td class=l>{e(res.task)}</td>'
            f"<td class=l>{e(res.policy)}</td><td>{res.max_iters}</td>"
            f"<td>{fmt(_metric(i, 'accuracy'))}</td><td>{fmt(_metric(o, 'accuracy'))}</td>"
            f"<td>{fmt(None if i is None else _depth(i, lm), 2)}</td><td>{fmt(None if o is None else _depth(o, lm), 2)}</td>"
            f"<td>{fmt(_metric(i, 'mean_expected_depth_all' if lm else 'mean_expected_depth'), 2)}</td>"
            f"<td>{fmt(_metric(i, 'cost_ratio'))}</td><td>{fmt(_metric(o, 'cost_ratio'))}</td>"
            f"<td>{fmt(_metric(i, 'spearman_exit_depth'))}</td><td>{fmt(_metric(o, 'spearman_exit_depth'))}</td>"
            f"<td>{fmt(_metric(i, 'spearman_expected_depth'))}</td>"
            "</tr>"
        )
    return scroll(f"<table>{head}{''.join(rows)}</table>")


def difficulty_table(result: EvalResult) -> str:
    """Per-difficulty metrics; training-range difficulties in bold, OOD rows tinted."""
    head = (
        f"<tr><th class=l title='{e(result.knob)}'>{e(result.knob.split(' ')[0])}</th><th>n</th><th>acc</th>"
        "<th>exit depth</th><th>E[depth]</th><th>E[depth] all</th><th>cost ratio</th><th>ρ exit</th><th>ρ E[d]</th></tr>"
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
        f"<div class=note>difficulty {e(s['difficulty'])} skipped: {e(s['reason'])}</div>" for s in result.skipped
    )
    legend = "<div class=meta>bold: training-range difficulty · tinted: out-of-distribution</div>"
    return scroll(f"<table>{head}{''.join(rows)}</table>") + legend + notes


def feature_table(results: Sequence[EvalResult], labels: Sequence[str]) -> str:
    """Spearman of expected depth with every task feature, pooled in-distribution,
    one column per checkpoint (the paper's LANO alignment table, for any task)."""
    names = list(dict.fromkeys(n for r in results for n in r.feature_kinds))
    if not names:
        return ""
    head = "<tr><th class=l>feature</th><th class=l>kind</th>" + "".join(
        f"<th>{e(label)}</th>" for label in labels) + "</tr>"
    rows = []
    for name in names:
        kind = next((r.feature_kinds[name] for r in results if name in r.feature_kinds), "")
        cells = []
        for r in results:
            rho = (r.in_distribution.metrics.feature_spearman.get(name, {}) if r.in_distribution else {})
            cells.append(f"<td>{fmt(rho.get('expected_depth'))}</td>")
        rows.append(f"<tr><td class=l>{e(name)}</td><td class=l>{e(kind)}</td>{''.join(cells)}</tr>")
    return (
        "<h3>Alignment with task features</h3><p class=meta>Spearman ρ of per-token expected depth with each "
        "feature, in-distribution, over the positions where the feature is defined. <i>static</i>: a cue "
        "readable from the input; <i>execution</i>: the state of the solving algorithm at that token. "
        "— where depth is constant.</p>"
        + scroll(f"<table>{head}{''.join(rows)}</table>")
    )


_DEFINITIONS = definition_list([
    ("accuracy", "exact match: every answer token predicted correctly (teacher-forced argmax)."),
    ("mean depth / E[depth]", "mean over answer positions (position i predicts answer token i+1) of the "
     "iterations run, and of Σ<sub>d</sub> d·q(d) under the policy's exit distribution q. "
     "“E[depth] all”: over every non-pad position."),
    ("cost ratio", "Σ<sub>d</sub>|A<sub>d</sub>| (token-iterations actually computed, over non-pad tokens) "
     "divided by D × tokens: 1 for fixed depth."),
    ("ρ", "Spearman correlation of per-token depth with the task's ground-truth complexity (cx), over the "
     "positions where complexity is defined; — when undefined (e.g. constant depth)."),
    ("ID / OOD", "pooled over the task's in-distribution / out-of-distribution test ranges."),
])


# ---------------------------------------------------------------------------------------
# Per-token exit depths (HTML, so the tokens stay readable at any width)
# ---------------------------------------------------------------------------------------


def _depth_colours(D: int) -> list[tuple[str, str]]:
    """(background, text) colour per depth 1..D on the viridis scale."""
    cmap = matplotlib.colormaps["viridis"]
    out = []
    for d in range(1, D + 1):
        x = 0.0 if D == 1 else (d - 1) / (D - 1)
        r, g, b, _ = cmap(x)
        light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
        out.append((matplotlib.colors.to_hex((r, g, b)), "#000" if light else "#fff"))
    return out


def depth_legend(D: int) -> str:
    cells = "".join(f"<b style='background:{bg};color:{fg}'>{d}</b>" for d, (bg, fg) in enumerate(_depth_colours(D), 1))
    return (f"<div class=legend>exit depth {cells} · <span style='border:1px solid #d1242f;padding:0 3px'>answer "
            "position</span> · <span class='tok miss'><span>red</span></span> token: the next token was "
            "predicted wrongly</div>")


def token_strip(sample: Sample, D: int) -> str:
    """One instance as token chips: the token above, its exit depth below, coloured
    by depth; answer positions outlined; the tooltip gives E[depth] and the prediction."""
    colours = _depth_colours(D)
    chips = []
    n = len(sample.tokens)
    for i, (tok, d) in enumerate(zip(sample.tokens, sample.exit_depth)):
        bg, fg = colours[max(1, min(D, d)) - 1]
        answer = sample.answer_mask[i]
        nxt = sample.tokens[i + 1] if i + 1 < n else None
        pred = sample.predicted[i] if i < len(sample.predicted) else ""
        miss = answer and nxt is not None and pred != nxt
        cls = "tok" + (" ans" if answer else "") + (" miss" if miss else "")
        tip = f"position {i}: exit depth {d}, E[depth] {sample.expected_depth[i]:.2f}"
        if answer:
            tip += f"; predicts {pred!r} for {nxt!r}"
        chips.append(f"<span class='{cls}' title=\"{e(tip)}\"><span>{e(tok.strip() or '␣')}</span>"
                     f"<b style='background:{bg};color:{fg}'>{d}</b></span>")
    return "".join(chips)


def token_depths(result: EvalResult, max_samples: int = 4) -> str:
    chosen = pick_samples(result.samples, max_samples)
    if not chosen:
        return "<p class=meta>no sample instances recorded</p>"
    rows = "".join(
        f"<div class=meta>{e(result.knob.split(' ')[0])} = {s.difficulty} · {'solved' if s.correct else 'wrong'}</div>"
        f"<div class=tokens>{token_strip(s, result.max_iters)}</div>"
        for s in chosen
    )
    return depth_legend(result.max_iters) + rows


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _checkpoint_block(col: _Column) -> str:
    res = col.result
    where = (e(display_path(res.checkpoint)) + (f", step {res.step}" if res.step is not None else "")
             if res.checkpoint else "in memory")
    curves = read_training_curves(col.metrics_path) if col.metrics_path else {}
    if curves:
        dynamics = figure_img(training_dynamics_figure(curves, max_iters=res.max_iters,
                                                       title=f"{col.label}: training dynamics"),
                              f"{col.label}: training dynamics")
    else:
        dynamics = "<p class=meta>no training metrics recorded</p>"
    return (
        f'<div class=block id="{e(_block_id(col.label))}"><h3>{e(col.label)}</h3>'
        f"<div class=meta>policy {e(res.policy)} · D = {res.max_iters} · {where}</div>"
        f"<div class=split><div><h4>per difficulty</h4>{difficulty_table(res)}</div>"
        f"<div><h4>training dynamics</h4>{dynamics}</div></div>"
        f"<h4>exit depth per token, one instance per difficulty</h4>{token_depths(res)}</div>"
    )


def _task_section(task: str, cols: Sequence[_Column]) -> str:
    group = [c.result for c in cols]
    # overlays use the unique labels so the legend tells the checkpoints apart
    relabelled = [dataclasses.replace(c.result, label=c.label) for c in cols]
    overlays = (
        "<div class=split>"
        f"<div>{figure_img(depth_vs_difficulty_figure(relabelled), f'{task}: depth vs difficulty')}</div>"
        f"<div>{figure_img(accuracy_vs_difficulty_figure(relabelled), f'{task}: accuracy vs difficulty')}</div>"
        "</div>"
    )
    return overlays + feature_table(group, [c.label for c in cols]) + "".join(_checkpoint_block(c) for c in cols)


def render_report(
    results: Sequence[EvalResult],
    *,
    metrics_paths: Sequence[Path | None] | None = None,
    title: str = "anira report",
    extra_sections: Sequence[ExtraSection] = (),
    intro: str = "",
    card_extras: Mapping[str, str] | None = None,
    out_dir: str | Path | None = None,
) -> str:
    """The report's HTML text (see :func:`write_report`). ``out_dir``: where the
    page will live, so links to the repository's documents can be relative."""
    results = list(results)
    if not results:
        raise AniraError("a report needs at least one checkpoint or evaluation result")
    paths = list(metrics_paths) if metrics_paths is not None else [
        Path(r.checkpoint) / "metrics.jsonl" if r.checkpoint else None for r in results
    ]
    labels = _unique_labels(results)
    cols = [_Column(r, label, p) for r, label, p in zip(results, labels, paths)]
    near = [Path(r.checkpoint) for r in results if r.checkpoint]
    out = Path(out_dir) if out_dir is not None else None
    extras = card_extras or {}
    from anira import __version__

    overview = (
        f"<div class=intro><div>{_what_ran(results)}{intro}</div><div>{_how_to_read(out, near)}</div></div>"
        "<div class=cards>" + "".join(_card(c, extras.get(c.label, "")) for c in cols) + "</div>"
    )
    sections = [("overview", "Overview", overview),
                ("summary", "Summary", summary_table(results, labels) + _DEFINITIONS)]
    for task in dict.fromkeys(r.task for r in results):  # first-seen order
        task_cols = [c for c in cols if c.result.task == task]
        sections.append((f"task-{slug(task)}", f"{task} ({task_cols[0].result.knob})", _task_section(task, task_cols)))
    taken = [sid for sid, _, _ in sections] + [_block_id(label) for label in labels]
    extra_ids = unique_ids([t for t, _ in extra_sections], taken=taken)
    sections.extend((sid, t, h) for sid, (t, h) in zip(extra_ids, extra_sections))
    header = (
        f"<div class=meta>anira {e(__version__)} · "
        + " · ".join(sorted({f"{r.n_per_difficulty} instances per difficulty, seed {r.seed}" for r in results}))
        + "</div>"
    )
    return page(title, sections, header=header)


def write_report(
    items: Sequence[ReportItem],
    out_dir: str | Path,
    *,
    title: str = "anira report",
    extra_sections: Sequence[ExtraSection] = (),
    intro: str = "",
    card_extras: Mapping[str, str] | None = None,
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
    or ``anira eval --json`` files; one checkpoint each. ``extra_sections``:
    ``(title, html)`` pairs appended after the evaluation sections; ``intro``:
    HTML added to the overview; ``card_extras``: HTML per checkpoint label added
    to its overview card.
    """
    for i, section in enumerate(extra_sections):
        if not (isinstance(section, tuple) and len(section) == 2 and all(isinstance(s, str) for s in section)):
            raise AniraError(f"extra_sections[{i}] must be a (title, html) pair of strings")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AniraError(f"{out_dir}: exists and is not a directory")
    results = load_items(items, n_per_difficulty=n_per_difficulty, seed=seed, batch_size=batch_size,
                         device=device, progress=progress)
    page_text = render_report(results, title=title, extra_sections=extra_sections, intro=intro,
                              card_extras=card_extras, out_dir=out_dir)
    payload = json.dumps({"results": [r.to_dict() for r in results]}, indent=2, allow_nan=False)
    atomic_write_bytes(out_dir / RESULTS_FILE, payload.encode("utf-8"))
    return atomic_write_bytes(out_dir / REPORT_FILE, page_text.encode("utf-8"))
