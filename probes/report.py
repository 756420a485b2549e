"""Probe results as JSON, a self-contained HTML report and a plain-text summary.

Everything is rendered in memory first (figures to base64 PNGs), then each
file is written atomically (temporary file + ``os.replace``), so a failure
never leaves a half-written report. ``probe_sections(results)`` gives the
same content as ``(title, html)`` pairs for ``anira.report.write_report(...,
extra_sections=...)``.

JSON (``probe.json``, and ``anira probe --json``), schema 2::

    {"schema": 2, "anira": "0.1.0",
     "results": [{"label", "checkpoint", "task", "policy", "timing", "max_iters",
                  "n_instances", "n_rows", "accuracy", "verdict", "verdicts": {...},
                  "flags": [...], "collection": {...},
                  "suites": {NAME: {"name", "status": "ok"|"skipped"|"error", "reason",
                                    "headline": {...}, "data": {...}, "notes": [...],
                                    "figures": [...], "seconds"}},
                  "seconds"}]}
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from anira.errors import AniraError
from anira.probes.run import SCHEMA_VERSION, ProbeResult
from anira.probes.suites import SuiteResult

JSON_FILE = "probe.json"
REPORT_FILE = "probe_report.html"

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.3em 0; }
.note { color: #a33; font-size: 0.85em; } .meta { color: #666; font-size: 0.9em; }
.v-static { color: #4c72b0; font-weight: bold; } .v-execution { color: #dd8452; font-weight: bold; }
.v-mixed { color: #55a868; font-weight: bold; } .v-none, .v-undetermined, .v-baseline { color: #777; font-weight: bold; }
details pre { font-size: 0.75em; max-height: 30em; overflow: auto; background: #f8f8f8; padding: 0.5em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def to_json(results: Sequence[ProbeResult]) -> str:
    from anira import __version__

    return json.dumps({"schema": SCHEMA_VERSION, "anira": __version__,
                       "results": [r.to_dict() for r in results]}, indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------
# Plain text
# ---------------------------------------------------------------------------------------


def _get(result: ProbeResult, suite: str, key: str) -> Any:
    s = result.suite(suite)
    return s.headline.get(key) if s is not None and s.status == "ok" else None


def _part(r: ProbeResult, suite: str, key: str, q: str) -> Any:
    """Mean of the verdict quantity ``q`` (e.g. "beyond") of a suite, or None."""
    s = r.suite(suite)
    if s is None or s.status != "ok":
        return None
    return ((s.data.get("verdict") or {}).get(q) or {}).get("mean")


def format_summary(results: Sequence[ProbeResult]) -> str:
    """One row per checkpoint, the legend, then every flag and skipped suite."""
    header = (f"{'checkpoint':<22} {'task':<6} {'policy':<9} {'n':>5} {'acc':>5}  {'R² base':>7} {'+feat':>6} "
              f"{'attribution':<12} {'dev base':>8} {'+feat':>6} {'decision':<12} {'instances':<9}")
    lines = [header, "-" * len(header)]
    problems = []
    for r in results:
        att = r.suite("attribution")
        dec = r.suite("decision")

        def partition(s: SuiteResult | None, set_key: str) -> Any:
            if s is None or s.status != "ok":
                return None
            if s.name == "attribution":
                return (s.data.get("partition") or {}).get("heldout_r2", {}).get(set_key)
            sets = {"baseline": (s.data.get("baselines") or {}).get("token_position"),
                    "baseline+both": (s.data.get("sets") or {}).get("baseline+both")}
            entry = sets.get(set_key)
            return entry["deviance_explained"]["mean"] if entry else None

        heads = [s.data.get("selection", {}).get("headline") for s in (att, dec) if s is not None and s.status == "ok"]
        lines.append(
            f"{r.label[:22]:<22} {r.task[:6]:<6} {r.policy[:9]:<9} {r.n_instances:>5} {fmt(r.accuracy, 2):>5}  "
            f"{fmt(partition(att, 'baseline'), 3):>7} {fmt(partition(att, 'baseline+both'), 3):>6} "
            f"{(_get(r, 'attribution', 'reading') or '—'):<12} "
            f"{fmt(partition(dec, 'baseline'), 3):>8} {fmt(partition(dec, 'baseline+both'), 3):>6} "
            f"{(r.verdict or '—'):<12} {'/'.join(dict.fromkeys(h for h in heads if h)) or '—':<9}"
        )
        for flag in r.flags:
            problems.append(f"{r.label}: ! {flag}")
        for s in r.suites:
            if s.status != "ok":
                problems.append(f"{r.label}: suite {s.name} {s.status}: {s.reason}")
        for skip in r.collection.get("skipped", []):
            problems.append(f"{r.label}: difficulty {skip['difficulty']} skipped: {skip['reason']}")
    lines.append("R² base / dev base: held-out R² of expected depth (attribution) and deviance explained of the "
                 "exit decision (decision) by the token-identity and position baseline; +feat: with every task "
                 "feature too. "
                 "Readings: static | execution | mixed (both carry their own part) | baseline (token and position "
                 "explain it) | none | undetermined (the kinds share what they explain). instances: which "
                 "instances the headline verdict reads (solved: the paper's filter, passed its null control; "
                 "all: every instance). Details: docs/probes.md")
    return "\n".join(lines + problems)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------


def _verdict(label: str | None) -> str:
    return f'<span class="v-{_e(label or "none")}">{_e(label or "—")}</span>'


def summary_table(results: Sequence[ProbeResult]) -> str:
    head = ("<tr><th class=l>checkpoint</th><th class=l>task</th><th class=l>policy</th><th class=l>timing</th>"
            "<th>instances</th><th>accuracy</th><th>R² baseline</th><th>R² + features</th>"
            "<th class=l>attribution</th><th>deviance baseline</th><th>deviance + features</th>"
            "<th class=l>decision</th><th class=l>read on</th><th>flags</th></tr>")
    rows = []
    for r in results:
        att, dec = r.suite("attribution"), r.suite("decision")

        def part(s: SuiteResult | None, key: str) -> Any:
            if s is None or s.status != "ok":
                return None
            if s.name == "attribution":
                return (s.data.get("partition") or {}).get("heldout_r2", {}).get(key)
            entry = ((s.data.get("baselines") or {}).get("token_position") if key == "baseline"
                     else (s.data.get("sets") or {}).get(key))
            return entry["deviance_explained"]["mean"] if entry else None

        heads = [x.data.get("selection", {}).get("headline") for x in (att, dec) if x is not None and x.status == "ok"]
        rows.append(
            f"<tr><td class=l>{_e(r.label)}</td><td class=l>{_e(r.task)}</td><td class=l>{_e(r.policy)}</td>"
            f"<td class=l>{_e(r.timing)}</td><td>{r.n_instances}</td><td>{fmt(r.accuracy)}</td>"
            f"<td>{fmt(part(att, 'baseline'))}</td><td>{fmt(part(att, 'baseline+both'))}</td>"
            f"<td class=l>{_verdict(_get(r, 'attribution', 'reading'))}</td>"
            f"<td>{fmt(part(dec, 'baseline'))}</td><td>{fmt(part(dec, 'baseline+both'))}</td>"
            f"<td class=l>{_verdict(r.verdict)}</td>"
            f"<td class=l>{_e('/'.join(dict.fromkeys(h for h in heads if h)) or '—')}</td><td>{len(r.flags)}</td></tr>"
        )
    legend = ("<p class=meta>Scores are held out (by instance): R² of expected depth (attribution) and deviance "
              "explained of the exit decision (decision), by the token-identity and position baseline and with every "
              "task feature added. Verdicts: static, execution, mixed (both carry a part of their own), baseline "
              "(token and position explain it), none, undetermined (the kinds share what they explain). 'read on': "
              "solved instances (the paper's filter, which passed its null control) or all instances.</p>")
    return f"<table>{head}{''.join(rows)}</table>{legend}"


_QUANTITIES = (("lift", "everything (baseline + features) over the reference"),
               ("baseline_lift", "token identity and position alone"),
               ("beyond", "what the task features add beyond them"),
               ("static_unique", "only static features carry"),
               ("execution_unique", "only execution features carry"),
               ("shared", "either kind carries, the other could too"),
               ("static_alone", "static features alone (no baseline)"),
               ("execution_alone", "execution features alone (no baseline)"))


def _verdict_html(d: dict[str, Any]) -> str:
    """The verdict with its meaning and reason, the quantities it rests on, how the
    solved-instance filter was checked, and the flags."""
    v = d.get("verdict") or {}
    out = [f"<p>Verdict {_verdict(v.get('label'))}: {_e(v.get('meaning', ''))}. "
           f"<span class=meta>{_e(v.get('reason', ''))}</span></p>"]
    rows = []
    for key, text in _QUANTITIES:
        q = v.get(key)
        if isinstance(q, dict) and q.get("mean") is not None:
            rows.append(f"<tr><td class=l>{_e(key)}</td><td class=l>{_e(text)}</td><td>{fmt(q['mean'])}</td>"
                        f"<td>[{fmt(q.get('low'))}, {fmt(q.get('high'))}]</td></tr>")
    if rows:
        out.append(f"<table><tr><th class=l>quantity ({_e(v.get('metric', ''))})</th><th class=l>meaning</th>"
                   "<th>mean</th><th>95% CI</th></tr>" + "".join(rows) + "</table>")
    sel = d.get("selection") or {}
    if sel.get("verdicts"):
        cells = "".join(f"<tr><td class=l>{_e(k)}</td><td class=l>{_verdict(x.get('label'))}</td>"
                        f"<td>{_e(x.get('n_instances', '—'))}</td></tr>" for k, x in sel["verdicts"].items())
        out.append(f"<p class=meta>Solved instances {fmt(sel.get('solved_share'))}; headline from "
                   f"<b>{_e(sel.get('headline'))}</b> instances (correct_only={_e(sel.get('mode'))}). Null control: "
                   f"{_e(sel.get('null_check') or 'not run')}</p>"
                   "<table><tr><th class=l>run</th><th class=l>verdict</th><th>instances</th></tr>" + cells + "</table>")
    elif sel.get("note"):
        out.append(f"<p class=meta>{_e(sel['note'])}</p>")
    out.extend(f"<p class=note>flag: {_e(f)}</p>" for f in d.get("flags", []))
    return "".join(out)


def _attribution_html(s: SuiteResult) -> str:
    d = s.data
    ctrl = d.get("controlled") or {}
    ctrl_coef = {f["name"]: f["coef"] for f in ctrl.get("features", [])}
    sel_coef = {f["name"]: f["coef"] for f in d["selected"]["features"]}
    boot = d.get("bootstrap") or {}
    kept = boot.get("screened_in_share", {})
    rows = "".join(
        f"<tr><td class=l>{_e(f['name'])}</td><td class=l>{_e(f['kind'])}</td><td>{100 * f['delta_r2']:.2f}</td>"
        f"<td>{fmt(d['vif'].get(f['name']), 2)}</td><td>{'yes' if f['kept'] else 'no'}</td>"
        f"<td>{fmt(sel_coef.get(f['name']))}</td><td>{fmt(ctrl_coef.get(f['name']))}</td>"
        f"<td>{fmt(kept.get(f['name']), 2)}</td></tr>"
        for f in d["full"]["features"]
    )
    dropped = [f"{x['dropped']} (|r| = {abs(x['r']):.2f} with {x['kept']})" for x in d["dropped_correlated"]]
    dropped += [f"{x['dropped']} (VIF {x['vif']:.1f}; replaced by {x.get('replaced_by')})" for x in d["dropped_vif"]]
    return (
        f"<p>{d['n_tokens']} {_e(d['token_set'])} tokens of {d['n_instances']} instances"
        f"{' (solved only)' if d['correct_only'] else ''}; target {_e(d['target'])}.</p>"
        + _verdict_html(d)
        + f"<p>The paper's protocol (screening, ΔR² > {100 * d['thresholds']['min_delta_r2']:.1f}%, refit): R² full "
        f"{fmt(d['full']['r2'])}, selected {fmt(d['selected']['r2'])}, controlled for size {fmt(ctrl.get('r2'))}. "
        f"Share of R² static {fmt(d['share_static'])} {fmt(boot.get('share_static_ci'))}, execution "
        f"{fmt(d['share_execution'])} {fmt(boot.get('share_execution_ci'))} (95% bootstrap CI by instance, "
        f"screening redone in every replicate).</p>"
        + (f"<p class=meta>screened out: {_e('; '.join(dropped))}</p>" if dropped else "")
        + "<table><tr><th class=l>feature</th><th class=l>kind</th><th>ΔR² (%)</th><th>VIF</th><th>kept</th>"
        "<th>β selected</th><th>β | size</th><th>screened in (share of replicates)</th></tr>" + rows + "</table>"
    )


def _decision_html(s: SuiteResult) -> str:
    d = s.data
    rows = []
    for name, entry in list(d.get("sets", {}).items()) + [(f"baseline: {k}", e) for k, e in d.get("baselines", {}).items()]:
        dv, a, b = entry.get("deviance_explained", {}), entry["auroc"], entry["balanced_accuracy"]
        rows.append(f"<tr><td class=l>{_e(name)}</td><td>{fmt(dv.get('mean'))} ± {fmt(dv.get('std'))}</td>"
                    f"<td>{fmt(a['mean'])} ± {fmt(a['std'])}</td><td>{fmt(b['mean'])} ± {fmt(b['std'])}</td></tr>")
    return (
        f"<p>{_e(d['mode'])} probe on {d.get('n_tokens', 0)} {_e(d['token_set'])} tokens"
        f" ({d.get('n_rows', 0)} probe rows, {d.get('n_instances', 0)} instances, {d['n_splits']}-fold GroupKFold "
        "by instance).</p>"
        + _verdict_html(d)
        + ("<table><tr><th class=l>feature set</th><th>deviance explained</th><th>AUROC</th>"
           "<th>balanced accuracy</th></tr>" + "".join(rows) + "</table>" if rows else "")
    )


def _generic_html(s: SuiteResult) -> str:
    rows = "".join(f"<tr><td class=l>{_e(k)}</td><td>{_e(fmt(v))}</td></tr>" for k, v in s.headline.items())
    return f"<table>{rows}</table>" if rows else ""


def suite_html(s: SuiteResult) -> str:
    """One suite's block: status, tables, figures, notes, raw data."""
    from anira.probes.suites import json_safe
    from anira.report import figure_img

    out = [f"<h3>{_e(s.name)}</h3>"]
    if s.status != "ok":
        out.append(f"<p class=note>{_e(s.status)}: {_e(s.reason)}</p>")
        return "".join(out)
    if s.html is not None:
        out.append(s.html)
    elif s.name == "attribution" and "full" in s.data:
        out.append(_attribution_html(s))
    elif s.name == "decision" and "verdict" in s.data:
        out.append(_decision_html(s))
    else:
        out.append(_generic_html(s))
    out.extend(figure_img(fig, f"{s.name}: {key}") for key, fig in s.figures.items())
    out.extend(f"<p class=note>{_e(n)}</p>" for n in s.notes)
    data = json.dumps(json_safe(s.data), indent=1)
    out.append(f"<details><summary>data</summary><pre>{_e(data)}</pre></details>")
    return "".join(out)


