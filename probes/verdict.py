"""The verdict: does halting read static cues, execution state, both, or neither?

Both built-in suites score four nested feature sets on the same resamples —
the **baseline** B (token identity and position indicators, see
:func:`anira.probes.featureset.baseline_design`), B + static, B + execution
and B + both — next to a **reference** that knows nothing (R² 0 for the
attribution regression; AUROC 0.5 for the early decision probe; the
iteration-only probe for the online one). From these scores the verdict is a
*commonality analysis* of what the features add beyond the baseline:

* ``beyond``  = score(B+both) − score(B): what the task features add at all;
* ``static_total`` = score(B+static) − score(B), ``execution_total`` likewise;
* ``static_unique`` = score(B+both) − score(B+execution): what only static
  features carry; ``execution_unique`` likewise;
* ``shared`` = static_total + execution_total − beyond: what either kind
  carries on its own but the other could carry too. Nothing in the data says
  which kind the shared part belongs to.

Rules, in order (``min_effect``: 0.01 R², 0.02 AUROC):

1. **none** — score(B+both) does not beat the reference (interval reaching 0,
   or a mean below ``min_effect``);
2. **baseline** — the features add nothing beyond token identity and position
   (``beyond`` not clearly positive, and the upper end of its interval at most
   ``max(min_effect, max_negligible_share · lift)``) while the baseline itself
   beats the reference: a rule on token identity or position, not on task
   structure. When ``beyond`` is not clearly positive but not bounded either,
   the label is **undetermined**;
3. **static** when static *suffices*, judged each set given the other:
   static's unique part is clearly positive and at least
   ``min_sufficient_share`` (20 %) of ``beyond``, while execution's unique part
   is bounded near zero (the upper end of its interval at most
   ``max_negligible_share``, 10 %, of ``beyond``) — execution features add
   nothing once static ones are known, static ones add a clear part once
   execution ones are known — and execution features *on their own* (the
   baseline not credited) explain at most ``max_claim_share`` (half) of the
   signal, so that they are absent rather than redundant (a feature the
   static features and the baseline predict almost fully adds nothing given
   them, whether or not halting reads it). **execution** symmetrically. This reads a rule on
   one kind correctly even when the other kind shares much of its variance,
   and it compares parts that are unique *given the baseline too*, so a kind
   whose variance token identity or position partly predict is not thereby
   made to look smaller than it is (a comparison of each kind's total beyond
   the baseline is fooled by exactly that, and reads a balanced mixture as
   one kind);
4. **mixed** — both unique parts are clearly positive (intervals above 0) and
   each is at least ``min_unique_share`` (10 %) of ``beyond``;
5. **undetermined** — otherwise: the shared part is too large to tell the
   kinds apart (a rule whose feature the other kind predicts almost fully), or
   the evidence is too thin. The reason says which.

Each kind's set enters through an additive basis of its features
(:func:`anira.probes.featureset.feature_basis`: indicators of each value of a
few-valued feature, z and z² otherwise), so a non-linear rule on one feature
is fitted by its own kind and its residual cannot pass for the other kind.

**undetermined** is also the label when the task has no feature of one kind on
the analysed tokens. Every label is stated with the intervals it rests on.

Intervals: both suites score the sets on held-out instances (the attribution
suite: R² over 4 × 5-fold splits; the decision suite: AUROC over 5 folds) and
pass per-split scores, for which the Nadeau–Bengio corrected resampled t
interval is used (variance factor 1/k + n_test/n_train instead of 1/k, k − 1
degrees of freedom, k the number of splits): split differences share training
data, so the naive t interval is too narrow. (In-sample scores, or their
bootstrap, are not used: with many indicator columns their optimism is enough
to read random depths as signal.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

LABELS = ("static", "execution", "mixed", "baseline", "none", "undetermined")
#: labels that claim no feature signal (what a null control must read)
NULL_LABELS = ("none", "baseline")
SETS = ("reference", "static", "execution", "baseline", "baseline+static", "baseline+execution", "baseline+both")

#: one line per label: what it means (the report and the CLI show it next to the label)
MEANINGS = {
    "static": "halting follows static input structure, beyond token identity and position",
    "execution": "halting follows the solver's execution state, beyond token identity and position",
    "mixed": "both kinds carry information of their own about halting",
    "baseline": "token identity and position explain halting as well as every task feature",
    "none": "no feature (nor the baseline) predicts halting better than chance",
    "undetermined": "there is signal, but the data cannot say which kind carries it",
}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    se: float
    n_folds: int  # the splits behind the interval

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def positive(self) -> bool:
        return bool(np.isfinite(self.low) and self.low > 0)


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
class SetScores:
    """Held-out scores of the nested feature sets (:data:`SETS`): ``draws[name]``
    holds one value per split (fold, or fold of a repeat), the same splits for
    every set, so differences are paired."""

    draws: dict[str, np.ndarray]
    test_fraction: float = 0.2
    level: float = 0.95

    def interval(self, coefs: dict[str, float]) -> Interval:
        """Interval of the linear combination Σ coef·score(set), paired by split."""
        combo = sum(c * np.asarray(self.draws[s], dtype=np.float64) for s, c in coefs.items())
        return corrected_interval(np.atleast_1d(combo), self.test_fraction, self.level)


#: the quantities of the partition as combinations of set scores
QUANTITIES: dict[str, dict[str, float]] = {
    "lift": {"baseline+both": 1, "reference": -1},
    "baseline_lift": {"baseline": 1, "reference": -1},
    "beyond": {"baseline+both": 1, "baseline": -1},
    "static_total": {"baseline+static": 1, "baseline": -1},
    "execution_total": {"baseline+execution": 1, "baseline": -1},
    "static_unique": {"baseline+both": 1, "baseline+execution": -1},
    "execution_unique": {"baseline+both": 1, "baseline+static": -1},
    "shared": {"baseline+static": 1, "baseline+execution": 1, "baseline+both": -1, "baseline": -1},
    # each kind on its own, the baseline not credited: everything it could claim
    "static_alone": {"static": 1, "reference": -1},
    "execution_alone": {"execution": 1, "reference": -1},
}


@dataclass
class Verdict:
    label: str
    reason: str
    metric: str
    quantities: dict[str, Interval] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)  # unique/shared parts as shares of `beyond`
    min_effect: float = 0.02
    level: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "meaning": MEANINGS.get(self.label, ""), "reason": self.reason,
               "metric": self.metric, "min_effect": self.min_effect, "level": self.level, **self.extra}
        out.update({name: iv.to_dict() for name, iv in self.quantities.items()})
        out["shares"] = dict(self.shares)
        return out


def _fmt(iv: Interval) -> str:
    return f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def decide(
    scores: SetScores,
    *,
    metric: str,
    kinds_present: Sequence[str] = ("static", "execution"),
    min_effect: float = 0.02,
    min_unique_share: float = 0.1,
    min_sufficient_share: float = 0.2,
    max_negligible_share: float = 0.1,
    max_claim_share: float = 0.5,
) -> Verdict:
    """The verdict from the nested sets' scores (module docstring)."""
    level = scores.level
    q = {name: scores.interval(coefs) for name, coefs in QUANTITIES.items() if all(s in scores.draws for s in coefs)}
    common: dict[str, Any] = dict(metric=metric, quantities=q, min_effect=min_effect, level=level)
    lift = q["lift"]
    if not (lift.positive and lift.mean >= min_effect):
        return Verdict("none", f"baseline and features together do not beat the reference ({metric} gain "
                       f"{_fmt(lift)}, {level:.0%} CI)", **common)
    missing = [k for k in ("static", "execution") if k not in kinds_present]
    if missing:
        return Verdict("undetermined", f"no {missing[0]} features on the analysed tokens: the kinds cannot be "
                       "compared", **common)
    beyond, base = q["beyond"], q["baseline_lift"]
    if not (beyond.positive and beyond.mean >= min_effect):
        bound = max(min_effect, max_negligible_share * lift.mean)
        if base.positive and beyond.high <= bound:
            return Verdict("baseline", f"the features add {_fmt(beyond)} {metric} beyond token identity and "
                           f"position (at most {bound:.3f}), which alone gain {_fmt(base)} over the reference",
                           **common)
        if base.positive:
            return Verdict("undetermined", f"token identity and position carry the signal ({_fmt(base)} over the "
                           f"reference); whether the features add to it is unclear ({_fmt(beyond)} beyond them, "
                           f"not bounded below {bound:.3f})", **common)
        return Verdict("undetermined", f"signal ({metric} gain {_fmt(lift)}) that neither the features "
                       f"({_fmt(beyond)} beyond the baseline) nor the baseline ({_fmt(base)}) clearly carry",
                       **common)
    total = beyond.mean
    st, et = q["static_total"], q["execution_total"]
    su, eu, sh = q["static_unique"], q["execution_unique"], q["shared"]
    shares = {"static_unique": su.mean / total, "execution_unique": eu.mean / total, "shared": sh.mean / total}
    common["shares"] = shares
    parts = (f"beyond the baseline, both kinds add {_fmt(beyond)}, static features {_fmt(st)}, execution "
             f"features {_fmt(et)}; unique static {_fmt(su)}, unique execution {_fmt(eu)}, shared {sh.mean:+.3f}")
    # each set given the other: one kind adds a clear share of its own, the other (bounded) almost
    # nothing -- and could not claim much on its own either (else it is redundant, not absent)
    redundant = []
    for kind, other in (("static", "execution"), ("execution", "static")):
        mine, theirs = q[f"{kind}_unique"], q[f"{other}_unique"]
        if not (mine.positive and mine.mean >= min_sufficient_share * total
                and theirs.high <= max_negligible_share * total):
            continue
        alone = q.get(f"{other}_alone")
        if alone is not None and np.isfinite(alone.mean) and alone.mean > max_claim_share * lift.mean:
            redundant.append(f"{other} features add nothing given {kind} ones and the baseline, yet on their own "
                             f"they explain {alone.mean / lift.mean:.0%} of the signal: redundant, not absent")
            continue
        return Verdict(kind, f"{kind} features suffice: given them, {other} features add at most "
                       f"{theirs.high:+.3f} ({max_negligible_share:.0%} of what the features add is the bound) and "
                       f"on their own explain {0 if alone is None else alone.mean / lift.mean:.0%} of the signal, "
                       f"while {kind} adds {_fmt(mine)} given {other} ({parts})", **common)
    if su.positive and eu.positive and min(su.mean, eu.mean) >= min_unique_share * total:
        return Verdict("mixed", f"both kinds carry information the other lacks ({parts})", **common)
    if redundant:
        why = redundant[0]
    elif sh.mean >= 0.5 * total:
        why = f"shared information dominates ({shares['shared']:.0%} of what the features add)"
    else:
        why = "neither kind suffices and their unique parts are not both clearly positive"
    return Verdict("undetermined", f"{why}: the kinds cannot be told apart ({parts})", **common)
