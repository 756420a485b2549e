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

The core is pure functions over numpy arrays; :class:`RepresentationSuite`
at the end feeds it from the per-token table.
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
from threadpoolctl import threadpool_limits

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
    max_tokens: int = 4000  # tokens per probe; more are subsampled (seeded) for speed
    min_tokens: int = 20  # fewer running, labelled tokens: the iteration is skipped
    max_classes: int = 16  # discrete features with more values are probed as ordinal (ridge)
    C: float = 1.0  # inverse L2 strength of the logistic probe
    # BLAS threads during the fits: many small L-BFGS solves only make BLAS threads
    # spin against each other (20x slower on a busy 2-core box); None leaves BLAS alone
    blas_threads: int | None = 1
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
    classify: bool,
) -> dict[str, Any]:
    """One point of a probe curve: the feature vs its control at iteration ``t``
    (``classify``: logistic probe and accuracy, else ridge and R²).

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
    if target.discrete and 0 < np.unique(y).size <= config.max_classes:
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
    checked = []
    for target in targets:
        values = np.asarray(target.values, dtype=float)
        if values.shape != groups.shape:
            raise ValueError(f"feature {target.name!r} has {values.shape[0]} values for {groups.shape[0]} tokens")
        checked.append(ProbeTarget(target.name, target.kind, target.discrete, values))
    # one probe family per feature (decided on all its values, not per iteration)
    families = [
        probe_family(tg, tg.values[np.isfinite(tg.values)], config) if np.isfinite(tg.values).any() else "none"
        for tg in checked
    ]
    curves: list[list[dict[str, Any]]] = [[] for _ in checked]
    # iterations outer: each iteration's states are read once (they may be memory-mapped)
    with threadpool_limits(limits=config.blas_threads, user_api="blas"):
        for t in iterations:
            X = np.asarray(states[t])
            mask = running_mask(running, t, groups.shape[0])
            for curve, target, family in zip(curves, checked, families):
                classify = family == "logistic"
                curve.append(probe_at_iteration(X, target, mask, token_type, groups, config, t, classify))
    features: list[dict[str, Any]] = []
    for curve, target, family in zip(curves, checked, families):
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
        # a point whose control could not be scored has a score but no selectivity
        with_sel = [p for p in pts if p.get("selectivity") is not None]
        if with_sel:
            xs_sel = [p["t"] for p in with_sel]
            sel = np.array([p["selectivity"] for p in with_sel], dtype=float)
            err = np.array([p["selectivity_std"] or 0.0 for p in with_sel], dtype=float)
            ax_sel.plot(xs_sel, sel, style, marker="o", ms=3, color=line.get_color())
            ax_sel.fill_between(xs_sel, sel - err, sel + err, color=line.get_color(), alpha=0.12)
    ticks = result["iterations"]
    for ax in (ax_score, ax_sel):
        ax.set_xticks(ticks, [iteration_label(t) for t in ticks])
        ax.set_xlabel("iteration (h0 = Prelude output)")
        ax.grid(alpha=0.3)
    ax_sel.axhline(0.0, color="black", lw=0.8)
    ax_score.set_ylabel("probe score (dotted: control task)")
    ax_sel.set_ylabel("selectivity = score - control")
    ax_score.set_title("probe accuracy / R² (running tokens)")
    ax_sel.set_title("selectivity ± std over folds (solid: execution, dashed: static)", fontsize=9)
    if colors:
        fig.legend(loc="outside right center", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------

SITE = "hook_resid_post"


def h0_site(n_prelude: int) -> str:
    """The hook holding the Prelude output h0 (the embedding when there is no Prelude)."""
    return f"prelude.{n_prelude - 1}.hook_resid_post" if n_prelude > 0 else "hook_embed"


def parse_iterations(spec: str, max_iters: int) -> list[int]:
    """``"all"`` -> [-1, 0, .., D-1]; otherwise comma-separated ints, -1 or ``h0`` for h0."""
    from anira.errors import AniraError

    if spec.strip() == "all":
        return [H0, *range(max_iters)]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            t = H0 if part == "h0" else int(part)
        except ValueError:
            raise AniraError(f"iterations: cannot read {part!r} (use 'all', h0 or integers)") from None
        if not H0 <= t < max_iters:
            raise AniraError(f"iterations: {t} is outside -1..{max_iters - 1}")
        out.append(t)
    if not out:
        raise AniraError("iterations: no iteration given")
    return sorted(set(out))


class _LazyStates(Mapping):
    """t -> the table's hidden states at iteration t, read only when asked for."""

    def __init__(self, table: Any, sites: dict[int, str]) -> None:
        self.table, self.sites = table, sites

    def __getitem__(self, t: int) -> np.ndarray:
        return self.table.hidden(self.sites[t])

    def __iter__(self):
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)


