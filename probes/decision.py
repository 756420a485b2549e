"""Decision-probe suite: can a linear classifier predict the halting decision
from static features, from execution features, or from both?

Two probes, picked by the policy's timing (option ``mode``: auto | early | online):

* **early** (early, fixed, planted and unknown timings): one row per analysed
  token; the label is the chosen exit depth (multiclass).
* **online** (online and training-free timings): one row per (token, depth d)
  with the token still running at d and d < D (at D the exit is forced); the
  label is "exits at d". Pooled over d: the one-hot of d is a covariate in
  every feature set, and the reference probe uses it alone, so the feature
  sets are judged on what they add beyond "how far the loop has got".

Every probe is the stock ``make_pipeline(StandardScaler(),
LogisticRegression(class_weight="balanced", solver="newton-cholesky"))`` (balanced so a rare exit is
not ignored), scored by GroupKFold by instance (never by token): balanced
accuracy and AUROC (binary, or macro one-vs-rest over the classes present in
the test fold), mean ± std over folds. Baselines on the same folds: the
majority class (DummyClassifier), shuffled labels (the both-features probe
fit on labels permuted across rows: no signal by construction), and for the
online probe the iteration-only reference. The verdict is
:func:`anira.probes.verdict.decide` on the per-fold AUROCs.

Very large tables are subsampled to ``max_rows`` probe rows by whole
instances (a note says so).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anira.errors import AniraError
from anira.probes.featureset import parse_names, select_features
from anira.probes.suites import Requirements, SuiteContext, SuiteResult
from anira.probes.table import TokenTable
from anira.probes.verdict import decide

ONLINE_TIMINGS = ("online", "training-free")


def make_probe(seed: int = 0) -> Any:
    # newton-cholesky: many rows, few features -> a handful of exact Newton steps
    # (several times faster than lbfgs here, same optimum)
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", solver="newton-cholesky",
                                                              max_iter=500, random_state=seed))


def macro_auroc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Binary AUROC, or the macro one-vs-rest mean over classes with both positives
    and negatives in ``y``; a class the model never saw scores probability 0."""
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    cols = {c: i for i, c in enumerate(classes)}
    if present.size == 2 and len(classes) == 2 and np.array_equal(present, np.sort(classes)):
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    aucs = []
    for c in present:
        score = proba[:, cols[c]] if c in cols else np.zeros(len(y))
        aucs.append(roc_auc_score(y == c, score))
    return float(np.mean(aucs))


def cross_validate(make: Any, X: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, Any]:
    """Per-fold balanced accuracy and AUROC, plus out-of-fold P(y = positive class)
    for binary labels (used for per-depth breakdowns)."""
    bacc, auc = [], []
    oof = np.full(len(y), np.nan)
    for train, test in folds:
        if np.unique(y[train]).size < 2:
            bacc.append(np.nan)
            auc.append(np.nan)
            continue
        model = make().fit(X[train], y[train])
        proba = model.predict_proba(X[test])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # predicted classes absent from the fold
            bacc.append(float(balanced_accuracy_score(y[test], model.classes_[proba.argmax(1)])))
        auc.append(macro_auroc(y[test], proba, model.classes_))
        if len(model.classes_) == 2:
            oof[test] = proba[:, 1]
    return {"balanced_accuracy": bacc, "auroc": auc, "oof": oof}


