"""Probe results as JSON, a self-contained HTML report and a plain-text summary.

Everything is rendered in memory first (figures to base64 PNGs), then each
file is written atomically (temporary file + ``os.replace``), so a failure
never leaves a half-written report. ``probe_sections(results)`` gives the
same content as ``(title, html)`` pairs for ``anira.report.write_report(...,
extra_sections=...)``; ``probe_intro`` and ``verdict_card`` feed its overview.

Verdicts are shown generically, whatever a suite's JSON carries: a suite's
``data["verdict"]`` (a dict with ``label`` and ``reason``; every other field
is shown beside it as evidence or a flag) or, failing that, its
``data["reading"]`` label (explained from the evidence in ``data`` when the
suite gives no reason of its own). A suite that was skipped shows why.

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

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from anira.errors import AniraError
from anira.htmlpage import badge, display_path, doc_link, e, figure_img, page, scroll, slug, unique_ids
from anira.probes.run import SCHEMA_VERSION, ProbeResult
from anira.probes.suites import SuiteResult
from anira.probes.verdict import MEANINGS as VERDICT_MEANINGS

JSON_FILE = "probe.json"
REPORT_FILE = "probe_report.html"

#: what each verdict / reading label means (the verdict suites' own words,
#: anira.probes.verdict.MEANINGS); a label a suite adds later is shown with its own
#: reason only
LABEL_MEANINGS = {**VERDICT_MEANINGS, "skipped": "the suite could not run on this checkpoint; the reason is given"}

#: verdict fields shown in the verdict's own line, not again as evidence
_SHOWN = {"label", "reason", "meaning"}
#: settings of the rule, shown once in the guide rather than in every row
_SETTINGS = {"metric", "min_effect", "level"}


def _fnum(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fnum(v, digits) for v in value) + "]"
    return str(value)


def fmt(value: Any, digits: int = 3) -> str:
    """A value for a table cell ("—" for missing or non-finite)."""
    return _fnum(value, digits)


def to_json(results: Sequence[ProbeResult]) -> str:
    from anira import __version__

    return json.dumps({"schema": SCHEMA_VERSION, "anira": __version__,
                       "results": [r.to_dict() for r in results]}, indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------
# Verdicts, generically
# ---------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the report shows for one suite's conclusion on one checkpoint."""

    suite: str
    label: str
    reason: str
    evidence: list[tuple[str, str, bool]]  # (name, value, is a warning)


def _is_interval(value: Any) -> bool:
    return isinstance(value, dict) and {"mean", "low", "high"} <= set(value)


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else "—"


def _evidence(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str, bool]]:
    """Every field of a verdict as (name, value, warning) for display: intervals as
    mean [low, high], flags (booleans) as yes/no, lists joined, dicts one level down."""
    out: list[tuple[str, str, bool]] = []
    for key, value in fields.items():
        name = prefix + str(key).replace("_", " ")
        if value is None:
            continue
        if _is_interval(value):
            out.append((name, f"{_signed(value['mean'])} [{_signed(value['low'])}, {_signed(value['high'])}]", False))
        elif isinstance(value, bool):
            out.append((name, "yes" if value else "no", value and _warning_name(str(key))))
        elif isinstance(value, dict):
            out.extend(_evidence(value, prefix=name + " › ") if prefix == "" else [(name, _compact(value), False)])
        elif isinstance(value, (list, tuple)):
            if value:
                out.append((name, "; ".join(_fnum(v) for v in value), _warning_name(str(key))))
        else:
            out.append((name, _fnum(value), False))
    return out


def _warning_name(key: str) -> bool:
    # fields named like problems are drawn as warnings when set
    return any(w in key.lower() for w in ("flag", "warn", "disagree", "fail", "unstable", "caution"))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)[:160]


def _reading_reason(data: dict[str, Any]) -> str:
    """Why the attribution reads as it does, from the evidence it stored."""
    boot = data.get("bootstrap") or {}
    selected = data.get("selected") or {}
    r2, r2_ci = selected.get("r2"), boot.get("r2_ci")
    label = data.get("reading")
    fit = f"R² of the selected features {_fnum(r2)}" + (f", 95% CI {_fnum(r2_ci)}" if r2_ci else "")
    if label == "none":
        return f"{fit}: the features explain too little of the depth variation to attribute it"
    shares = (f"share of explained variance static {_fnum(data.get('share_static'))} {_fnum(boot.get('share_static_ci'))}, "
              f"execution {_fnum(data.get('share_execution'))} {_fnum(boot.get('share_execution_ci'))}")
    tail = " — neither kind decisively ahead" if label == "mixed" else ""
    return f"{shares}; {fit}{tail}"


