"""Representation probes: what the hidden state at each iteration linearly encodes.

For every iteration ``t`` (``-1`` is the Prelude output h0; ``t >= 0`` is the
state after ``loop.{t}.hook_resid_post``) and every task feature, a linear
probe maps the hidden states of the tokens *still running at t* to the
feature: standardised logistic regression for discrete features, standardised
ridge (RidgeCV) for continuous ones. Folds split by instance (GroupKFold),
never by token, so a probe cannot memorise an instance it is scored on.

A probe that reads a feature may only be reading token identity. Hewitt &
Liang's control task gives each *token type* (input token id) a random label
drawn from the feature's own distribution; the same probe family learns it as
well as it can memorise types. Selectivity = score(feature) - score(control),
paired by fold, is what the state encodes beyond the identity of the token.

Everything here is a pure function over numpy arrays; the suite object in
:mod:`anira.probes.representation_suite` feeds it from the per-token table.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

H0 = -1  # the iteration index of the Prelude output


@dataclass(frozen=True)
class ProbeTarget:
    """One feature to probe for, one value per token (NaN where undefined)."""

    name: str
    kind: str  # "static" or "execution"
    discrete: bool
    values: np.ndarray  # (n,) float


@dataclass(frozen=True)
class RepresentationConfig:
    """Knobs of the representation probes."""

    n_splits: int = 5  # GroupKFold folds (fewer when there are fewer instances)
    max_tokens: int = 20_000  # tokens per probe; more are subsampled (seeded) for speed
    min_tokens: int = 20  # fewer running, labelled tokens: the iteration is skipped
    max_classes: int = 32  # discrete features with more values are probed as ordinal (ridge)
    C: float = 1.0  # inverse L2 strength of the logistic probe
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 3, 13))  # RidgeCV grid
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be >= 2, got {self.n_splits}")
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")


def iteration_label(t: int) -> str:
    return "h0" if t == H0 else f"t{t}"


# ---------------------------------------------------------------------------------------
# Control task
# ---------------------------------------------------------------------------------------


def control_labels(token_type: np.ndarray, values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt–Liang control labels: one random label per token type.

    Each type tau gets u(tau) ~ U(0, 1) from a generator keyed by (seed, tau), and
    the label at the inverse empirical CDF of ``values`` at u(tau): a draw from
    the feature's own marginal (discrete: its label distribution). Keying by
    type, not by position in an array, keeps one type's label the same across
    iterations and token subsets, so the control is a fixed function of identity.
    """
    token_type = np.asarray(token_type)
    values = np.asarray(values, dtype=float)
    if token_type.shape != values.shape:
        raise ValueError(f"token_type {token_type.shape} and values {values.shape} differ in shape")
    if values.size == 0:
        return values.copy()
    types, inverse = np.unique(token_type, return_inverse=True)
    u = np.array([np.random.default_rng([int(seed), int(tau)]).random() for tau in types])
    per_type = np.quantile(values, u, method="inverted_cdf")
    return per_type[inverse]


# ---------------------------------------------------------------------------------------
# One probe, one iteration
# ---------------------------------------------------------------------------------------


def make_probe(classify: bool, config: RepresentationConfig) -> Pipeline:
    """The stock probe family: standardise, then a linear classifier or regressor."""
    if classify:
        return make_pipeline(StandardScaler(), LogisticRegression(C=config.C, max_iter=1000))
    return make_pipeline(StandardScaler(), RidgeCV(alphas=config.alphas))


@dataclass
class FoldScores:
    """Out-of-fold scores of one probe and its control on the same folds."""

    score: list[float] = field(default_factory=list)
    control: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # majority class (accuracy) or 0 (R²)
    convergence_warnings: int = 0


