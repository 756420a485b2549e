"""The per-checkpoint verdict: does halting read static cues or execution state?

Input: per-fold scores (AUROC by default) of the decision probes trained on
static features only, on execution features only, on both, and of a
reference that uses neither (0.5 for the early probe; the iteration-only
probe for the online one). All sets are scored on the same GroupKFold
folds, so the per-fold differences are paired.

Uncertainty: the fold differences are not independent (their training sets
overlap), so the naive t interval is too narrow. We use the Nadeau–Bengio
corrected resampled t interval: variance factor (1/k + n_test/n_train)
instead of 1/k, with k − 1 degrees of freedom.

Rule (``min_effect`` = 0.02 AUROC by default):

* **none** — the both-features probe does not beat the reference: the lower
  end of the interval of (both − reference) is ≤ 0, or its mean < min_effect;
* **execution** — margin = execution − static has an interval above 0 and a
  mean ≥ min_effect;
* **static** — the margin's interval is below 0 and its mean ≤ −min_effect;
* **mixed** — there is signal, but the margin is not decisively on one side.

**undetermined** when the task offers no feature of one kind on the analysed
tokens (the margin cannot be formed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

LABELS = ("static", "execution", "mixed", "none", "undetermined")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    se: float
    n_folds: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def corrected_interval(diffs: Sequence[float], test_fraction: float, level: float = 0.95) -> Interval:
    """Nadeau–Bengio corrected resampled t interval of the mean fold difference.

    ``test_fraction`` = n_test / (n_test + n_train) of one fold (1/k for k-fold).
    """
    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=np.float64)
    k = d.size
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if k < 2:
        return Interval(mean, math.nan, math.nan, math.nan, k)
    ratio = test_fraction / max(1.0 - test_fraction, 1e-12)
    se = math.sqrt((1.0 / k + ratio) * float(d.var(ddof=1)))
    half = float(stats.t.ppf(0.5 + level / 2, df=k - 1)) * se
    return Interval(mean, mean - half, mean + half, se, k)


@dataclass
class Verdict:
    label: str
    reason: str
    metric: str
    margin: Interval | None = None  # execution − static
    lift: Interval | None = None  # both − reference
    execution_adds: Interval | None = None  # both − static
    static_adds: Interval | None = None  # both − execution
    min_effect: float = 0.02
    level: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "reason": self.reason, "metric": self.metric,
               "min_effect": self.min_effect, "level": self.level, **self.extra}
        for name in ("margin", "lift", "execution_adds", "static_adds"):
            value = getattr(self, name)
            out[name] = None if value is None else value.to_dict()
        return out


def _paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def decide(
    scores: dict[str, Sequence[float]],
    reference: Sequence[float],
    *,
    test_fraction: float,
    metric: str = "auroc",
    min_effect: float = 0.02,
    level: float = 0.95,
) -> Verdict:
    """The verdict from per-fold ``scores`` of the sets "static", "execution",
    "both" (any may be missing) and the ``reference`` per-fold scores."""
    best = scores.get("both") or scores.get("execution") or scores.get("static")
    if best is None:
        return Verdict("undetermined", "no feature set could be scored", metric, min_effect=min_effect, level=level)
    lift = corrected_interval(_paired(best, reference), test_fraction, level)
    common = dict(metric=metric, lift=lift, min_effect=min_effect, level=level)
    if not (np.isfinite(lift.low) and lift.low > 0 and lift.mean >= min_effect):
        return Verdict("none", f"features do not beat the reference ({metric} lift {lift.mean:+.3f}, "
                       f"{level:.0%} CI [{lift.low:+.3f}, {lift.high:+.3f}])", **common)
    missing = [k for k in ("static", "execution") if k not in scores]
    if missing:
        return Verdict("undetermined", f"no {missing[0]} features on the analysed tokens: the margin cannot be formed",
                       **common)
    margin = corrected_interval(_paired(scores["execution"], scores["static"]), test_fraction, level)
    adds = {}
    if "both" in scores:
        adds = {"execution_adds": corrected_interval(_paired(scores["both"], scores["static"]), test_fraction, level),
                "static_adds": corrected_interval(_paired(scores["both"], scores["execution"]), test_fraction, level)}
    text = f"execution − static {metric} = {margin.mean:+.3f}, {level:.0%} CI [{margin.low:+.3f}, {margin.high:+.3f}]"
    if margin.low > 0 and margin.mean >= min_effect:
        label = "execution"
    elif margin.high < 0 and margin.mean <= -min_effect:
        label = "static"
    else:
        label = "mixed"
        text += " (not decisively on one side)"
    return Verdict(label, text, margin=margin, **common, **adds)