def suite_verdict(s: SuiteResult) -> Verdict | None:
    """The conclusion a suite reached (None when it reaches none, e.g. representation)."""
    if s.status != "ok":
        return Verdict(s.name, s.status, s.reason, [])
    data = s.data or {}
    v = data.get("verdict")
    if isinstance(v, dict) and "label" in v:
        fields = {k: x for k, x in v.items() if k not in _SHOWN | _SETTINGS}
        evidence = _evidence(fields)
        if isinstance(data.get("flags"), list) and data["flags"]:
            evidence.append(("flags", "; ".join(map(str, data["flags"])), True))
        return Verdict(s.name, str(v["label"]), str(v.get("reason", "")), evidence)
    if isinstance(data.get("reading"), str):
        reason = data.get("reading_reason") or data.get("reason") or _reading_reason(data)
        evidence = []
        if isinstance(data.get("flags"), list) and data["flags"]:
            evidence.append(("flags", "; ".join(map(str, data["flags"])), True))
        return Verdict(s.name, data["reading"], str(reason), evidence)
    return None


def verdict_html(v: Verdict, *, evidence: bool = True) -> str:
    """The label, its explanation beside it, and every other field it carries."""
    meaning = LABEL_MEANINGS.get(v.label, "")
    parts = [f"<div class=verdict>{badge(v.label, meaning)} <span class=why>{e(v.reason) or e(meaning)}</span>"]
    if evidence and v.evidence:
        chips = "".join(f"<li{' class=warn' if warn else ''}>{e(name)}: {e(value)}</li>" for name, value, warn in v.evidence)
        parts.append(f"<ul class=flags>{chips}</ul>")
    parts.append("</div>")
    return "".join(parts)


def verdicts(result: ProbeResult) -> list[Verdict]:
    return [v for v in (suite_verdict(s) for s in result.suites) if v is not None]


def verdict_card(result: ProbeResult) -> str:
    """A checkpoint's verdicts for its overview card: each suite's label and reason."""
    rows = "".join(f"<div class=meta>{e(v.suite)}</div>{verdict_html(v, evidence=False)}" for v in verdicts(result))
    return rows


def verdict_guide(results: Sequence[ProbeResult] = ()) -> str:
    """What each label means, and the rule settings the verdicts were reached with."""
    labels = list(LABEL_MEANINGS)
    for r in results:
        labels.extend(v.label for v in verdicts(r) if v.label not in labels)
    items = "".join(f"<li>{badge(lab)} {e(LABEL_MEANINGS.get(lab, 'see the explanation beside it'))}</li>"
                    for lab in labels)
    settings = sorted({
        f"{k.replace('_', ' ')} {_fnum(val)}"
        for r in results for s in r.suites if s.status == "ok" and isinstance((s.data or {}).get("verdict"), dict)
        for k, val in s.data["verdict"].items() if k in _SETTINGS
    })
    tail = f"<p class=meta>decision rule settings: {e(', '.join(settings))}</p>" if settings else ""
    return f"<ul class=guide>{items}</ul>{tail}"


def probe_intro(results: Sequence[ProbeResult], out_dir: Path | None = None) -> str:
    """What the probe suites did on these checkpoints, and how to read a verdict."""
    if not results:
        return ""
    suites = list(dict.fromkeys(s.name for r in results for s in r.suites))
    sizes = sorted({r.n_instances for r in results})
    near = [Path(r.checkpoint) for r in results if r.checkpoint]
    return (
        f"<p>Then ran the probe suites <b>{e(', '.join(suites))}</b> on {e(' / '.join(map(str, sizes)))} fresh "
        "instances per checkpoint: each asks whether a token's depth follows <i>static</i> cues (readable from "
        "the input) or the <i>execution</i> state of the algorithm solving the task, and reaches a verdict "
        f"({doc_link('docs/probes.md', 'how', out_dir=out_dir, near=near)}):</p>" + verdict_guide(results)
    )