class RepresentationSuite:
    """Linear probes from hidden states at each iteration to each task feature,
    with Hewitt–Liang control tasks and selectivity.

    Options: ``iterations`` ("all", or e.g. "h0,0,2"), ``n_splits`` (5),
    ``max_tokens`` (4000 per probe), ``max_classes`` (16), ``C`` (1.0),
    ``correct_only`` (False), ``h0_site`` (the Prelude output's hook; default
    from the model, else ``prelude.0.hook_resid_post``).
    """

    name = "representation"
    description = (
        "linear probes from hidden states at each iteration to each feature (running tokens), "
        "Hewitt–Liang control tasks and selectivity"
    )

    @property
    def options(self) -> dict[str, Any]:
        from anira.probes.options import Option, iteration_list

        return {
            "iterations": Option("all", "states probed: all, or e.g. h0,0,3", parse=iteration_list),
            "n_splits": Option(5, "GroupKFold folds (by instance)", minimum=2),
            "max_tokens": Option(RepresentationConfig.max_tokens, "tokens per probe (subsampled)", minimum=20),
            "max_classes": Option(RepresentationConfig.max_classes, "discrete features with more values are "
                                  "probed as ordinal (ridge)", minimum=2),
            "C": Option(1.0, "inverse L2 strength of the logistic probes", minimum=1e-12),
            "correct_only": Option(False, "probe solved instances only"),
            "h0_site": Option("", "hook of the Prelude output (default: the model's last Prelude layer)"),
        }

    def _sites(self, context: Any) -> dict[int, str]:
        model = context.model
        default_h0 = h0_site(int(model.cfg.n_prelude)) if model is not None else h0_site(1)
        h0 = context.option("h0_site", default_h0) or default_h0
        its = parse_iterations(str(context.option("iterations", "all")), int(context.max_iters))
        return {t: (h0 if t == H0 else f"loop.{t}.{SITE}") for t in its}

    def requires(self, context: Any) -> Any:
        from anira.probes.suites import Requirements

        n_splits = int(context.option("n_splits", 5))
        return Requirements(hidden_sites=tuple(self._sites(context).values()), min_instances=n_splits)

    def run(self, table: Any, context: Any) -> Any:
        from anira.errors import AniraError
        from anira.probes.suites import SuiteResult

        sites = self._sites(context)
        config = RepresentationConfig(
            n_splits=int(context.option("n_splits", 5)),
            max_tokens=int(context.option("max_tokens", RepresentationConfig.max_tokens)),
            max_classes=int(context.option("max_classes", RepresentationConfig.max_classes)),
            C=float(context.option("C", 1.0)),
            seed=int(context.seed),
        )
        if bool(context.option("correct_only", False)):
            table = table.select(table.rows("all", correct_only=True))
        names = list(table.specs)
        if not names:
            raise AniraError("the task declares no features to probe")
        if table.n_rows == 0:
            raise AniraError("no rows to probe (no correctly solved instance?)")
        targets = [
            ProbeTarget(n, table.specs[n].kind, bool(table.specs[n].discrete), table.feature(n)) for n in names
        ]
        running = {t: table.running[:, t] for t in sites if t != H0}
        result = representation_curves(
            _LazyStates(table, sites), running, targets, table["token"], table.groups(), config
        )
        result["sites"] = {iteration_label(t): s for t, s in sites.items()}
        notes = _notes(result)
        headline: dict[str, Any] = {}
        for kind in ("static", "execution"):
            peaks = [f["peak"] for f in result["features"] if f["kind"] == kind and f["peak"]]
            best = max(peaks, key=lambda p: p["selectivity"], default=None)
            best_feature = next((f["name"] for f in result["features"] if f["peak"] is best), None)
            headline[f"max selectivity {kind}"] = best["selectivity"] if best else None
            headline[f"at ({kind})"] = f"{best_feature} @ {best['label']}" if best else None
        figures = {"curves": plot_representation(result, title=str(table.meta.get("checkpoint", "")))}
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes, figures=figures)


def _notes(result: dict[str, Any]) -> list[str]:
    notes = []
    for f in result["features"]:
        skipped = [p for p in f["curve"] if "skipped" in p]
        if len(skipped) == len(f["curve"]):
            notes.append(f"{f['name']}: not probed ({skipped[0]['skipped']})" if skipped else f"{f['name']}: no iterations")
        elif skipped:
            where = ", ".join(p["label"] for p in skipped)
            notes.append(f"{f['name']}: skipped at {where} ({skipped[0]['skipped']})")
        n_warn = sum(p.get("convergence_warnings", 0) for p in f["curve"])
        if n_warn:
            notes.append(f"{f['name']}: {n_warn} probe fits did not fully converge (max_iter reached)")
        if f["probe"] == "ridge" and f["discrete"]:
            notes.append(f"{f['name']}: more than {result['config']['max_classes']} values, probed as ordinal (ridge, R²)")
    return notes
