"""Attribution suite: which features explain the compute a token gets (PAPER.md §4).

The paper's method, step by step, on the analysed tokens (default: answer
tokens of solved instances for BREVO, question tokens for MANO; see
:mod:`anira.probes.featureset`), target = expected depth Σ_d d·q(d):

1. collinearity: for every pair with |r| > 0.8 (largest first) drop the one
   less correlated with the target;
2. VIF: drop the feature with the highest variance inflation factor until
   every VIF < 5;
3. ordinary least squares on the z-scored features ("full" model); ΔR² of a
   feature = R²(full) − R²(full without it); ΔR² of a kind = R²(full) −
   R²(full without every feature of that kind);
4. keep the features with ΔR² > 0.5% and refit ("selected" model): its
   standardized coefficients and R² are the headline;
5. refit the selected features plus the size knob one-hot (categorical, one
   level dropped) to isolate within-size effects ("controlled" model);
   features constant within every size (e.g. the knob itself) are absorbed
   by the one-hot and left out of that fit.

Share of explained variance by kind: the exact Shapley decomposition of the
selected model's R² over the two groups {static, execution} (unique
contributions plus an even split of the shared part; the shares sum to 1).
An instance-level (cluster) bootstrap gives its uncertainty, and the
*reading* — static / execution / mixed / none — follows from the bootstrap
interval of share(execution) − share(static): none when the selected model's
R² interval reaches below 1%; execution / static when the interval excludes 0
on that side *and* the point difference is at least 0.2 (a 60/40 split or
more: with many tokens a trivially small imbalance is "significant", and two
kinds contributing comparably is what "mixed" means); mixed otherwise.

Every regression here is solved from one weighted Gram matrix of
``[1, X, y]``, so ΔR², VIF and each bootstrap replicate cost a small linear
solve; the reported coefficients come from scikit-learn's LinearRegression.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression

from anira.errors import AniraError
from anira.probes.featureset import parse_names, select_features
from anira.probes.suites import Requirements, SuiteContext, SuiteResult
from anira.probes.table import TokenTable

KINDS = ("static", "execution")


# ---------------------------------------------------------------------------------------
# Least squares from a Gram matrix
# ---------------------------------------------------------------------------------------


def gram(Z: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_rows w·z zᵀ for the design ``Z = [1, X, y]``."""
    return (Z.T * (1.0 if weights is None else weights)) @ Z


def r2_from_gram(G: np.ndarray, cols: list[int], target: int) -> float:
    """R² of regressing column ``target`` on the intercept (column 0) and ``cols``."""
    S = [0, *cols]
    A = G[np.ix_(S, S)]
    b = G[S, target]
    beta = np.linalg.lstsq(A, b, rcond=None)[0]
    sst = G[target, target] - G[0, target] ** 2 / G[0, 0]
    if sst <= 1e-12 * max(G[target, target], 1.0):
        return float("nan")
    sse = G[target, target] - beta @ b
    return float(1.0 - sse / sst)


def shapley(groups: dict[str, list[int]], value: Any) -> dict[str, float]:
    """Exact Shapley values of ``value(columns)`` (R² of a column subset) over groups."""
    names = list(groups)
    k = len(names)
    cache: dict[frozenset, float] = {}

    def v(members: frozenset) -> float:
        if members not in cache:
            cols = [c for g in members for c in groups[g]]
            cache[members] = value(cols) if cols else 0.0
        return cache[members]

    from math import factorial

    out = {}
    for g in names:
        others = [h for h in names if h != g]
        total = 0.0
        for size in range(k):
            weight = factorial(size) * factorial(k - size - 1) / factorial(k)
            for subset in combinations(others, size):
                s = frozenset(subset)
                total += weight * (v(s | {g}) - v(s))
        out[g] = total
    return out


def zscore(X: np.ndarray) -> np.ndarray:
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return (X - X.mean(axis=0)) / sd


# ---------------------------------------------------------------------------------------
# The paper's screening steps
# ---------------------------------------------------------------------------------------


