"""Alignment suite: rank correlation of the compute a token gets with each task feature.

The paper's LANO table (docs/paper.md §4, "Alignment") reports, per parser
proxy, Spearman's ρ between a token's expected depth Σ_d d·q(d) and the proxy
over the analysed tokens. This suite computes that table for any task and
checkpoint, one feature at a time:

* **tokens**: the task's token set (option ``token_set``, default ``auto``:
  the set the verdict suites analyse, :func:`anira.probes.featureset.default_token_set`
  — LANO's predicting positions), of every instance unless ``correct_only``;
  for each feature, the tokens where it is defined (not NaN). Unlike the
  verdict suites' screening, a token undefined for one feature still counts
  for the others: the correlations are marginal, one feature each.
* **ρ**: :func:`anira.evaluate.spearman` (average ranks for ties) of the
  target and the feature over those tokens, pooled over instances — the same
  number ``anira eval`` reports as ``feature_spearman`` on its own instances.
* **interval**: a percentile bootstrap over *instances* (a cluster
  bootstrap): each replicate draws the instances with replacement and
  recomputes ρ on all tokens of the drawn instances. Tokens of one instance
  share its structure, so resampling tokens would treat them as independent
  and give intervals far too narrow. The replicates are the same draws for
  every feature. ρ on a replicate is computed exactly, as on the sample with
  each instance's tokens repeated as often as it was drawn, from weighted
  average ranks (:func:`weighted_spearman`), without materialising that sample.
* **undefined**: a feature constant on its tokens (or defined on fewer than
  ``min_coverage`` of them) gets ``rho = None`` and the reason — never 0,
  which would claim "no relation". A constant target (a fixed-depth model, a
  decider collapsed to one depth) makes every ρ undefined: the suite is then
  skipped with that reason.
* **within instances**: the quartiles over instances of ρ computed inside
  each instance (instances where both vary), which shows whether the pooled
  ρ holds in most instances or comes from some of them, or from differences
  between instances (a feature constant within instances, such as LANO's
  ``length``, has no within-instance ρ).

A rank correlation is not attribution: every feature correlated with the one
the decider reads correlates with depth too. The attribution suite separates
features; this one reproduces the paper's table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from anira.errors import AniraError
from anira.evaluate import spearman
from anira.probes.featureset import default_token_set
from anira.probes.options import TOKEN_SETS, Option, name_list, read_options
from anira.probes.suites import Requirements, SuiteContext, SuiteResult
from anira.probes.table import TokenTable


class _Ranker:
    """Average ranks of a fixed vector under per-element integer weights (repeat counts).

    An element of weight w stands for w copies; a tie group of total weight W
    whose sorted predecessors weigh B occupies ranks B+1..B+W and each copy
    gets their mean B + (W+1)/2 — what :func:`anira.evaluate.rankdata` gives
    on the repeated sample.
    """

    def __init__(self, values: np.ndarray) -> None:
        order = np.argsort(values, kind="mergesort")
        ordered = values[order]
        group_sorted = np.concatenate([[0], np.cumsum(np.diff(ordered) != 0)]).astype(np.int64)
        self.n_groups = int(group_sorted[-1]) + 1 if values.size else 0
        self.group = np.empty(values.size, dtype=np.int64)
        self.group[order] = group_sorted

    def ranks(self, weights: np.ndarray) -> np.ndarray:
        total = np.bincount(self.group, weights=weights, minlength=self.n_groups)
        before = np.cumsum(total) - total
        return (before + (total + 1.0) / 2.0)[self.group]


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    sw = w.sum()
    if sw <= 0:
        return math.nan
    xc = x - np.dot(w, x) / sw
    yc = y - np.dot(w, y) / sw
    sxx, syy = float(np.dot(w, xc * xc)), float(np.dot(w, yc * yc))
    # relative tolerance: ranks are sums of weights, exact up to rounding
    scale = float(np.dot(w, x * x)) + float(np.dot(w, y * y)) + 1.0
    if sxx <= 1e-12 * scale or syy <= 1e-12 * scale:
        return math.nan
    return float(np.clip(np.dot(w, xc * yc) / math.sqrt(sxx * syy), -1.0, 1.0))


def weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Spearman's ρ of the sample in which element i appears ``weights[i]`` times
    (integer weights; 0 leaves it out). NaN when either side is constant there."""
    w = np.asarray(weights, dtype=np.float64)
    return _weighted_pearson(_Ranker(np.asarray(x, np.float64)).ranks(w),
                             _Ranker(np.asarray(y, np.float64)).ranks(w), w)