# ---------------------------------------------------------------------------------------
# Plain text
# ---------------------------------------------------------------------------------------


def _get(result: ProbeResult, suite: str, key: str) -> Any:
    s = result.suite(suite)
    return s.headline.get(key) if s is not None and s.status == "ok" else None


def _score(s: SuiteResult | None, key: str) -> Any:
    """The held-out score of a verdict set (``baseline`` or ``baseline+both``): R² of
    expected depth for the attribution, deviance explained for the decision probe."""
    if s is None or s.status != "ok":
        return None
    if s.name == "attribution":
        return (s.data.get("partition") or {}).get("heldout_r2", {}).get(key)
    entry = ((s.data.get("baselines") or {}).get("token_position") if key == "baseline"
             else (s.data.get("sets") or {}).get(key))
    return entry["deviance_explained"]["mean"] if entry and "deviance_explained" in entry else None


def _read_on(r: ProbeResult) -> str:
    heads = [s.data.get("selection", {}).get("headline") for s in r.suites
             if s.status == "ok" and s.name in ("attribution", "decision")]
    return "/".join(dict.fromkeys(h for h in heads if h)) or "—"


def format_summary(results: Sequence[ProbeResult]) -> str:
    """One row per checkpoint, the legend, why each verdict reads as it does, then
    every flag and every skipped or failed suite."""
    header = (f"{'checkpoint':<22} {'task':<6} {'policy':<9} {'n':>5} {'acc':>5}  {'R² base':>7} {'+feat':>6} "
              f"{'attribution':<12} {'dev base':>8} {'+feat':>6} {'decision':<12} {'read on':<9}")
    lines = [header, "-" * len(header)]
    why, problems = [], []
    for r in results:
        att, dec = r.suite("attribution"), r.suite("decision")
        lines.append(
            f"{r.label[:22]:<22} {r.task[:6]:<6} {r.policy[:9]:<9} {r.n_instances:>5} {fmt(r.accuracy, 2):>5}  "
            f"{fmt(_score(att, 'baseline'), 3):>7} {fmt(_score(att, 'baseline+both'), 3):>6} "
            f"{(_get(r, 'attribution', 'reading') or '—'):<12} "
            f"{fmt(_score(dec, 'baseline'), 3):>8} {fmt(_score(dec, 'baseline+both'), 3):>6} "
            f"{(r.verdict or '—'):<12} {_read_on(r):<9}"
        )
        for s in (dec, att):  # the decision verdict is the checkpoint's; the attribution's is named
            v = suite_verdict(s) if s is not None and s.status == "ok" else None
            if v is not None and v.reason:
                why.append(f"{r.label}: {'' if s is dec else 'attribution: '}{v.label}: {v.reason}")
        for flag in r.flags:
            problems.append(f"{r.label}: ! {flag}")
        for s in r.suites:
            if s.status != "ok":
                problems.append(f"{r.label}: suite {s.name} {s.status}: {s.reason}")
        for skip in r.collection.get("skipped", []):
            problems.append(f"{r.label}: difficulty {skip['difficulty']} skipped: {skip['reason']}")
    lines.append("R² base / dev base: held-out R² of expected depth (attribution) and deviance explained of the "
                 "exit decision (decision) by the token-identity and position baseline; +feat: with every task "
                 "feature too. Verdicts: static | execution | mixed (both carry their own part) | baseline (token "
                 "and position explain it) | none | undetermined (the kinds share what they explain). read on: "
                 "solved instances (the paper's filter, which passed its null control) or all. docs/probes.md")
    return "\n".join(lines + (["", "why each verdict:"] + why if why else []) + problems)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------