def probe_sections(results: Sequence[ProbeResult]) -> list[tuple[str, str]]:
    """``(title, html)`` per checkpoint, plus the summary first."""
    sections = [("Probes: summary", summary_table(results))]
    for r in results:
        meta = (f"<p class=meta>{_e(r.task)} · {_e(r.policy)} ({_e(r.timing)}) · D = {r.max_iters} · "
                f"{r.n_instances} instances ({r.n_rows} token rows), accuracy {fmt(r.accuracy)} · "
                f"seed {_e(r.collection.get('seed'))} · {_e(r.checkpoint or 'in-memory model')}</p>")
        skipped = "".join(f"<p class=note>difficulty {_e(s['difficulty'])} skipped: {_e(s['reason'])}</p>"
                          for s in r.collection.get("skipped", []))
        sections.append((f"Probes: {r.label}", meta + skipped + "".join(suite_html(s) for s in r.suites)))
    return sections


def render_probe_report(results: Sequence[ProbeResult], title: str = "anira probe report") -> str:
    from anira import __version__

    body = [f"<h1>{_e(title)}</h1>", f"<div class=meta>anira {_e(__version__)}</div>"]
    body.extend(f"<section><h2>{_e(t)}</h2>{h}</section>" for t, h in probe_sections(results))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_probe_report(results: Sequence[ProbeResult], out_dir: str | Path, title: str = "anira probe report"
                       ) -> dict[str, Path]:
    """Write ``probe.json`` and ``probe_report.html`` under ``out_dir`` (both rendered
    before either is written; each written atomically)."""
    from anira.plots import atomic_write_bytes

    if not results:
        raise AniraError("no probe results to report")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AniraError(f"{out}: exists and is not a directory")
    payload = to_json(results).encode("utf-8")
    page = render_probe_report(results, title).encode("utf-8")
    return {"json": atomic_write_bytes(out / JSON_FILE, payload),
            "html": atomic_write_bytes(out / REPORT_FILE, page)}