def prune_correlated(X: np.ndarray, y: np.ndarray, names: list[str], threshold: float) -> tuple[list[str], list[dict]]:
    """Drop one of each pair with |r| > threshold, keeping the one closer to the target."""
    r = np.corrcoef(np.column_stack([X, y]), rowvar=False)
    r_xy = np.abs(r[:-1, -1])
    pairs = sorted(((abs(r[i, j]), i, j) for i, j in combinations(range(len(names)), 2)), reverse=True)
    alive = set(range(len(names)))
    dropped = []
    for value, i, j in pairs:
        if value <= threshold or i not in alive or j not in alive:
            continue
        lose, keep = (i, j) if r_xy[i] < r_xy[j] else (j, i)
        alive.discard(lose)
        dropped.append({"dropped": names[lose], "kept": names[keep], "r": float(r[i, j])})
    return [names[i] for i in sorted(alive)], dropped


def vif_values(Xz: np.ndarray) -> np.ndarray:
    """Variance inflation factor of each column: 1 / (1 − R² on the others)."""
    k = Xz.shape[1]
    if k < 2:
        return np.ones(k)
    G = gram(np.column_stack([np.ones(len(Xz)), Xz]))
    out = np.empty(k)
    for j in range(k):
        others = [c + 1 for c in range(k) if c != j]
        r2 = r2_from_gram(G, others, j + 1)
        out[j] = np.inf if r2 >= 1 - 1e-12 else 1.0 / (1.0 - r2)
    return out


def prune_vif(X: np.ndarray, names: list[str], threshold: float) -> tuple[list[str], list[dict]]:
    """Iteratively drop the highest-VIF feature until every VIF < threshold."""
    names = list(names)
    idx = list(range(len(names)))
    dropped = []
    while len(idx) > 1:
        vif = vif_values(zscore(X[:, idx]))
        worst = int(np.argmax(vif))
        if vif[worst] < threshold:
            break
        dropped.append({"dropped": names[idx[worst]], "vif": float(vif[worst])})
        idx.pop(worst)
    return [names[i] for i in idx], dropped


# ---------------------------------------------------------------------------------------
# One fit: R², ΔR², standardized coefficients, Shapley shares
# ---------------------------------------------------------------------------------------


def standardized_coefficients(Xz: np.ndarray, yz: np.ndarray) -> np.ndarray:
    return LinearRegression().fit(Xz, yz).coef_


def fit_report(
    Xz: np.ndarray, yz: np.ndarray, names: list[str], kinds: dict[str, str], extra: np.ndarray | None = None
) -> dict[str, Any]:
    """R², per-feature and per-kind ΔR², coefficients and kind shares of one OLS fit.

    ``extra`` columns (the size one-hot) are always in the model and form the
    group "size" of the Shapley decomposition.
    """
    extra = np.zeros((len(yz), 0)) if extra is None else extra
    k = len(names)
    Z = np.column_stack([np.ones(len(yz)), Xz, extra, yz])
    G = gram(Z)
    target = Z.shape[1] - 1
    feature_cols = list(range(1, k + 1))
    extra_cols = list(range(k + 1, k + 1 + extra.shape[1]))
    full = r2_from_gram(G, feature_cols + extra_cols, target)
    delta = {}
    for j, name in enumerate(names):
        rest = [c for c in feature_cols if c != j + 1] + extra_cols
        delta[name] = full - r2_from_gram(G, rest, target)
    delta_kind = {}
    groups: dict[str, list[int]] = {}
    for kind in KINDS:
        cols = [j + 1 for j, n in enumerate(names) if kinds[n] == kind]
        groups[kind] = cols
        rest = [c for c in feature_cols if c not in cols] + extra_cols
        delta_kind[kind] = full - r2_from_gram(G, rest, target) if cols else 0.0
    if extra_cols:
        groups["size"] = extra_cols
    phi = shapley(groups, lambda cols: r2_from_gram(G, cols, target))
    coef = LinearRegression().fit(np.column_stack([Xz, extra]), yz).coef_[:k] if k else np.zeros(0)
    return {
        "r2": full,
        "features": [
            {"name": n, "kind": kinds[n], "coef": float(coef[j]), "delta_r2": float(delta[n])}
            for j, n in enumerate(names)
        ],
        "delta_r2_kind": delta_kind,
        "shapley": phi,
        "share": {g: (v / full if full > 0 else float("nan")) for g, v in phi.items()},
    }