def summary_table(results: Sequence[ProbeResult]) -> str:
    """The headline numbers, one row per checkpoint."""
    head = ("<tr><th class=l rowspan=2>checkpoint</th><th class=l rowspan=2>task</th><th class=l rowspan=2>policy</th>"
            "<th class=l rowspan=2>timing</th><th rowspan=2>instances</th><th rowspan=2>accuracy</th>"
            "<th class=group colspan=3>attribution (held-out R²)</th>"
            "<th class=group colspan=3>decision probes (deviance explained)</th>"
            "<th class=l rowspan=2>read on</th><th rowspan=2>flags</th></tr>"
            "<tr><th>baseline</th><th>+ features</th><th class=l>verdict</th>"
            "<th>baseline</th><th>+ features</th><th class=l>verdict</th></tr>")
    rows = []
    for r in results:
        att, dec = r.suite("attribution"), r.suite("decision")
        rows.append(
            f'<tr><td class=l><a href="#{e(section_id(r.label))}">{e(r.label)}</a></td><td class=l>{e(r.task)}</td>'
            f"<td class=l>{e(r.policy)}</td><td class=l>{e(r.timing)}</td><td>{r.n_instances}</td>"
            f"<td>{fmt(r.accuracy)}</td><td>{fmt(_score(att, 'baseline'))}</td><td>{fmt(_score(att, 'baseline+both'))}</td>"
            f"<td class=l>{e(_get(r, 'attribution', 'reading') or '—')}</td>"
            f"<td>{fmt(_score(dec, 'baseline'))}</td><td>{fmt(_score(dec, 'baseline+both'))}</td>"
            f"<td class=l>{e(r.verdict or '—')}</td><td class=l>{e(_read_on(r))}</td><td>{len(r.flags)}</td></tr>"
        )
    return scroll(f"<table>{head}{''.join(rows)}</table>")


def _selection_html(d: dict[str, Any]) -> str:
    """How the solved-instance filter was checked: the four runs and the headline."""
    sel = d.get("selection") or {}
    if not sel.get("verdicts"):
        return f"<p class=meta>{e(sel['note'])}</p>" if sel.get("note") else ""
    cells = "".join(f"<tr><td class=l>{e(k)}</td><td class=l>{e(x.get('label') or x.get('skipped') or '—')}</td>"
                    f"<td>{e(x.get('n_instances', '—'))}</td></tr>" for k, x in sel["verdicts"].items())
    return (f"<p class=meta>Solved instances {fmt(sel.get('solved_share'))}; the headline reads <b>{e(sel.get('headline'))}</b> "
            f"instances (correct_only={e(sel.get('mode'))}). Null control: {e(sel.get('null_check') or 'not run')}.</p>"
            + scroll("<table><tr><th class=l>run</th><th class=l>verdict</th><th>instances</th></tr>" + cells + "</table>")
            + _null_draws_html(sel))


def _null_draws_html(sel: dict[str, Any]) -> str:
    """With several null permutations: each draw under the solved filter, and the pool."""
    draws = sel.get("null_draws") or []
    if len(draws) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{e(d['draw'])}</td><td class=l>{e(d.get('label') or d.get('skipped') or '—')}</td>"
        f"<td>{fmt((d.get('beyond') or {}).get('mean'))}</td><td>{fmt((d.get('beyond') or {}).get('se'))}</td>"
        f"<td>{e(d.get('n_instances', '—'))}</td></tr>" for d in draws)
    pooled, bound = sel.get("null_pooled") or {}, sel.get("null_bound") or {}
    if pooled:
        rows += (f"<tr><td class=l>pooled ({e(pooled.get('n_draws'))})</td><td class=l>between-draw sd "
                 f"{fmt(pooled.get('between_sd'))}</td><td>{fmt(pooled.get('mean'))}</td><td>{fmt(pooled.get('se'))}</td>"
                 f"<td>—</td></tr>")
    tail = (f" Solved minus null ≥ {fmt(bound.get('low'))} at 95 % (t with {fmt(bound.get('df'), 1)} degrees of "
            "freedom)." if bound else "")
    return (f"<p class=meta>The null control's {len(draws)} permutations under the solved filter: what the features "
            f"add beyond the baseline on each, and pooled (se² = mean within-draw se² + between-draw variance / K).{tail}"
            "</p>" + scroll("<table><tr><th>draw</th><th class=l>verdict</th><th>beyond</th><th>se</th>"
                            "<th>instances</th></tr>" + rows + "</table>"))


