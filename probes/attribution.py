"""Attribution suite: which features explain the compute a token gets (docs/paper.md §4).

Two analyses of the same analysed tokens (default: answer tokens for BREVO,
question tokens for MANO; see :mod:`anira.probes.featureset`), target =
expected depth Σ_d d·q(d):

**The verdict** (:mod:`anira.probes.verdict`): a commonality analysis of the
held-out R² of four nested least-squares fits — the token-identity and
position baseline B, B + static, B + execution, B + both — which separates
what each kind carries on its own from what both carry (the shared part),
and reads ``undetermined`` when the shared part keeps the kinds apart. It
uses every candidate feature: collinearity does not bias the R² of a set, it
only moves variance into the shared part, where it belongs. R² is measured on
held-out instances (5-fold splits by instance, repeated 4 times, Nadeau–Bengio
intervals): an in-sample R² (or its bootstrap) is biased upwards, enough to
call random depths "signal" when the baseline has many indicator columns.

**The paper's protocol** (its Table 2), for the per-feature coefficients:

1. collinearity: for every pair with |r| > 0.8 (largest first) drop the one
   less correlated with the target;
2. VIF: while some feature has VIF ≥ 5, drop — among those — the one least
   correlated with the target (the paper does not say which to drop; keeping
   the one closer to the target, as in step 1, is what keeps a true driver);
3. ordinary least squares on the z-scored features ("full" model); ΔR² of a
   feature = R²(full) − R²(full without it);
4. keep the features with ΔR² > 0.5% and refit ("selected" model): its
   standardized coefficients and R², and the Shapley split of its R² between
   the kinds ("share static / execution");
5. refit the selected features plus the size knob one-hot ("controlled"
   model); features constant within every size are absorbed by the one-hot.

Uncertainty: an instance-level (cluster) bootstrap. Every replicate redoes
the *whole* pipeline — screening, selection, shares and the commonality — so
the intervals include the screening's own variability. When screening removes
every feature of one kind, that kind's share is 0 by construction, not by
evidence: the result says so in ``flags``, with the feature that replaced it,
and reports in how many replicates it happened.

Every regression is solved from a weighted Gram matrix of
``[1, baseline, features, y]``; the replicates' Gram matrices come from
per-instance Gram matrices in one product (see :func:`replicate_grams`).
"""

from __future__ import annotations

from itertools import combinations
from math import factorial
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression

from anira.errors import AniraError
from anira.probes.featureset import baseline_design, feature_basis, parse_baseline, select_features
from anira.probes.options import VERDICT_OPTIONS, Option, read_options
from anira.probes.selection import with_selection_check
from anira.probes.suites import Requirements, SuiteContext, SuiteResult
from anira.probes.table import TokenTable
from anira.probes.verdict import SetScores, decide

KINDS = ("static", "execution")


# ---------------------------------------------------------------------------------------
# Least squares from a Gram matrix
# ---------------------------------------------------------------------------------------