def _score(classify: bool, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if classify:
        return float(accuracy_score(y_true, y_pred))
    if np.ptp(y_true) == 0:  # R² is undefined on a constant test fold
        return float("nan")
    return float(r2_score(y_true, y_pred))


def _fit_predict(probe: Pipeline, X_tr, y_tr, X_te, classify: bool) -> tuple[np.ndarray, int]:
    if classify and np.unique(y_tr).size < 2:  # one class in this training fold: predict it
        return np.full(X_te.shape[0], y_tr[0]), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(X_tr, y_tr)
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return probe.predict(X_te), n_warn


def cross_validated_scores(
    X: np.ndarray,
    y: np.ndarray,
    y_control: np.ndarray,
    groups: np.ndarray,
    classify: bool,
    config: RepresentationConfig,
) -> FoldScores:
    """Score the probe on ``y`` and on ``y_control`` over the same GroupKFold folds."""
    n_splits = min(config.n_splits, np.unique(groups).size)
    folds = FoldScores()
    template = make_probe(classify, config)
    for train, test in GroupKFold(n_splits=n_splits).split(X, y, groups):
        for target, out in ((y, folds.score), (y_control, folds.control)):
            pred, n_warn = _fit_predict(clone(template), X[train], target[train], X[test], classify)
            folds.convergence_warnings += n_warn
            out.append(_score(classify, target[test], pred))
        if classify:
            labels, counts = np.unique(y[train], return_counts=True)
            folds.baseline.append(float(np.mean(y[test] == labels[np.argmax(counts)])))
        else:
            folds.baseline.append(0.0)
    return folds


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    arr = np.asarray([x for x in xs if not math.isnan(x)], dtype=float)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _subsample(idx: np.ndarray, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    if idx.size <= max_tokens:
        return idx
    return np.sort(rng.choice(idx, size=max_tokens, replace=False))


def probe_at_iteration(
    X: np.ndarray,
    target: ProbeTarget,
    running: np.ndarray,
    token_type: np.ndarray,
    groups: np.ndarray,
    config: RepresentationConfig,
    t: int,
) -> dict[str, Any]:
    """One point of a probe curve: the feature vs its control at iteration ``t``.

    Returns a JSON-able dict; when the point cannot be estimated it holds
    ``skipped`` with the reason instead of scores.
    """
    point: dict[str, Any] = {"t": t, "label": iteration_label(t)}
    mask = np.asarray(running, dtype=bool) & np.isfinite(target.values)
    idx = np.flatnonzero(mask)
    rng = np.random.default_rng([config.seed, t + 1, zlib.crc32(target.name.encode())])
    idx = _subsample(idx, config.max_tokens, rng)
    point["n_tokens"] = int(idx.size)
    point["n_instances"] = int(np.unique(groups[idx]).size) if idx.size else 0
    if idx.size < config.min_tokens:
        point["skipped"] = f"only {idx.size} running tokens with the feature defined (< {config.min_tokens})"
        return point
    if point["n_instances"] < 2:
        point["skipped"] = "fewer than 2 instances: no instance-level split possible"
        return point
    y = target.values[idx]
    if np.ptp(y) == 0:
        point["skipped"] = f"feature is constant ({y[0]:g}) on the running tokens"
        return point
    classify = probe_family(target, y, config) == "logistic"
    # the control is drawn from this iteration's marginal, keyed by type (see control_labels)
    y_control = control_labels(token_type[idx], y, seed=config.seed)
    folds = cross_validated_scores(X[idx], y, y_control, groups[idx], classify, config)
    score_mean, score_std = _mean_std(folds.score)
    control_mean, control_std = _mean_std(folds.control)
    sel_mean, sel_std = _mean_std([s - c for s, c in zip(folds.score, folds.control)])
    base_mean, _ = _mean_std(folds.baseline)
    point.update(
        n_folds=len(folds.score),
        score=score_mean,
        score_std=score_std,
        control=control_mean,
        control_std=control_std,
        selectivity=sel_mean,
        selectivity_std=sel_std,
        baseline=base_mean,
        convergence_warnings=folds.convergence_warnings,
    )
    return point


def probe_family(target: ProbeTarget, y: np.ndarray, config: RepresentationConfig) -> str:
    """"logistic" for discrete features with few values, else "ridge" (ordinal or continuous)."""
    if target.discrete and np.unique(y).size <= config.max_classes:
        return "logistic"
    return "ridge"


# ---------------------------------------------------------------------------------------
# Curves over iterations
# ---------------------------------------------------------------------------------------


def representation_curves(
    states: Mapping[int, np.ndarray],
    running: Mapping[int, np.ndarray],
    targets: Sequence[ProbeTarget],
    token_type: np.ndarray,
    groups: np.ndarray,
    config: RepresentationConfig | None = None,
) -> dict[str, Any]:
    """Probe every target at every iteration in ``states``.

    states: t -> (n, d) hidden states of the same n tokens (t = -1 for h0).
    running: t -> (n,) bool, the token computed at iteration t (h0: all True).
    targets: the features, values (n,) with NaN where undefined.
    token_type: (n,) input token ids (the control task's types).
    groups: (n,) instance ids (the folds never split an instance).

    Returns a JSON-able dict: one curve per feature, a per-kind summary, and the
    features that were skipped entirely (with the reason).
    """
    config = config or RepresentationConfig()
    token_type = np.asarray(token_type)
    groups = np.asarray(groups)
    iterations = sorted(states)
    features: list[dict[str, Any]] = []
    for target in targets:
        values = np.asarray(target.values, dtype=float)
        if values.shape != groups.shape:
            raise ValueError(f"feature {target.name!r} has {values.shape[0]} values for {groups.shape[0]} tokens")
        target = ProbeTarget(target.name, target.kind, target.discrete, values)
        defined = values[np.isfinite(values)]
        family = probe_family(target, defined, config) if defined.size else "none"
        curve = [
            probe_at_iteration(np.asarray(states[t]), target, running_mask(running, t, groups.shape[0]),
                               token_type, groups, config, t)
            for t in iterations
        ]
        features.append(
            {
                "name": target.name,
                "kind": target.kind,
                "discrete": target.discrete,
                "probe": family,
                "metric": "accuracy" if family == "logistic" else "r2",
                "curve": curve,
                "peak": _peak(curve),
            }
        )
    return {
        "iterations": iterations,
        "labels": [iteration_label(t) for t in iterations],
        "config": {
            "n_splits": config.n_splits,
            "max_tokens": config.max_tokens,
            "max_classes": config.max_classes,
            "C": config.C,
            "seed": config.seed,
        },
        "features": features,
        "summary": summarise(features),
    }


def running_mask(running: Mapping[int, np.ndarray], t: int, n: int) -> np.ndarray:
    """The running mask at t; h0 (and any t the mapping lacks at -1) is all tokens."""
    if t in running:
        return np.asarray(running[t], dtype=bool)
    if t == H0:
        return np.ones(n, dtype=bool)
    raise KeyError(f"no running mask for iteration {t}")


def _peak(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [p for p in curve if p.get("selectivity") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda p: p["selectivity"])
    return {"t": best["t"], "label": best["label"], "selectivity": best["selectivity"], "score": best["score"]}


def summarise(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean selectivity per kind and iteration: does the state encode execution
    features beyond token identity, and from which iteration on?"""
    out: dict[str, Any] = {}
    for kind in ("static", "execution"):
        rows = [f for f in features if f["kind"] == kind]
        per_t: dict[str, list[float]] = {}
        for f in rows:
            for p in f["curve"]:
                if p.get("selectivity") is not None:
                    per_t.setdefault(p["label"], []).append(p["selectivity"])
        out[kind] = {
            "features": [f["name"] for f in rows],
            "mean_selectivity": {label: float(np.mean(v)) for label, v in per_t.items()},
        }
    return out


# ---------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------

KIND_STYLE = {"static": "--", "execution": "-"}  # line style tells the kinds apart


def plot_representation(result: dict[str, Any], title: str = ""):
    """Probe score and selectivity over iterations, one line per feature;
    solid lines are execution features, dashed static ones. Returns a Figure
    (object-oriented API: no pyplot global state, no backend needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_score, ax_sel = fig.subplots(1, 2, sharex=True)
    colors = {}
    for feature in result["features"]:
        pts = [p for p in feature["curve"] if p.get("score") is not None]
        if not pts:
            continue
        xs = [p["t"] for p in pts]
        style = KIND_STYLE.get(feature["kind"], ":")
        label = f"{feature['name']} ({feature['kind'][:4]}, {'acc' if feature['metric'] == 'accuracy' else 'R²'})"
        (line,) = ax_score.plot(xs, [p["score"] for p in pts], style, marker="o", ms=3, label=label)
        colors[feature["name"]] = line.get_color()
        ax_score.plot(xs, [p["control"] for p in pts], ":", color=line.get_color(), alpha=0.5)
        sel = np.array([p["selectivity"] for p in pts])
        err = np.array([p["selectivity_std"] or 0.0 for p in pts])
        ax_sel.plot(xs, sel, style, marker="o", ms=3, color=line.get_color())
        ax_sel.fill_between(xs, sel - err, sel + err, color=line.get_color(), alpha=0.12)
    ticks = result["iterations"]
    for ax in (ax_score, ax_sel):
        ax.set_xticks(ticks, [iteration_label(t) for t in ticks])
        ax.set_xlabel("iteration (h0 = Prelude output)")
        ax.grid(alpha=0.3)
    ax_sel.axhline(0.0, color="black", lw=0.8)
    ax_score.set_ylabel("probe score (dotted: control task)")
    ax_sel.set_ylabel("selectivity = score - control")
    ax_score.set_title("probe accuracy / R² (running tokens)")
    ax_sel.set_title("selectivity (± std over folds)")
    if colors:
        fig.legend(loc="outside right center", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
