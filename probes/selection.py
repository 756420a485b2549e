"""The solved-instances filter, checked.

The paper analyses correctly solved instances only: its execution features
describe the reference algorithm, which is what a model that solves the
instance computes. But when correctness depends on depth (a shallow token
fails more often on a hard step), keeping solved instances links depth to the
features by selection alone: random depths can then read "mixed", "static"
or "execution".

So every verdict on solved instances is computed three more times:

* on **all** instances (no filter);
* on the **null control** (``table.null``, see
  :mod:`anira.probes.collect`): depths permuted within instance size, the
  model re-run with them, then the *same* filter. Within a size those depths
  depend on no feature, so any feature signal the null shows through the
  filter was made by the filter. The null is read with the size one-hot
  added to the baseline (its depths still follow size by construction).
  It **passes** when the solved instances show no feature signal, or clearly
  more than the null under the same filter (:func:`null_passes`) — a single
  null that reads "none" only for lack of power does not vouch for the filter;
* the null on all instances (a sanity check: it should read ``none`` too).

One permutation is one random draw of what the filter makes, so a check that
passes or fails only just can flip with the permutation's seed. Option
``null_permutations`` = K (default 3) draws K independent permutations
(``table.nulls``); each is read through the solved filter and the check
compares the solved instances with the null *pooled* over the draws, whose
standard error includes the spread between them (:func:`pool_null`). The
sanity check on all instances reads the first draw only. When the solved
instances read ``none`` or ``baseline`` the check passes whatever the null
says, so the extra draws are not analysed. A stored table collected with
fewer draws is pooled over those it holds (a note says so); K = 1 is the
single-draw check of earlier versions, exactly.

Option ``correct_only``:

* ``auto`` (default): the headline is the solved-only verdict (the paper's
  protocol) when the null control passes, else the all-instance verdict;
  without a null control (a stored table collected without one) the
  headline is the all-instance verdict. With no solved instance to analyse
  the suite is skipped, as the paper's protocol would be (a model that
  solves nothing does not run the algorithm the execution features
  describe);
* ``true``: the solved-only verdict, whatever the null says (flagged when it
  fails);
* ``false``: every instance; no filter, nothing to check.

Disagreements are flagged (``flags`` in the suite's data, the CLI summary and
the report): the null failing, and solved-only and all-instance verdicts
differing. When every instance is solved the filter selects nothing and one
analysis serves both.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from anira.errors import AniraError
from anira.probes.collect import check_null_permutations
from anira.probes.table import TokenTable
from anira.probes.verdict import NULL_LABELS

#: analyse(table, correct_only, size_in_baseline, full) -> (JSON-able result with "verdict", notes);
#: ``full=False`` may skip what the verdict does not need (e.g. the paper protocol's bootstrap):
#: only the headline run is shown in full
Analysis = Callable[[TokenTable, bool, bool, bool], tuple[dict[str, Any], list[str]]]


def solved_share(table: TokenTable) -> float:
    if table.n_rows == 0:
        return float("nan")
    _, first = np.unique(table["instance"], return_index=True)
    return float(np.mean(table["correct"][first]))


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    verdict = result.get("verdict") or {}
    return {"label": verdict.get("label"), "reason": verdict.get("reason"), "n_tokens": result.get("n_tokens"),
            "n_instances": result.get("n_instances")}


def _attempt(analyse: Analysis, table: TokenTable, correct_only: bool, size: bool, full: bool = False
             ) -> tuple[dict[str, Any] | None, list[str], str | None]:
    try:
        result, notes = analyse(table, correct_only, size, full)
        return result, notes, None
    except AniraError as exc:
        return None, [], str(exc)


def _beyond(result: dict[str, Any] | None) -> tuple[float, float, int] | None:
    """(mean, se, n_folds) of a result's ``beyond`` (what the features add beyond the
    baseline), or None where it is missing or not finite."""
    b = ((result or {}).get("verdict") or {}).get("beyond") or {}
    mean, se = b.get("mean"), b.get("se")
    if any(v is None or not np.isfinite(v) for v in (mean, se)):
        return None
    return float(mean), float(se), int(b.get("n_folds", 2))


def pool_null(draws: Sequence[tuple[float, float, int]]) -> dict[str, Any]:
    """The null's ``beyond`` pooled over K independent permutations.

    Draw j gives ``(m_j, s_j, n_j)``: its mean, fold standard error and folds.

    * mean ``N = (1/K) Σ m_j``;
    * within ``W = (1/K) Σ s_j²``, between ``B = Σ (m_j − N)² / (K − 1)`` (0 when K = 1);
    * ``se(N)² = W + B / K``.

    ``W`` is not divided by K: every draw reads the same instances with the same
    folds, so their fold errors are largely shared and do not average out; only the
    permutation's own spread does (K independent draws: ``B / K``). ``B`` also holds
    the part of the fold noise that does differ between draws, so the standard error
    errs wide, never narrow. With K = 1 it is the single draw's ``m_1`` and ``s_1``.

    ``n_folds`` (the fewest folds of a draw) and ``df_between`` (K − 1) are what
    :func:`null_passes` turns into its t bound's degrees of freedom.
    """
    if not draws:
        raise AniraError("no null draw to pool")
    means = np.array([d[0] for d in draws], dtype=np.float64)
    ses = np.array([d[1] for d in draws], dtype=np.float64)
    k = means.size
    within = float(np.mean(ses ** 2))
    between = float(np.var(means, ddof=1)) if k > 1 else 0.0
    return {"mean": float(means.mean()) if k > 1 else float(means[0]),
            "se": float(np.sqrt(within + between / k)) if k > 1 else float(ses[0]),
            "within_se": float(np.sqrt(within)), "between_sd": float(np.sqrt(between)), "n_draws": k,
            "n_folds": min(d[2] for d in draws), "df_between": k - 1,
            "means": [float(m) for m in means]}


def null_bound(solved: tuple[float, float, int], pooled: dict[str, Any], level: float = 0.95) -> dict[str, float]:
    """The lower bound of S − N at ``level`` (:func:`null_passes`): ``solved`` is the
    solved instances' ``(S, s_S, n_S)``, ``pooled`` what :func:`pool_null` gives.

    ``low = (S − N) − t · sqrt(s_S² + se(N)²)``. t's degrees of freedom: with one draw
    the folds' ``min(n_S, n_N) − 1``; with K draws the Welch–Satterthwaite combination
    of the fold part ``s_S² + W`` (those degrees of freedom) and the between-draw part
    ``B / K`` (K − 1 of them)."""
    s_mean, s_se, s_folds = solved
    n_mean, n_se = pooled["mean"], pooled["se"]
    df_fold = max(1, min(s_folds, pooled["n_folds"]) - 1)
    fold_var = s_se ** 2 + (n_se ** 2 if pooled["n_draws"] == 1 else pooled["within_se"] ** 2)
    between_var = pooled["between_sd"] ** 2 / pooled["n_draws"]
    df = (df_fold if between_var == 0.0 else
          (fold_var + between_var) ** 2 / (fold_var ** 2 / df_fold + between_var ** 2 / pooled["df_between"]))
    t = float(stats.t.ppf(0.5 + level / 2, df))
    se = float(np.hypot(s_se, n_se))
    return {"difference": s_mean - n_mean, "se": se, "df": float(df), "t": t, "low": (s_mean - n_mean) - t * se}


def null_passes(null: dict[str, Any] | Sequence[dict[str, Any]], solved: dict[str, Any] | None
                ) -> tuple[bool, str]:
    """Whether the solved-instance verdict survives the null control, and why (not).

    ``null``: the null control's result under the solved filter, or a list of them
    (one per independent permutation, ``null_permutations``). ``beyond`` is what the
    features add beyond the baseline, on solved instances (S ± s_S) and on the null
    under the same filter (N ± s_N: what the filter alone makes; with several draws
    the pooled mean and standard error of :func:`pool_null`). The control passes when
    the solved instances show no feature signal at all (their verdict is ``none`` or
    ``baseline``: the filter made nothing visible), or when S exceeds N clearly — the
    95 % lower bound of S − N, ``(S − N) − t · sqrt(s_S² + s_N²)``, above zero and N at
    most half of S — so the filter cannot account for what the solved instances show
    (t's degrees of freedom: :func:`null_bound`). A single null that happens to read
    "none" does not vouch for the filter by itself.
    """
    nulls = [null] if isinstance(null, dict) else list(null)
    if not nulls:
        raise AniraError("null_passes needs at least one null result")
    solved_v = (solved or {}).get("verdict") or {}
    if solved_v.get("label") in NULL_LABELS:
        return True, f"the solved instances read '{solved_v.get('label')}': the filter made no signal visible"
    s_b = _beyond(solved)
    n_bs = [_beyond(n) for n in nulls]
    if s_b is None or any(b is None for b in n_bs):
        labels = "', '".join(str((n.get("verdict") or {}).get("label")) for n in nulls)
        return False, (f"the solved instances read '{solved_v.get('label')}' and the null reads "
                       f"'{labels}', with nothing to compare them by")
    s_mean = s_b[0]
    pooled = pool_null([b for b in n_bs if b is not None])
    n_mean, n_se = pooled["mean"], pooled["se"]
    low = null_bound(s_b, pooled)["low"]
    metric = solved_v.get("metric", "")
    if pooled["n_draws"] == 1:
        on_null = f"{n_mean:+.3f} on the null under the same filter"
    else:
        on_null = (f"{n_mean:+.3f} ± {n_se:.3f} on the null under the same filter (mean of "
                   f"{pooled['n_draws']} permutations: {', '.join(f'{m:+.3f}' for m in pooled['means'])})")
    text = (f"the features add {s_mean:+.3f} {metric} beyond the baseline on solved instances and {on_null} "
            f"(difference ≥ {low:+.3f} at 95 %)")
    if low > 0 and n_mean <= 0.5 * s_mean:
        return True, text + ": more than the filter alone makes"
    return False, text + ": the filter alone could make it"


def with_selection_check(analyse: Analysis, table: TokenTable, correct_only: Any, null_permutations: int = 1
                         ) -> tuple[dict[str, Any], list[str]]:
    """Run ``analyse`` under the solved filter and its checks (module docstring);
    returns the headline result, with ``selection`` and ``flags`` added.
    ``null_permutations``: how many of the table's null draws the check pools."""
    if correct_only not in ("auto", True, False):
        raise AniraError(f"correct_only must be auto, true or false; got {correct_only!r}")
    k = check_null_permutations(null_permutations)
    if correct_only is False:
        result, notes = analyse(table, False, False, True)
        result["selection"] = {"mode": "false", "headline": "all", "solved_share": solved_share(table)}
        result.setdefault("flags", [])
        return result, notes
    share = solved_share(table)
    if share == 1.0:
        result, notes = analyse(table, True, False, True)
        result["selection"] = {"mode": str(correct_only).lower(), "headline": "solved", "solved_share": 1.0,
                               "note": "every instance is solved: the filter selects nothing"}
        result.setdefault("flags", [])
        return result, notes

    runs: dict[str, tuple[dict[str, Any] | None, list[str], str | None]] = {
        "solved": _attempt(analyse, table, True, False, full=True),
        "all": _attempt(analyse, table, False, False),
    }
    nulls = table.nulls[:k]
    null = nulls[0] if nulls else None
    if null is not None:
        runs["null_solved"] = _attempt(analyse, null, True, True)
        runs["null_all"] = _attempt(analyse, null, False, True)
    label = {name: (r[0]["verdict"]["label"] if r[0] is not None else None) for name, r in runs.items()}
    # the further draws, through the solved filter: only where the check reads them
    draws = [runs["null_solved"]] if null is not None else []
    more = len(nulls) > 1 and runs["solved"][0] is not None and label["solved"] not in NULL_LABELS
    draws += [_attempt(analyse, n, True, True) for n in nulls[1:]] if more else []
    passes: bool | None = None
    null_why = ""
    ran = [d[0] for d in draws if d[0] is not None]
    if ran:
        passes, null_why = null_passes(ran, runs["solved"][0])  # one draw: the single-draw check
    if correct_only is True or passes is True:
        headline = "solved"
    else:
        headline = "all"
    if runs["solved"][0] is None:
        # no (usable) solved instance: the model does not run the algorithm whose state the
        # execution features describe, so there is no default verdict (correct_only=false reads
        # every instance anyway)
        raise AniraError(runs["solved"][2] or "no solved instance to analyse")
    if runs[headline][0] is None:
        raise AniraError(runs[headline][2] or "nothing to analyse")
    if headline == "all":  # the headline is shown in full (the same verdict: its scores do not change)
        runs["all"] = _attempt(analyse, table, False, False, full=True)
    result, notes, _ = runs[headline]
    assert result is not None

    flags: list[str] = []
    if passes is False:
        flags.append(f"selection: the null control (depths permuted within size, model re-run) fails on solved "
                     f"instances — {null_why}" + ("; the headline uses every instance" if headline == "all" else
                                                 "; the headline still uses solved instances (correct_only=true)"))
    if label.get("solved") and label.get("all") and label["solved"] != label["all"]:
        flags.append(f"selection: solved instances read '{label['solved']}', all instances read "
                     f"'{label['all']}' (headline: {headline})")
    if null is None and correct_only == "auto":
        flags.append("selection: no null control in this table (collected without one): the headline uses every "
                     "instance")
    if label.get("null_all") not in (None, *NULL_LABELS):
        flags.append(f"selection: the null control reads '{label['null_all']}' even on all instances: chance, or "
                     "depths that follow something the permutation kept (role, size)")
    verdicts = {name: (_summary(r[0]) if r[0] is not None else {"label": None, "skipped": r[2]})
                for name, r in runs.items()}
    result["selection"] = {"mode": str(correct_only).lower(), "headline": headline, "solved_share": share,
                           "null_passes": passes, "null_check": null_why, "verdicts": verdicts}
    if null is not None:
        result["selection"].update(_draw_report(draws, len(nulls), runs["solved"][0]))
    result["flags"] = list(result.get("flags", [])) + flags
    notes = list(notes) + [f"selection: headline from {'solved' if headline == 'solved' else 'all'} instances "
                           f"({share:.1%} solved); " + ", ".join(f"{k} → {v['label']}" for k, v in verdicts.items())]
    if null is not None and len(nulls) < k:
        notes.append(f"selection: {k} null permutations asked for, the table holds {len(nulls)} (collected with "
                     f"fewer): the check pools {len(nulls)}")
    if len(draws) > 1:
        notes.append("selection: the null's permutations under the solved filter read "
                     + ", ".join(str(d["label"]) for d in result["selection"]["null_draws"]))
    return result, notes


def _draw_report(draws: list[tuple[dict[str, Any] | None, list[str], str | None]], n_nulls: int,
                 solved: dict[str, Any] | None) -> dict[str, Any]:
    """``null_permutations`` (the draws used), ``null_draws`` (each draw's label and
    ``beyond`` under the solved filter), ``null_pooled`` (:func:`pool_null`) and
    ``null_bound`` (:func:`null_bound`, where the solved instances have a ``beyond``)."""
    solved_label = ((solved or {}).get("verdict") or {}).get("label")
    rows: list[dict[str, Any]] = []
    for j, (res, _, why) in enumerate(draws):
        if res is None:
            rows.append({"draw": j, "label": None, "skipped": why})
            continue
        beyond = (res.get("verdict") or {}).get("beyond") or {}
        rows.append({"draw": j, "label": res["verdict"]["label"], "n_instances": res.get("n_instances"),
                     "beyond": {key: beyond.get(key) for key in ("mean", "se", "n_folds")}})
    for j in range(len(draws), n_nulls):
        rows.append({"draw": j, "label": None,
                     "skipped": f"not analysed: the solved instances read '{solved_label}', which passes whatever "
                                "the null reads"})
    finite = [b for b in (_beyond(d[0]) for d in draws) if b is not None]
    pooled = pool_null(finite) if finite else None
    s_b = _beyond(solved)
    return {"null_permutations": n_nulls, "null_draws": rows, "null_pooled": pooled,
            "null_bound": null_bound(s_b, pooled) if pooled is not None and s_b is not None else None}