def gram(Z: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_rows w·z zᵀ for the design ``Z = [1, X, y]``."""
    return (Z.T * (1.0 if weights is None else weights)) @ Z


def _solve(G: np.ndarray, cols: list[int], target: int) -> tuple[float, int]:
    """(R², rank of the design) of regressing ``target`` on the intercept and ``cols``."""
    S = [0, *cols]
    A = G[np.ix_(S, S)]
    b = G[S, target]
    beta, _, rank, _ = np.linalg.lstsq(A, b, rcond=None)
    sst = G[target, target] - G[0, target] ** 2 / G[0, 0]
    if sst <= 1e-12 * max(G[target, target], 1.0):
        return float("nan"), int(rank)
    sse = G[target, target] - beta @ b
    return float(1.0 - sse / sst), int(rank)


def r2_from_gram(G: np.ndarray, cols: list[int], target: int) -> float:
    """R² of regressing column ``target`` on the intercept (column 0) and ``cols``."""
    return _solve(G, cols, target)[0]


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


def correlations(G: np.ndarray, cols: list[int]) -> np.ndarray:
    """Weighted correlation matrix of the columns ``cols`` of the design behind ``G``."""
    w = G[0, 0]
    mean = G[0, cols] / w
    cov = G[np.ix_(cols, cols)] / w - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    sd[sd == 0] = 1.0
    return cov / np.outer(sd, sd)


def replicate_grams(Z: np.ndarray, instance: np.ndarray, n_boot: int, seed: int,
                    max_bytes: int = 64 << 20) -> np.ndarray:
    """Gram matrices (n_boot, p, p) of a cluster bootstrap by instance.

    Each replicate draws the instances with replacement (multinomial counts);
    its Gram matrix is Σ_instances count · (that instance's Gram matrix), so
    all replicates come from one product of the counts with the per-instance
    Gram matrices, built in chunks of at most ``max_bytes``.
    """
    _, inverse = np.unique(instance, return_inverse=True)
    n_inst = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_inst, np.full(n_inst, 1.0 / n_inst), size=n_boot).astype(np.float64)
    order = np.argsort(inverse, kind="stable")
    Zs, inv = Z[order], inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(inv)) + 1, len(inv)]
    p = Z.shape[1]
    out = np.zeros((n_boot, p * p))
    max_rows = max(1, max_bytes // (8 * p * p))
    i = 0
    while i < n_inst:
        j = i + 1
        while j < n_inst and starts[j + 1] - starts[i] <= max_rows:
            j += 1
        block = Zs[starts[i]:starts[j]]
        outer = (block[:, :, None] * block[:, None, :]).reshape(len(block), p * p)
        per_instance = np.add.reduceat(outer, starts[i:j] - starts[i], axis=0)
        out += counts[:, i:j] @ per_instance
        i = j
    return out.reshape(n_boot, p, p)


# ---------------------------------------------------------------------------------------
# The paper's screening, from a Gram matrix (so every replicate can redo it)
# ---------------------------------------------------------------------------------------


class Design:
    """Column layout of ``Z = [1, baseline (b), verdict basis (m), features (k), y]``:
    the verdict's sets use the baseline and the basis
    (:func:`anira.probes.featureset.feature_basis`), the paper's protocol the
    z-scored features themselves."""

    def __init__(self, n_baseline: int, basis_owner: list[str], names: list[str], kinds: dict[str, str]) -> None:
        self.baseline = list(range(1, 1 + n_baseline))
        first = 1 + n_baseline
        self.basis = {kind: [first + j for j, n in enumerate(basis_owner) if kinds[n] == kind] for kind in KINDS}
        self.names = list(names)
        self.kinds = kinds
        first += len(basis_owner)
        self.col = {n: first + j for j, n in enumerate(names)}
        self.target = first + len(names)

    def cols(self, names: list[str]) -> list[int]:
        return [self.col[n] for n in names]

    def of_kind(self, kind: str, names: list[str] | None = None) -> list[str]:
        return [n for n in (self.names if names is None else names) if self.kinds[n] == kind]


def screen(G: np.ndarray, design: Design, corr_threshold: float, vif_threshold: float
           ) -> tuple[list[str], list[dict], list[dict]]:
    """The paper's two screening steps on the candidates (module docstring);
    returns (kept names, dropped for correlation, dropped for VIF)."""
    names = list(design.names)
    cols = design.cols(names) + [design.target]
    r = correlations(G, cols)
    r_xy = np.abs(r[:-1, -1])
    k = len(names)
    pairs = sorted(((abs(r[i, j]), i, j) for i, j in combinations(range(k), 2)), reverse=True)
    alive = set(range(k))
    dropped_corr = []
    for value, i, j in pairs:
        if value <= corr_threshold or i not in alive or j not in alive:
            continue
        lose, keep = (i, j) if r_xy[i] < r_xy[j] else (j, i)
        alive.discard(lose)
        dropped_corr.append({"dropped": names[lose], "kept": names[keep], "r": float(r[i, j])})
    kept = [names[i] for i in sorted(alive)]
    dropped_vif = []
    while len(kept) > 1:
        vifs = vif_from_gram(G, design, kept)
        over = [n for n in kept if vifs[n] >= vif_threshold]
        if not over:
            break
        # target-aware: among the inflated, drop the one least correlated with the target
        lose = min(over, key=lambda n: (r_xy[names.index(n)], -vifs[n]))
        rest = [n for n in kept if n != lose]
        dropped_vif.append({"dropped": lose, "vif": float(vifs[lose]), "replaced_by": _replacement(G, design, lose, rest)})
        kept = rest
    return kept, dropped_corr, dropped_vif


def vif_from_gram(G: np.ndarray, design: Design, names: list[str]) -> dict[str, float]:
    out = {}
    for n in names:
        others = design.cols([m for m in names if m != n])
        r2 = r2_from_gram(G, others, design.col[n]) if others else 0.0
        out[n] = float("inf") if not np.isfinite(r2) or r2 >= 1 - 1e-12 else 1.0 / (1.0 - r2)
    return out


def _replacement(G: np.ndarray, design: Design, dropped: str, rest: list[str]) -> str | None:
    """The remaining feature that stands in most for ``dropped``: the largest
    standardized coefficient when regressing ``dropped`` on the rest."""
    if not rest:
        return None
    cols = design.cols(rest)
    S = [0, *cols]
    beta = np.linalg.lstsq(G[np.ix_(S, S)], G[S, design.col[dropped]], rcond=None)[0][1:]
    w = G[0, 0]
    sd = np.sqrt(np.clip(np.diag(G)[cols] / w - (G[0, cols] / w) ** 2, 0, None))
    return rest[int(np.argmax(np.abs(beta * sd)))]


def protocol_shares(G: np.ndarray, design: Design, kept: list[str], min_delta_r2: float
                    ) -> tuple[list[str], float, dict[str, float]]:
    """(selected features, R² of the selected model, Shapley share per kind) of the
    paper's steps 3–4 on the screened features ``kept``."""
    target = design.target
    full = r2_from_gram(G, design.cols(kept), target) if kept else 0.0
    selected = []
    for n in kept:
        rest = design.cols([m for m in kept if m != n])
        if full - (r2_from_gram(G, rest, target) if rest else 0.0) > min_delta_r2:
            selected.append(n)
    groups = {kind: design.cols(design.of_kind(kind, selected)) for kind in KINDS}
    groups = {k: v for k, v in groups.items() if v}
    r2 = r2_from_gram(G, design.cols(selected), target) if selected else 0.0
    phi = shapley(groups, lambda c: r2_from_gram(G, c, target)) if groups else {}
    shares = {kind: (phi.get(kind, 0.0) / r2 if r2 > 0 else float("nan")) for kind in KINDS}
    return selected, r2, shares


def _sets(design: Design) -> dict[str, list[int]]:
    base = design.baseline
    static, execution = design.basis["static"], design.basis["execution"]
    return {"reference": [], "static": static, "execution": execution, "baseline": base,
            "baseline+static": base + static, "baseline+execution": base + execution,
            "baseline+both": base + static + execution}


def heldout_r2(G_train: np.ndarray, G_test: np.ndarray, cols: list[int], target: int) -> float:
    """Out-of-sample R² on the test rows of the least-squares fit on the training
    rows (both given as Gram matrices of ``[1, ..., y]``): 1 − SSE/SST, with SST
    around the *training* mean, so predicting that mean scores about 0."""
    S = [0, *cols]
    beta = np.linalg.lstsq(G_train[np.ix_(S, S)], G_train[S, target], rcond=None)[0]
    sse = G_test[target, target] - 2 * beta @ G_test[S, target] + beta @ G_test[np.ix_(S, S)] @ beta
    mean = G_train[0, target] / G_train[0, 0]
    sst = G_test[target, target] - 2 * mean * G_test[0, target] + mean**2 * G_test[0, 0]
    return float(1.0 - sse / sst) if sst > 0 else float("nan")


def partition_scores(Z: np.ndarray, design: Design, instance: np.ndarray, n_splits: int, repeats: int, seed: int
                     ) -> tuple[dict[str, np.ndarray], float]:
    """Held-out R² of the verdict's nested sets on ``repeats`` × ``n_splits``-fold
    splits by instance (each repeat a fresh random assignment of instances to
    folds): set name -> one value per split, and the mean test fraction."""
    _, inverse = np.unique(instance, return_inverse=True)
    n_inst = int(inverse.max()) + 1
    rng = np.random.default_rng([seed, 0xCF])
    G_all = gram(Z)
    sets = _sets(design)
    out: dict[str, list[float]] = {name: [] for name in sets}
    fractions = []
    for _ in range(repeats):
        fold_of = rng.permutation(n_inst) % n_splits
        row_fold = fold_of[inverse]
        for f in range(n_splits):
            test = row_fold == f
            if not test.any() or test.all():
                continue
            G_test = gram(Z[test])
            G_train = G_all - G_test
            fractions.append(float(test.mean()))
            for name, cols in sets.items():
                out[name].append(heldout_r2(G_train, G_test, cols, design.target))
    return {k: np.asarray(v) for k, v in out.items()}, float(np.mean(fractions)) if fractions else 0.2


# ---------------------------------------------------------------------------------------
# One fit: R², ΔR², standardized coefficients, Shapley shares (the point estimate's report)
# ---------------------------------------------------------------------------------------


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
    full = r2_from_gram(G, feature_cols + extra_cols, target) if feature_cols + extra_cols else 0.0
    delta = {}
    for j, name in enumerate(names):
        rest = [c for c in feature_cols if c != j + 1] + extra_cols
        delta[name] = full - (r2_from_gram(G, rest, target) if rest else 0.0)
    delta_kind = {}
    groups: dict[str, list[int]] = {}
    for kind in KINDS:
        cols = [j + 1 for j, n in enumerate(names) if kinds[n] == kind]
        groups[kind] = cols
        rest = [c for c in feature_cols if c not in cols] + extra_cols
        delta_kind[kind] = full - (r2_from_gram(G, rest, target) if rest else 0.0) if cols else 0.0
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


def _ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def _varies_within(values: np.ndarray, groups: np.ndarray) -> bool:
    order = np.argsort(groups, kind="stable")
    g, v = groups[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    lo = np.minimum.reduceat(v, starts)
    hi = np.maximum.reduceat(v, starts)
    return bool(np.any(hi > lo))


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------


def attribute(table: TokenTable, *, token_set: str = "auto", correct_only: bool = True,
              target: str = "expected_depth", corr_threshold: float = 0.8, vif_threshold: float = 5.0,
              min_delta_r2: float = 0.005, min_sufficient_share: float = 0.2, max_negligible_share: float = 0.1,
              max_claim_share: float = 0.5, min_unique_share: float = 0.1, min_r2: float = 0.01,
              min_coverage: float = 0.5, features: list[str] | None = None, n_boot: int = 200,
              baseline: str | tuple[str, ...] = "token,position", size_in_baseline: bool = False,
              cv_folds: int = 5, cv_repeats: int = 4, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Run the attribution on ``table``; returns (JSON-able result, notes).

    ``size_in_baseline`` adds the size one-hot to the baseline (the selection
    null control, whose depths are permuted within size, uses it).
    """
    if target not in ("expected_depth", "exit_depth"):
        raise AniraError(f"target must be expected_depth or exit_depth, got {target!r}")
    parts = parse_baseline(baseline)
    sel = select_features(table, token_set=token_set, correct_only=correct_only, min_coverage=min_coverage,
                          names=features)
    notes = list(sel.notes)
    rows = sel.rows
    y = table[target][rows].astype(np.float64)
    groups_ = table.groups(rows)
    n_inst = int(np.unique(groups_).size)
    if rows.size < len(sel.names) + 3 or n_inst < max(3, cv_folds):
        raise AniraError(f"too few tokens to fit ({rows.size} tokens of {n_inst} instances for {len(sel.names)} features)")
    if np.ptp(y) == 0:
        raise AniraError(f"the target {target} is constant ({y[0]:g}) on the analysed tokens: no compute variation to attribute")
    base = baseline_design(table, rows, sel.token_set, parts, size=size_in_baseline)
    X = table.matrix(sel.names, rows)
    Xz, yz = zscore(X), zscore(y[:, None])[:, 0]
    basis, owner = feature_basis(X, sel.names)
    design = Design(base.n_columns, owner, sel.names, sel.kinds)
    Z = np.column_stack([np.ones(len(yz)), base.matrix, basis, Xz, yz])
    G0 = gram(Z)

    # the point estimate: the paper's protocol in full detail
    names, corr_dropped, vif_dropped = screen(G0, design, corr_threshold, vif_threshold)
    idx = [sel.names.index(n) for n in names]
    full = fit_report(Xz[:, idx], yz, names, sel.kinds)
    selected = [f["name"] for f in full["features"] if f["delta_r2"] > min_delta_r2]
    for f in full["features"]:
        f["kept"] = f["name"] in selected
    if not selected:
        notes.append(f"no feature adds more than {min_delta_r2:.1%} of R²: the selected model is empty")
    sel_idx = [sel.names.index(n) for n in selected]
    selected_fit = fit_report(Xz[:, sel_idx], yz, selected, sel.kinds)
    controlled = _controlled(table, rows, Xz, yz, sel.names, selected, sel.kinds, notes)
    share = selected_fit["share"]
    share_static = share.get("static", 0.0 if selected else float("nan"))
    share_execution = share.get("execution", 0.0 if selected else float("nan"))

    # the verdict: held-out R² of the nested sets (grouped cross-validation, repeated)
    scores, test_fraction = partition_scores(Z, design, groups_, cv_folds, cv_repeats, seed)
    kinds_present = [k for k in KINDS if design.of_kind(k)]
    if min(len(v) for v in scores.values()) >= 2:
        verdict = decide(SetScores(draws=scores, test_fraction=test_fraction), metric="held-out R²",
                         kinds_present=kinds_present, min_effect=min_r2, min_sufficient_share=min_sufficient_share,
                         max_negligible_share=max_negligible_share, min_unique_share=min_unique_share,
                         max_claim_share=max_claim_share).to_dict()
    else:
        verdict = {"label": "undetermined", "reason": "too few instances for the cross-validation", "metric": "held-out R²"}

    # the paper's protocol on every bootstrap replicate: screening, selection, shares
    boot_r2, boot_static, boot_exec = [], [], []
    kept_count = dict.fromkeys(sel.names, 0)
    selected_count = dict.fromkeys(sel.names, 0)
    screened_out = dict.fromkeys(KINDS, 0)
    candidate_kinds = {sel.kinds[n] for n in sel.names}
    if n_boot > 0:
        for G in replicate_grams(Z, groups_, n_boot, seed):
            kept_b, _, _ = screen(G, design, corr_threshold, vif_threshold)
            chosen, r2_b, shares_b = protocol_shares(G, design, kept_b, min_delta_r2)
            boot_r2.append(r2_b)
            boot_static.append(shares_b["static"])
            boot_exec.append(shares_b["execution"])
            for n in kept_b:
                kept_count[n] += 1
            for n in chosen:
                selected_count[n] += 1
            for kind in candidate_kinds:
                if not design.of_kind(kind, kept_b):
                    screened_out[kind] += 1
    boot: dict[str, Any] = {}
    if n_boot > 0:
        diff = np.asarray(boot_exec) - np.asarray(boot_static)
        boot = {"n_boot": n_boot, "r2_ci": _ci(np.asarray(boot_r2)), "share_static_ci": _ci(np.asarray(boot_static)),
                "share_execution_ci": _ci(np.asarray(boot_exec)), "diff_ci": _ci(diff),
                "screened_in_share": {n: kept_count[n] / n_boot for n in sel.names},
                "selected_share": {n: selected_count[n] / n_boot for n in sel.names},
                "kind_screened_out_share": {k: screened_out[k] / n_boot for k in sorted(candidate_kinds)}}
    flags = _screening_flags(design, names, corr_dropped, vif_dropped, boot, candidate_kinds)
    result = {
        "token_set": sel.token_set,
        "correct_only": correct_only,
        "target": target,
        "n_tokens": int(rows.size),
        "n_instances": n_inst,
        "candidates": sel.names,
        "baseline": base.describe(),
        "partition": {"heldout_r2": {k: float(np.nanmean(v)) if len(v) else None for k, v in scores.items()},
                      "heldout_r2_folds": {k: v.tolist() for k, v in scores.items()},
                      "splits": f"{cv_repeats} × {cv_folds}-fold by instance"},
        "verdict": verdict,
        "reading": verdict["label"],
        "dropped_correlated": corr_dropped,
        "dropped_vif": vif_dropped,
        "vif": vif_from_gram(G0, design, names),
        "full": full,
        "selected_features": selected,
        "selected": selected_fit,
        "controlled": controlled,
        "share_static": share_static,
        "share_execution": share_execution,
        "bootstrap": boot,
        "flags": flags,
        "thresholds": {"corr": corr_threshold, "vif": vif_threshold, "min_delta_r2": min_delta_r2,
                       "min_sufficient_share": min_sufficient_share, "max_negligible_share": max_negligible_share,
                       "min_unique_share": min_unique_share, "max_claim_share": max_claim_share, "min_r2": min_r2},
    }
    return result, notes


def _controlled(table: TokenTable, rows: np.ndarray, Xz: np.ndarray, yz: np.ndarray, names: list[str],
                selected: list[str], kinds: dict[str, str], notes: list[str]) -> dict[str, Any] | None:
    """The selected features plus the size one-hot (features constant within sizes absorbed)."""
    difficulty = table["difficulty"][rows]
    levels = np.unique(difficulty)
    if levels.size <= 1:
        notes.append(f"one size only ({levels[0]}): no size-controlled refit")
        return None
    onehot = (difficulty[:, None] == levels[None, 1:]).astype(np.float64)
    within = [n for n in selected if _varies_within(table.feature(n, rows), difficulty)]
    idx = [names.index(n) for n in within]
    controlled = fit_report(Xz[:, idx], yz, within, kinds, extra=onehot)
    controlled["size_levels"] = levels.tolist()
    controlled["absorbed_by_size"] = [n for n in selected if n not in within]
    return controlled


def _screening_flags(design: Design, kept: list[str], corr_dropped: list[dict], vif_dropped: list[dict],
                     boot: dict[str, Any], candidate_kinds: set[str]) -> list[str]:
    """One line per kind whose protocol share is 0 because screening removed all of it."""
    flags = []
    out_share = boot.get("kind_screened_out_share", {})
    for kind in sorted(candidate_kinds):
        if design.of_kind(kind, kept):
            if out_share.get(kind, 0) > 0:
                flags.append(f"screening removed every {kind} feature in {out_share[kind]:.0%} of the bootstrap "
                             f"replicates: the {kind} share interval includes those forced zeros")
            continue
        why = [f"{d['dropped']} (|r| {abs(d['r']):.2f} with {d['kept']}, which replaced it)"
               for d in corr_dropped if design.kinds[d["dropped"]] == kind]
        why += [f"{d['dropped']} (VIF {d['vif']:.1f}; replaced by {d['replaced_by']})"
                for d in vif_dropped if design.kinds[d["dropped"]] == kind]
        other = "execution" if kind == "static" else "static"
        flags.append(f"share_{kind} = 0 because screening removed every {kind} feature, not because the data "
                     f"show none: {'; '.join(why)}; the {other} share of 1 is forced too"
                     + (f" (in {out_share.get(kind, 0):.0%} of the bootstrap replicates)" if out_share else ""))
    return flags


class AttributionSuite:
    """Commonality verdict and the paper's regression of expected depth (module doc)."""

    name = "attribution"
    description = "paper's regression of expected depth on features: ΔR² per feature and kind, size-controlled refit"
    options = {
        **VERDICT_OPTIONS,
        "target": Option("expected_depth", "what is explained", choices=("expected_depth", "exit_depth")),
        "corr_threshold": Option(0.8, "paper's screen: drop one of a pair with |r| above this", minimum=0.0, maximum=1.0),
        "vif_threshold": Option(5.0, "paper's screen: drop features until every VIF is below this", minimum=1.0),
        "min_delta_r2": Option(0.005, "paper's selection: keep features with ΔR² above this", minimum=0.0),
        "min_r2": Option(0.01, "the verdict's smallest held-out R² gain that counts", minimum=0.0),
        "cv_folds": Option(5, "the verdict's folds (by instance)", minimum=2),
        "cv_repeats": Option(4, "repeats of the folds, each a new random assignment", minimum=1),
        "n_boot": Option(200, "bootstrap replicates (by instance)", minimum=0),
    }

    def requires(self, context: SuiteContext) -> Requirements:
        opts = read_options(self.name, self.options, context.options)
        return Requirements(min_instances=3, null_control=opts["correct_only"] is not False,
                            null_permutations=opts["null_permutations"])

    def run(self, table: TokenTable, context: SuiteContext) -> SuiteResult:
        opts = read_options(self.name, self.options, context.options)

        def analyse(t: TokenTable, correct_only: bool, size_in_baseline: bool, full: bool
                    ) -> tuple[dict[str, Any], list[str]]:
            return attribute(
                t, token_set=opts["token_set"], correct_only=correct_only, target=opts["target"],
                corr_threshold=opts["corr_threshold"], vif_threshold=opts["vif_threshold"],
                min_delta_r2=opts["min_delta_r2"], min_sufficient_share=opts["min_sufficient_share"],
                max_negligible_share=opts["max_negligible_share"], min_unique_share=opts["min_unique_share"],
                max_claim_share=opts["max_claim_share"], min_r2=opts["min_r2"],
                min_coverage=opts["min_coverage"], features=opts["features"],
                n_boot=opts["n_boot"] if full else 0,  # the protocol's bootstrap only for the headline
                baseline=opts["baseline"], size_in_baseline=size_in_baseline, cv_folds=opts["cv_folds"],
                cv_repeats=opts["cv_repeats"], seed=context.seed)

        result, notes = with_selection_check(analyse, table, opts["correct_only"], opts["null_permutations"])
        from anira.probes.figures import attribution_figure

        ctrl = result["controlled"]
        part = result["partition"]["heldout_r2"]
        headline = {
            "tokens": f"{result['token_set']} ({result['n_tokens']})",
            "R²": result["selected"]["r2"],
            "R² | size": ctrl["r2"] if ctrl else None,
            "share static": result["share_static"],
            "share execution": result["share_execution"],
            "R² baseline (held out)": part["baseline"],
            "R² baseline+both (held out)": part["baseline+both"],
            "reading": result["reading"],
            "instances": result["selection"]["headline"],
            "flags": len(result["flags"]),
        }
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes,
                           figures={"delta_r2": attribution_figure(result)})