def _shares_from_gram(G: np.ndarray, groups: dict[str, list[int]], target: int) -> tuple[float, dict[str, float]]:
    cols = [c for g in groups.values() for c in g]
    full = r2_from_gram(G, cols, target)
    phi = shapley(groups, lambda c: r2_from_gram(G, c, target))
    return full, {g: (v / full if full > 0 else np.nan) for g, v in phi.items()}


def bootstrap_shares(
    Z: np.ndarray, groups: dict[str, list[int]], instance: np.ndarray, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """Cluster bootstrap by instance: resample instances with replacement (as row
    weights) and recompute R² and the kind shares."""
    _, inverse = np.unique(instance, return_inverse=True)
    n_inst = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    target = Z.shape[1] - 1
    r2s, diffs, static, execution = [], [], [], []
    for _ in range(n_boot):
        counts = rng.multinomial(n_inst, np.full(n_inst, 1.0 / n_inst))
        G = gram(Z, counts[inverse].astype(np.float64))
        r2, share = _shares_from_gram(G, groups, target)
        r2s.append(r2)
        static.append(share.get("static", 0.0))
        execution.append(share.get("execution", 0.0))
        diffs.append(share.get("execution", 0.0) - share.get("static", 0.0))
    return {"r2": np.array(r2s), "static": np.array(static), "execution": np.array(execution), "diff": np.array(diffs)}


def _ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def reading(r2_ci: list[float], diff: float, diff_ci: list[float], min_r2: float = 0.01,
            min_gap: float = 0.2) -> str:
    """static / execution / mixed / none from the bootstrap intervals (module doc)."""
    if not np.isfinite(r2_ci[0]) or r2_ci[0] < min_r2:
        return "none"
    if diff_ci[0] > 0 and diff >= min_gap:
        return "execution"
    if diff_ci[1] < 0 and diff <= -min_gap:
        return "static"
    return "mixed"


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------


def attribute(table: TokenTable, *, token_set: str = "auto", correct_only: bool = True,
              target: str = "expected_depth", corr_threshold: float = 0.8, vif_threshold: float = 5.0,
              min_delta_r2: float = 0.005, min_share_gap: float = 0.2,
              min_coverage: float = 0.5, features: list[str] | None = None, n_boot: int = 200,
              seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Run the attribution on ``table``; returns (JSON-able result, notes)."""
    if target not in ("expected_depth", "exit_depth"):
        raise AniraError(f"target must be expected_depth or exit_depth, got {target!r}")
    sel = select_features(table, token_set=token_set, correct_only=correct_only, min_coverage=min_coverage,
                          names=features)
    notes = list(sel.notes)
    rows = sel.rows
    y = table[target][rows].astype(np.float64)
    n_inst = int(np.unique(table.groups(rows)).size)
    if rows.size < len(sel.names) + 3 or n_inst < 3:
        raise AniraError(f"too few tokens to fit ({rows.size} tokens of {n_inst} instances for {len(sel.names)} features)")
    if np.ptp(y) == 0:
        raise AniraError(f"the target {target} is constant ({y[0]:g}) on the analysed tokens: no compute variation to attribute")
    X = table.matrix(sel.names, rows)
    names, corr_dropped = prune_correlated(X, y, sel.names, corr_threshold)
    X = table.matrix(names, rows)
    names, vif_dropped = prune_vif(X, names, vif_threshold)
    X = table.matrix(names, rows)
    Xz, yz = zscore(X), zscore(y[:, None])[:, 0]
    full = fit_report(Xz, yz, names, sel.kinds)
    selected = [f["name"] for f in full["features"] if f["delta_r2"] > min_delta_r2]
    for f in full["features"]:
        f["kept"] = f["name"] in selected
    if not selected:
        notes.append(f"no feature adds more than {min_delta_r2:.1%} of R²: the selected model is empty")
    sel_idx = [names.index(n) for n in selected]
    selected_fit = fit_report(Xz[:, sel_idx], yz, selected, sel.kinds)

    # controlled for size: one-hot of the knob, features constant within each size left out
    difficulty = table["difficulty"][rows]
    levels = np.unique(difficulty)
    controlled: dict[str, Any] | None = None
    absorbed = []
    if levels.size > 1:
        onehot = (difficulty[:, None] == levels[None, 1:]).astype(np.float64)
        within = [n for n in selected if _varies_within(table.feature(n, rows), difficulty)]
        absorbed = [n for n in selected if n not in within]
        idx = [names.index(n) for n in within]
        controlled = fit_report(Xz[:, idx], yz, within, sel.kinds, extra=onehot)
        controlled["size_levels"] = levels.tolist()
        controlled["absorbed_by_size"] = absorbed
    else:
        notes.append(f"one size only ({levels[0]}): no size-controlled refit")

    # uncertainty of the kind shares of the selected model
    groups = {kind: [j + 1 for j, n in enumerate(selected) if sel.kinds[n] == kind] for kind in KINDS}
    groups = {k: v for k, v in groups.items() if v}
    boot: dict[str, Any] = {}
    label = "none"
    if groups and n_boot > 0:
        Z = np.column_stack([np.ones(len(yz)), Xz[:, sel_idx], yz])
        draws = bootstrap_shares(Z, groups, table.groups(rows), n_boot, seed)
        boot = {"n_boot": n_boot, "r2_ci": _ci(draws["r2"]), "share_static_ci": _ci(draws["static"]),
                "share_execution_ci": _ci(draws["execution"]), "diff_ci": _ci(draws["diff"])}
        share = selected_fit["share"]
        diff = share.get("execution", 0.0) - share.get("static", 0.0)
        label = reading(boot["r2_ci"], diff, boot["diff_ci"], min_gap=min_share_gap)
    share = selected_fit["share"]
    result = {
        "token_set": sel.token_set,
        "correct_only": correct_only,
        "target": target,
        "n_tokens": int(rows.size),
        "n_instances": n_inst,
        "candidates": sel.names,
        "dropped_correlated": corr_dropped,
        "dropped_vif": vif_dropped,
        "vif": dict(zip(names, vif_values(Xz).tolist())),
        "full": full,
        "selected_features": selected,
        "selected": selected_fit,
        "controlled": controlled,
        "share_static": share.get("static", 0.0 if selected else float("nan")),
        "share_execution": share.get("execution", 0.0 if selected else float("nan")),
        "bootstrap": boot,
        "reading": label,
        "thresholds": {"corr": corr_threshold, "vif": vif_threshold, "min_delta_r2": min_delta_r2,
                       "min_share_gap": min_share_gap},
    }
    return result, notes


def _varies_within(values: np.ndarray, groups: np.ndarray) -> bool:
    order = np.argsort(groups, kind="stable")
    g, v = groups[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    lo = np.minimum.reduceat(v, starts)
    hi = np.maximum.reduceat(v, starts)
    return bool(np.any(hi > lo))


class AttributionSuite:
    """OLS attribution of expected depth to static vs execution features (module doc)."""

    name = "attribution"
    description = "paper's regression of expected depth on features: ΔR² per feature and kind, size-controlled refit"

    def requires(self, context: SuiteContext) -> Requirements:
        return Requirements(min_instances=3)

    def run(self, table: TokenTable, context: SuiteContext) -> SuiteResult:
        result, notes = attribute(
            table,
            token_set=context.option("token_set", "auto"),
            correct_only=context.option("correct_only", True),
            target=context.option("target", "expected_depth"),
            corr_threshold=context.option("corr_threshold", 0.8),
            vif_threshold=context.option("vif_threshold", 5.0),
            min_delta_r2=context.option("min_delta_r2", 0.005),
            min_share_gap=context.option("min_share_gap", 0.2),
            min_coverage=context.option("min_coverage", 0.5),
            features=parse_names(context.option("features", None)),
            n_boot=context.option("n_boot", 200),
            seed=context.seed,
        )
        from anira.probes.figures import attribution_figure

        ctrl = result["controlled"]
        headline = {
            "tokens": f"{result['token_set']} ({result['n_tokens']})",
            "R²": result["selected"]["r2"],
            "R² | size": ctrl["r2"] if ctrl else None,
            "share static": result["share_static"],
            "share execution": result["share_execution"],
            "reading": result["reading"],
        }
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes,
                           figures={"delta_r2": attribution_figure(result)})
