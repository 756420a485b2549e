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

from typing import Any, Callable

import numpy as np
from scipy import stats

from anira.errors import AniraError
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


def null_passes(null: dict[str, Any], solved: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the solved-instance verdict survives the null control, and why (not).

    ``beyond`` is what the features add beyond the baseline, on solved instances
    (S) and on the null under the same filter (N: what the filter alone makes).
    The control passes when the solved instances show no feature signal at all
    (their verdict is ``none`` or ``baseline``: the filter made nothing visible),
    or when S exceeds N clearly — S − N above zero at the 95 % level (the two
    intervals' standard errors combined) and N at most half of S — so the
    filter cannot account for what the solved instances show. One permutation
    is one draw of what the filter makes; a single null that happens to read
    "none" does not vouch for the filter by itself.
    """
    solved_v = (solved or {}).get("verdict") or {}
    null_v = null.get("verdict") or {}
    if solved_v.get("label") in NULL_LABELS:
        return True, f"the solved instances read '{solved_v.get('label')}': the filter made no signal visible"
    s_b, n_b = solved_v.get("beyond") or {}, null_v.get("beyond") or {}
    values = [s_b.get("mean"), s_b.get("se"), n_b.get("mean"), n_b.get("se")]
    if any(v is None or not np.isfinite(v) for v in values):
        return False, (f"the solved instances read '{solved_v.get('label')}' and the null reads "
                       f"'{null_v.get('label')}', with nothing to compare them by")
    s_mean, s_se, n_mean, n_se = (float(v) for v in values)
    df = max(1, min(int(s_b.get("n_folds", 2)), int(n_b.get("n_folds", 2))) - 1)
    low = (s_mean - n_mean) - float(stats.t.ppf(0.975, df)) * float(np.hypot(s_se, n_se))
    metric = solved_v.get("metric", "")
    text = (f"the features add {s_mean:+.3f} {metric} beyond the baseline on solved instances and {n_mean:+.3f} "
            f"on the null under the same filter (difference ≥ {low:+.3f} at 95 %)")
    if low > 0 and n_mean <= 0.5 * s_mean:
        return True, text + ": more than the filter alone makes"
    return False, text + ": the filter alone could make it"


def with_selection_check(analyse: Analysis, table: TokenTable, correct_only: Any
                         ) -> tuple[dict[str, Any], list[str]]:
    """Run ``analyse`` under the solved filter and its checks (module docstring);
    returns the headline result, with ``selection`` and ``flags`` added."""
    if correct_only not in ("auto", True, False):
        raise AniraError(f"correct_only must be auto, true or false; got {correct_only!r}")
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
    null = table.null
    if null is not None:
        runs["null_solved"] = _attempt(analyse, null, True, True)
        runs["null_all"] = _attempt(analyse, null, False, True)
    label = {k: (r[0]["verdict"]["label"] if r[0] is not None else None) for k, r in runs.items()}
    passes: bool | None = None
    null_why = ""
    if "null_solved" in runs and runs["null_solved"][0] is not None:
        passes, null_why = null_passes(runs["null_solved"][0], runs["solved"][0])
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
    verdicts = {k: (_summary(r[0]) if r[0] is not None else {"label": None, "skipped": r[2]}) for k, r in runs.items()}
    result["selection"] = {"mode": str(correct_only).lower(), "headline": headline, "solved_share": share,
                           "null_passes": passes, "null_check": null_why, "verdicts": verdicts}
    result["flags"] = list(result.get("flags", [])) + flags
    notes = list(notes) + [f"selection: headline from {'solved' if headline == 'solved' else 'all'} instances "
                           f"({share:.1%} solved); " + ", ".join(f"{k} → {v['label']}" for k, v in verdicts.items())]
    return result, notes