def _ci(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return float(lo), float(hi)


def _quartiles(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if not math.isnan(x)])
    if v.size == 0:
        return {"n_instances": 0, "q25": None, "median": None, "q75": None}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n_instances": int(v.size), "q25": float(q25), "median": float(med), "q75": float(q75)}


def _within_instances(instance: np.ndarray, target: np.ndarray, feature: np.ndarray) -> list[float]:
    """ρ inside each instance (NaN where either side is constant in it)."""
    order = np.argsort(instance, kind="stable")
    inst, t, f = instance[order], target[order], feature[order]
    cuts = np.flatnonzero(np.diff(inst)) + 1
    out = []
    for ts, fs in zip(np.split(t, cuts), np.split(f, cuts)):
        if ts.size >= 3 and np.ptp(ts) > 0 and np.ptp(fs) > 0:
            out.append(spearman(ts, fs))
        else:
            out.append(math.nan)
    return out


def align(table: TokenTable, *, token_set: str = "auto", correct_only: bool = False,
          target: str = "expected_depth", features: list[str] | None = None, n_boot: int = 1000,
          level: float = 0.95, min_coverage: float = 0.5, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Spearman ρ of ``target`` with each feature, with instance-bootstrap intervals
    (module docstring); returns (JSON-able result, notes). Raises a one-line
    :class:`AniraError` when there is nothing to correlate."""
    if target not in ("expected_depth", "exit_depth"):
        raise AniraError(f"target must be expected_depth or exit_depth, got {target!r}")
    if not 0.0 < level < 1.0:
        raise AniraError(f"level must lie strictly between 0 and 1, got {level!r}")
    where = default_token_set(table) if token_set == "auto" else token_set
    rows = table.rows(where, correct_only=correct_only)
    solved = " of solved instances" if correct_only else ""
    if rows.size == 0:
        raise AniraError(f"no {where} tokens{solved} in the table")
    names = list(table.specs) if features is None else list(features)
    unknown = [n for n in names if n not in table.specs]
    if unknown:
        raise AniraError(f"task {table.meta.get('task', '?')!r} has no feature {unknown[0]!r}")
    if not names:
        raise AniraError("the task declares no feature to correlate with")
    y_all = np.asarray(table[target], dtype=np.float64)
    y_rows = y_all[rows]
    if np.ptp(y_rows) == 0:
        raise AniraError(f"the target {target} is constant ({y_rows[0]:g}) on the {rows.size} {where} tokens"
                         f"{solved}: every rank correlation with it is undefined")
    instance_all = np.asarray(table["instance"])
    ids, inverse_rows = np.unique(instance_all[rows], return_inverse=True)
    n_inst = ids.size
    rng = np.random.default_rng(seed)
    counts = (rng.multinomial(n_inst, np.full(n_inst, 1.0 / n_inst), size=n_boot).astype(np.float64)
              if n_boot > 0 else np.zeros((0, n_inst)))
    notes: list[str] = []
    out: list[dict[str, Any]] = []
    for name in names:
        spec = table.specs[name]
        x_rows = table.feature(name, rows)
        defined = ~np.isnan(x_rows)
        coverage = float(defined.mean())
        entry: dict[str, Any] = {"name": name, "kind": spec.kind, "rho": None, "ci_low": None, "ci_high": None,
                                 "n_tokens": int(defined.sum()),
                                 "n_instances": int(np.unique(inverse_rows[defined]).size),
                                 "coverage": coverage, "undefined": None, "n_boot_defined": 0,
                                 "within_instance": _quartiles([])}
        out.append(entry)
        if coverage < min_coverage:
            entry["undefined"] = (f"defined on {coverage:.0%} of the {where} tokens (below min_coverage "
                                  f"{min_coverage:g})")
            notes.append(f"feature {name!r}: {entry['undefined']}")
            continue
        x, y, grp = x_rows[defined], y_rows[defined], inverse_rows[defined]
        if np.ptp(x) == 0:
            entry["undefined"] = f"constant (= {x[0]:g}) on its {x.size} tokens"
            notes.append(f"feature {name!r}: rank correlation undefined, {entry['undefined']}")
            continue
        if np.ptp(y) == 0:
            entry["undefined"] = f"{target} constant (= {y[0]:g}) on the tokens where this feature is defined"
            notes.append(f"feature {name!r}: rank correlation undefined, {entry['undefined']}")
            continue
        entry["rho"] = spearman(y, x)
        if n_boot > 0:
            rx, ry = _Ranker(x), _Ranker(y)
            reps = np.empty(n_boot)
            for b in range(n_boot):
                w = counts[b, grp]
                reps[b] = _weighted_pearson(ry.ranks(w), rx.ranks(w), w)
            entry["ci_low"], entry["ci_high"] = _ci(reps, level)
            entry["n_boot_defined"] = int(np.sum(~np.isnan(reps)))
            if entry["n_boot_defined"] < n_boot:
                notes.append(f"feature {name!r}: ρ undefined (a side constant) in "
                             f"{n_boot - entry['n_boot_defined']} of {n_boot} bootstrap replicates; "
                             "the interval uses the others")
        entry["within_instance"] = _quartiles(_within_instances(grp, y, x))
    q10, med, q90 = np.quantile(y_rows, [0.1, 0.5, 0.9])
    exits = np.asarray(table["exit_depth"])[rows]
    spread = {"mean": float(y_rows.mean()), "std": float(y_rows.std()), "min": float(y_rows.min()),
              "q10": float(q10), "median": float(med), "q90": float(q90), "max": float(y_rows.max()),
              "exit_depth_share": {int(d): float(np.mean(exits == d)) for d in np.unique(exits)}}
    result = {
        "token_set": where,
        "correct_only": correct_only,
        "target": target,
        "n_tokens": int(rows.size),
        "n_instances": int(n_inst),
        "n_boot": n_boot,
        "level": level,
        "interval": "percentile bootstrap over instances",
        "target_spread": spread,
        "features": out,
    }
    return result, notes


def _html(result: dict[str, Any]) -> str:
    from anira.htmlpage import e, scroll
    from anira.probes.report import fmt

    rows = []
    for f in result["features"]:
        ci = "—" if f["ci_low"] is None else f"[{fmt(f['ci_low'])}, {fmt(f['ci_high'])}]"
        w = f["within_instance"]
        within = "—" if w["median"] is None else f"{fmt(w['median'])} [{fmt(w['q25'])}, {fmt(w['q75'])}] ({w['n_instances']})"
        rho = fmt(f["rho"]) if f["rho"] is not None else f"undefined: {f['undefined']}"
        rows.append(f"<tr><td class=l>{e(f['name'])}</td><td class=l>{e(f['kind'])}</td><td>{e(rho)}</td>"
                    f"<td>{e(ci)}</td><td>{f['n_tokens']}</td><td>{f['n_instances']}</td><td>{e(within)}</td></tr>")
    level = f"{result['level']:.0%}"
    return (f"<p>Spearman ρ of {e(result['target'])} with each feature over {e(result['token_set'])} tokens"
            f"{' of solved instances' if result['correct_only'] else ''} ({result['n_tokens']} tokens of "
            f"{result['n_instances']} instances); {level} interval: percentile bootstrap over instances "
            f"({result['n_boot']} replicates). A rank correlation is not attribution: collinear features all "
            "correlate.</p>"
            + scroll("<table><tr><th class=l>feature</th><th class=l>kind</th><th>ρ</th>"
                     f"<th>{level} interval</th><th>tokens</th><th>instances</th>"
                     "<th>within-instance ρ: median [q25, q75] (instances)</th></tr>" + "".join(rows) + "</table>"))


class AlignmentSuite:
    """Spearman ρ of expected depth with each task feature, instance-bootstrap intervals (module doc)."""

    name = "alignment"
    description = ("paper's LANO alignment table: Spearman ρ of expected depth with each task feature, "
                   "bootstrap interval over instances")
    options = {
        "token_set": Option("auto", "which tokens: auto (the task's, as the verdict suites), answer, question, "
                            "answer|question, all", choices=TOKEN_SETS),
        "correct_only": Option(False, "solved instances only (default: every instance)"),
        "target": Option("expected_depth", "what is correlated", choices=("expected_depth", "exit_depth")),
        "features": Option(None, "restrict the features (comma list)", parse=name_list),
        "n_boot": Option(1000, "bootstrap replicates (by instance); 0: no interval", minimum=0),
        "level": Option(0.95, "interval level", minimum=0.5, maximum=0.999),
        "min_coverage": Option(0.5, "a feature defined on fewer analysed tokens than this share is undefined",
                               minimum=0.0, maximum=1.0),
    }

    def requires(self, context: SuiteContext) -> Requirements:
        return Requirements(min_instances=2)

    def run(self, table: TokenTable, context: SuiteContext) -> SuiteResult:
        opts = read_options(self.name, self.options, context.options)
        result, notes = align(table, token_set=opts["token_set"], correct_only=opts["correct_only"],
                              target=opts["target"], features=opts["features"], n_boot=opts["n_boot"],
                              level=opts["level"], min_coverage=opts["min_coverage"], seed=context.seed)
        headline: dict[str, Any] = {"tokens": f"{result['token_set']} ({result['n_tokens']})",
                                    "instances": result["n_instances"]}
        for f in result["features"]:
            headline[f"ρ {f['name']}"] = f["rho"]
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes, html=_html(result))