def verdict_table(results: Sequence[ProbeResult]) -> str:
    """One row per checkpoint, one column per suite that reaches a verdict; each
    cell the label with its explanation and every flag it carries."""
    suites = list(dict.fromkeys(v.suite for r in results for v in verdicts(r)))
    if not suites:
        return ""
    head = "<tr><th class=l>checkpoint</th>" + "".join(f"<th class=l>{e(s)}</th>" for s in suites) + "</tr>"
    rows = []
    for r in results:
        by_suite = {v.suite: v for v in verdicts(r)}
        cells = "".join(f"<td class=text>{verdict_html(by_suite[s]) if s in by_suite else '—'}</td>" for s in suites)
        rows.append(f'<tr><td class=l><a href="#{e(section_id(r.label))}">{e(r.label)}</a>'
                    f"<div class=meta>{e(r.task)} · {e(r.policy)}</div></td>{cells}</tr>")
    return scroll(f"<table>{head}{''.join(rows)}</table>")


def _attribution_html(s: SuiteResult) -> str:
    d = s.data
    ctrl = d.get("controlled") or {}
    ctrl_coef = {f["name"]: f["coef"] for f in ctrl.get("features", [])}
    sel_coef = {f["name"]: f["coef"] for f in d["selected"]["features"]}
    rows = "".join(
        f"<tr><td class=l>{e(f['name'])}</td><td class=l>{e(f['kind'])}</td><td>{100 * f['delta_r2']:.2f}</td>"
        f"<td>{fmt(d['vif'].get(f['name']), 2)}</td><td>{'yes' if f['kept'] else 'no'}</td>"
        f"<td>{fmt(sel_coef.get(f['name']))}</td><td>{fmt(ctrl_coef.get(f['name']))}</td>"
        f"<td>{fmt((d.get('bootstrap') or {}).get('screened_in_share', {}).get(f['name']), 2)}</td></tr>"
        for f in d["full"]["features"]
    )
    dropped = [f"{x['dropped']} (|r| = {abs(x['r']):.2f} with {x['kept']})" for x in d["dropped_correlated"]]
    dropped += [f"{x['dropped']} (VIF {x['vif']:.1f}, replaced by {x.get('replaced_by')})" for x in d["dropped_vif"]]
    boot = d.get("bootstrap") or {}
    part = (d.get("partition") or {}).get("heldout_r2", {})
    return (
        f"<p>Regression of {e(d['target'])} on {d['n_tokens']} {e(d['token_set'])} tokens of {d['n_instances']} "
        f"instances{' (solved only)' if d['correct_only'] else ''}. The verdict compares held-out R² "
        f"({e((d.get('partition') or {}).get('splits', ''))}): baseline {fmt(part.get('baseline'))}, + static "
        f"{fmt(part.get('baseline+static'))}, + execution {fmt(part.get('baseline+execution'))}, + both "
        f"{fmt(part.get('baseline+both'))}.</p>"
        + _selection_html(d)
        + f"<p>The paper's protocol: R² full {fmt(d['full']['r2'])}, selected {fmt(d['selected']['r2'])}, controlled "
        f"for size {fmt(ctrl.get('r2'))}. Share of R² static {fmt(d['share_static'])} {fmt(boot.get('share_static_ci'))}, "
        f"execution {fmt(d['share_execution'])} {fmt(boot.get('share_execution_ci'))} (95% bootstrap CI by instance, "
        "screening redone in every replicate).</p>"
        + (f"<p class=meta>screened out: {e('; '.join(dropped))}</p>" if dropped else "")
        + scroll("<table><tr><th class=l>feature</th><th class=l>kind</th><th>ΔR² (%)</th><th>VIF</th><th>kept</th>"
                 "<th>β selected</th><th>β | size</th><th>screened in</th></tr>" + rows + "</table>")
    )


def _decision_html(s: SuiteResult) -> str:
    d = s.data
    rows = []
    for name, entry in list(d.get("sets", {}).items()) + [(f"baseline: {k}", x) for k, x in d.get("baselines", {}).items()]:
        dv, a, b = entry.get("deviance_explained") or {}, entry["auroc"], entry["balanced_accuracy"]
        rows.append(f"<tr><td class=l>{e(name)}</td><td>{fmt(dv.get('mean'))} ± {fmt(dv.get('std'))}</td>"
                    f"<td>{fmt(a['mean'])} ± {fmt(a['std'])}</td><td>{fmt(b['mean'])} ± {fmt(b['std'])}</td></tr>")
    # the data may lack any count (a constant decision fits nothing): say only what is there
    tokens = " ".join(str(x) for x in (d.get("n_tokens"), d.get("token_set")) if x is not None)
    tokens = f" on {e(tokens)} tokens" if tokens else ""
    if "n_rows" in d:  # a probe was fitted
        folds = f", {d['n_splits']}-fold GroupKFold by instance" if "n_splits" in d else ""
        fitted = f" ({d['n_rows']} probe rows from {d.get('n_instances', '?')} instances{folds})"
    else:
        fitted = ": no probe was fitted"
    return (
        f"<p>{e(d.get('mode', ''))} probe of the halting decision{tokens}{fitted}. The verdict compares held-out "
        "deviance explained of the baseline and nested sets.</p>"
        + _selection_html(d)
        + (scroll("<table><tr><th class=l>feature set</th><th>deviance explained</th><th>AUROC</th>"
                  "<th>balanced accuracy</th></tr>" + "".join(rows) + "</table>") if rows else "")
    )