def summarize(cv: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for metric in ("balanced_accuracy", "auroc"):
        values = np.asarray(cv[metric], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[metric] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "folds": values.tolist(),
        }
    return out


def _cap_instances(groups: np.ndarray, weight: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Instance ids to keep so that the probe rows (``weight`` per table row) fit ``max_rows``."""
    ids, inverse = np.unique(groups, return_inverse=True)
    per_instance = np.bincount(inverse, weights=weight)
    order = np.random.default_rng(seed).permutation(ids.size)
    keep = order[np.cumsum(per_instance[order]) <= max_rows]
    return ids[np.sort(keep)]


def decision_probes(table: TokenTable, *, mode: str = "auto", timing: str = "unknown", token_set: str = "auto",
                    correct_only: bool = True, n_splits: int = 5, min_coverage: float = 0.5, features: list[str] | None = None,
                    max_rows: int = 200_000, min_effect: float = 0.02, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Fit and score the decision probes; returns (JSON-able result, notes)."""
    if mode == "auto":
        mode = "online" if timing in ONLINE_TIMINGS else "early"
    if mode not in ("early", "online"):
        raise AniraError(f"mode must be auto, early or online; got {mode!r}")
    if n_splits < 2:
        raise AniraError(f"n_splits must be >= 2, got {n_splits}")
    sel = select_features(table, token_set=token_set, correct_only=correct_only, min_coverage=min_coverage,
                          names=features)
    notes = list(sel.notes)
    rows = sel.rows
    D = table.max_iters
    depth = table["exit_depth"][rows].astype(np.int64)
    base = {"mode": mode, "token_set": sel.token_set, "correct_only": correct_only, "n_splits": n_splits,
            "features": {k: sel.of_kind(k) for k in ("static", "execution")}}
    if np.unique(depth).size < 2:
        reason = f"the halting decision is constant (every analysed token exits at depth {depth[0]}): nothing to predict"
        verdict = {"label": "none", "reason": reason, "metric": "auroc"}
        return {**base, "n_tokens": int(rows.size), "verdict": verdict, "sets": {}, "baselines": {}}, notes

    # probe rows: one per token (early) or per (token, depth still running) (online)
    weight = np.ones(rows.size) if mode == "early" else np.minimum(depth, D - 1).astype(np.float64)
    if weight.sum() > max_rows:
        keep_ids = _cap_instances(table.groups(rows), weight, max_rows, seed)
        keep = np.isin(table.groups(rows), keep_ids)
        notes.append(f"subsampled to {keep_ids.size} instances ({int(weight[keep].sum())} probe rows, max_rows {max_rows})")
        rows, depth, weight = rows[keep], depth[keep], weight[keep]
    groups = table.groups(rows)
    n_inst = int(np.unique(groups).size)
    if n_inst < n_splits:
        raise AniraError(f"{n_inst} instances with analysed tokens, fewer than the {n_splits} folds (raise --n)")
    if mode == "early":
        token_idx = np.arange(rows.size)
        y = depth
        covariate = np.zeros((rows.size, 0))
    else:
        token_idx = np.repeat(np.arange(rows.size), weight.astype(np.int64))
        d = np.concatenate([np.arange(1, int(w) + 1) for w in weight]) if rows.size else np.zeros(0, int)
        y = (depth[token_idx] == d).astype(np.int64)
        covariate = (d[:, None] == np.arange(2, D)[None, :]).astype(np.float64)  # one-hot of d, d=1 dropped
    g = groups[token_idx]
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(y)), y, g))
    test_fraction = float(np.mean([len(te) / len(y) for _, te in folds]))

    sets: dict[str, dict[str, Any]] = {}
    cvs: dict[str, dict[str, Any]] = {}
    feature_sets = {"static": sel.of_kind("static"), "execution": sel.of_kind("execution")}
    feature_sets["both"] = sel.names
    for name, names in feature_sets.items():
        if not names:
            notes.append(f"no {name} features on the {sel.token_set} tokens: that probe is not fitted")
            continue
        X = np.column_stack([table.matrix(names, rows)[token_idx], covariate])
        cvs[name] = cross_validate(lambda: make_probe(seed), X, y, folds)
        sets[name] = {"features": names, **summarize(cvs[name])}

    baselines: dict[str, Any] = {}
    majority = cross_validate(lambda: DummyClassifier(strategy="most_frequent"), np.zeros((len(y), 1)), y, folds)
    baselines["majority"] = summarize(majority)
    X_both = np.column_stack([table.matrix(sel.names, rows)[token_idx], covariate])
    shuffled_y = np.random.default_rng(seed + 1).permutation(y)
    baselines["shuffled"] = summarize(cross_validate(lambda: make_probe(seed), X_both, shuffled_y, folds))
    if mode == "online":
        ref = cross_validate(lambda: make_probe(seed), covariate, y, folds) if covariate.shape[1] else majority
        baselines["iteration_only"] = summarize(ref)
        reference = ref["auroc"]
    else:
        reference = [0.5] * len(folds)  # the majority class ranks nothing: AUROC 0.5 by definition
    verdict = decide({k: v["auroc"] for k, v in cvs.items()}, reference, test_fraction=test_fraction,
                     min_effect=min_effect)

    per_depth: dict[str, Any] = {}
    if mode == "online":  # AUROC of the pooled probes within each depth, from out-of-fold predictions
        for name, cv in cvs.items():
            per_depth[name] = {}
            for dd in range(1, D):
                m = (d == dd) & np.isfinite(cv["oof"])
                ok = m.any() and np.unique(y[m]).size == 2
                per_depth[name][str(dd)] = float(roc_auc_score(y[m], cv["oof"][m])) if ok else None
    class_counts = {str(int(c)): int((y == c).sum()) for c in np.unique(y)}
    result = {
        **base,
        "n_tokens": int(rows.size),
        "n_instances": n_inst,
        "n_rows": int(len(y)),
        "class_counts": class_counts,
        "sets": sets,
        "baselines": baselines,
        "per_depth_auroc": per_depth,
        "verdict": verdict.to_dict(),
    }
    return result, notes


class DecisionSuite:
    """Linear probes of the halting decision from static / execution / both feature sets."""

    name = "decision"
    description = "logistic probes of the halting decision (GroupKFold by instance) and the static/execution verdict"

    def requires(self, context: SuiteContext) -> Requirements:
        return Requirements(min_instances=int(context.option("n_splits", 5)))

    def run(self, table: TokenTable, context: SuiteContext) -> SuiteResult:
        result, notes = decision_probes(
            table,
            mode=context.option("mode", "auto"),
            timing=context.timing,
            token_set=context.option("token_set", "auto"),
            correct_only=context.option("correct_only", True),
            n_splits=context.option("n_splits", 5),
            min_coverage=context.option("min_coverage", 0.5),
            features=parse_names(context.option("features", None)),
            max_rows=context.option("max_rows", 200_000),
            min_effect=context.option("min_effect", 0.02),
            seed=context.seed,
        )
        from anira.probes.figures import decision_figure

        v = result["verdict"]
        margin = v.get("margin") or {}
        sets = result["sets"]
        headline = {
            "mode": result["mode"],
            "AUROC static": sets.get("static", {}).get("auroc", {}).get("mean"),
            "AUROC execution": sets.get("execution", {}).get("auroc", {}).get("mean"),
            "AUROC both": sets.get("both", {}).get("auroc", {}).get("mean"),
            "margin (exec − static)": margin.get("mean"),
            "margin CI": [margin.get("low"), margin.get("high")] if margin else None,
            "verdict": v["label"],
        }
        figures = {"scores": decision_figure(result)} if sets else {}
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes, figures=figures)