def _generic_html(s: SuiteResult) -> str:
    rows = "".join(f"<tr><td class=l>{e(k)}</td><td>{e(fmt(v))}</td></tr>" for k, v in s.headline.items())
    return scroll(f"<table>{rows}</table>") if rows else ""


def suite_html(s: SuiteResult) -> str:
    """One suite's block: its verdict with the reason, tables, figures, notes, raw data."""
    from anira.probes.suites import json_safe

    out = [f"<div class=block><h3>{e(s.name)}</h3>"]
    v = suite_verdict(s)
    if v is not None:
        out.append(verdict_html(v))
    if s.status != "ok":
        out.append("</div>")
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
    out.extend(f"<p class=note>{e(n)}</p>" for n in s.notes)
    data = json.dumps(json_safe(s.data), indent=1)
    out.append(f"<details><summary>raw data</summary><pre>{e(data)}</pre></details></div>")
    return "".join(out)


def section_id(label: str) -> str:
    return "probe-" + slug(label)


def probe_sections(results: Sequence[ProbeResult]) -> list[tuple[str, str]]:
    """``(title, html)``: the verdicts and headline numbers of every checkpoint
    first, then one section per checkpoint."""
    sections = [("Probes: verdicts", verdict_table(results)
                 + "<h3>Headline numbers</h3>" + summary_table(results))]
    for r in results:
        meta = (f"<p class=meta>{e(r.task)} · {e(r.policy)} ({e(r.timing)}) · D = {r.max_iters} · "
                f"{r.n_instances} instances ({r.n_rows} token rows), accuracy {fmt(r.accuracy)} · "
                f"seed {e(r.collection.get('seed'))} · {e(display_path(r.checkpoint) if r.checkpoint else 'in-memory model')}</p>")
        skipped = "".join(f"<p class=note>difficulty {e(s['difficulty'])} skipped: {e(s['reason'])}</p>"
                          for s in r.collection.get("skipped", []))
        # the anchor the tables link to sits on the section's first element
        anchor = f'<div id="{e(section_id(r.label))}"></div>'
        sections.append((f"Probes: {r.label}", anchor + meta + skipped + "".join(suite_html(s) for s in r.suites)))
    return sections


def render_probe_report(results: Sequence[ProbeResult], title: str = "anira probe report",
                        out_dir: str | Path | None = None) -> str:
    from anira import __version__

    out = Path(out_dir) if out_dir is not None else None
    near = [Path(r.checkpoint) for r in results if r.checkpoint]
    intro = (
        "<div class=intro><div>" + probe_intro(results, out).replace("<p>Then ran", "<p>Ran", 1) + "</div>"
        "<div><p><b>Further reading.</b></p><ul>"
        f"<li>{doc_link('docs/probes.md', out_dir=out, near=near)} — each suite, its options and its rule</li>"
        f"<li>{doc_link('docs/findings.md', out_dir=out, near=near)} — what the bundled checkpoints show</li>"
        "</ul></div></div>"
    )
    sections = [("Overview", intro), *probe_sections(results)]
    ids = unique_ids([t for t, _ in sections], taken=[section_id(r.label) for r in results])
    header = f"<div class=meta>anira {e(__version__)}</div>"
    return page(title, [(sid, t, h) for sid, (t, h) in zip(ids, sections)], header=header)


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
    page_text = render_probe_report(results, title, out_dir=out).encode("utf-8")
    return {"json": atomic_write_bytes(out / JSON_FILE, payload),
            "html": atomic_write_bytes(out / REPORT_FILE, page_text)}
