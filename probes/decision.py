"""Decision-probe suite: can a linear classifier predict the halting decision
from static features, from execution features, or from both — beyond what
token identity and position give away?

Two probes, picked by the policy's timing (option ``mode``: auto | early | online):

* **early** (early, fixed, planted and unknown timings): one row per analysed
  token; the label is the chosen exit depth (multiclass).
* **online** (online and training-free timings): one row per (token, depth d)
  with the token still running at d and d < D (at D the exit is forced); the
  label is "exits at d". Pooled over d: the one-hot of d is a covariate in
  every feature set, and the reference probe uses it alone, so the feature
  sets are judged on what they add beyond "how far the loop has got".

Every probe is the stock ``make_pipeline(StandardScaler(),
LogisticRegression())`` (Newton steps for binary labels, L-BFGS for
multinomial ones), scored by GroupKFold by instance (never by token). Feature
sets: each kind on its own and both (through the additive basis of
:func:`anira.probes.featureset.feature_basis`), and the verdict's nested sets
— the token-identity and position baseline, plus static, plus execution, plus
both. Per fold: **held-out deviance explained** (McFadden's 1 − NLL / NLL of
the training class frequencies: the information the set carries about the
decision, additive over nested sets, which is what the verdict's commonality
analysis needs), balanced accuracy (prior-corrected argmax) and AUROC
(binary, or macro one-vs-rest), mean ± std over folds. Baselines on the same
folds: the class frequencies (DummyClassifier), shuffled labels (the plain
both-features probe fit on labels permuted across rows: no signal by
construction), the token/position baseline, and for the online probe the
iteration-only reference. The verdict is :func:`anira.probes.verdict.decide`
on the per-fold deviance explained.

Very large tables are subsampled to ``max_rows`` probe rows by whole
instances (a note says so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from scipy.stats import rankdata
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anira.errors import AniraError
from anira.probes.featureset import baseline_design, feature_basis, parse_baseline, select_features
from anira.probes.options import VERDICT_OPTIONS, Option, read_options
from anira.probes.selection import with_selection_check
from anira.probes.suites import Requirements, SuiteContext, SuiteResult
from anira.probes.table import TokenTable
from anira.probes.verdict import SetScores, decide

ONLINE_TIMINGS = ("online", "training-free")
#: what the verdict compares: held-out deviance explained (additive in information, so
#: the commonality analysis of the nested sets means what it does for R²; AUROC is not)
METRIC = "deviance_explained"


def make_probe(seed: int = 0, n_classes: int = 2) -> Any:
    # the same convex optimum either way; binary (online) probes have many rows and few
    # columns, where a handful of exact Newton steps is fastest, while the multinomial
    # (early) probe's Newton Hessian grows with (columns × classes)², where L-BFGS wins
    # unweighted, so the probabilities are calibrated: the verdict scores held-out
    # log-likelihood; balanced accuracy corrects the decision rule for class priors instead
    solver = "newton-cholesky" if n_classes <= 2 else "lbfgs"
    return make_pipeline(StandardScaler(), LogisticRegression(solver=solver, max_iter=1000, random_state=seed))


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney rank sum (ties count one half);
    the same number as ``sklearn.metrics.roc_auc_score`` without its per-call
    validation, which dominated the suite's time with many folds and classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (``sklearn.metrics.balanced_accuracy_score``)."""
    return float(np.mean([np.mean(predicted[y == c] == c) for c in np.unique(y)]))


def macro_auroc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Binary AUROC, or the macro one-vs-rest mean over classes with both positives
    and negatives in ``y``; a class the model never saw scores probability 0."""
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    cols = {c: i for i, c in enumerate(classes)}
    if present.size == 2 and len(classes) == 2 and np.array_equal(present, np.sort(classes)):
        return auroc(y == classes[1], proba[:, 1])
    aucs = []
    for c in present:
        score = proba[:, cols[c]] if c in cols else np.zeros(len(y))
        aucs.append(auroc(y == c, score))
    return float(np.mean(aucs))


#: probabilities are mixed with this much of the uniform distribution before the log
#: (a class absent from a training fold must not cost an infinite loss)
SMOOTH = 1e-4


def log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, all_classes: np.ndarray) -> float:
    """Mean negative log-likelihood of ``y`` under ``proba`` (columns ``classes``),
    spread over ``all_classes`` and smoothed (:data:`SMOOTH`)."""
    full = np.zeros((len(y), len(all_classes)))
    index = {c: i for i, c in enumerate(all_classes)}
    for j, c in enumerate(classes):
        full[:, index[c]] = proba[:, j]
    full = (1 - SMOOTH) * full + SMOOTH / len(all_classes)
    picked = full[np.arange(len(y)), [index[c] for c in y]]
    return float(-np.mean(np.log(picked)))


def cross_validate(make: Any, X: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, Any]:
    """Per fold: held-out deviance explained (McFadden's 1 − NLL(model) / NLL(training
    class frequencies), what the verdict compares), balanced accuracy (argmax of
    P(c | x) / P(c), the decision rule of a class-balanced classifier) and AUROC; plus
    out-of-fold P(y = positive class) for binary labels (per-depth breakdowns)."""
    bacc, auc, dev = [], [], []
    oof = np.full(len(y), np.nan)
    all_classes = np.unique(y)
    for train, test in folds:
        if np.unique(y[train]).size < 2:
            bacc.append(np.nan)
            auc.append(np.nan)
            dev.append(np.nan)
            continue
        model = make().fit(X[train], y[train])
        proba = model.predict_proba(X[test])
        classes = model.classes_
        prior = np.array([np.mean(y[train] == c) for c in classes])
        bacc.append(balanced_accuracy(y[test], classes[(proba / prior).argmax(1)]))
        auc.append(macro_auroc(y[test], proba, classes))
        null = log_loss(y[test], np.broadcast_to(prior, proba.shape), classes, all_classes)
        dev.append(1.0 - log_loss(y[test], proba, classes, all_classes) / null if null > 0 else np.nan)
        if len(classes) == 2:
            oof[test] = proba[:, 1]
    return {"balanced_accuracy": bacc, "auroc": auc, "deviance_explained": dev, "oof": oof}


def summarize(cv: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for metric in ("deviance_explained", "balanced_accuracy", "auroc"):
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
                    max_rows: int = 200_000, min_effect: float = 0.01, min_sufficient_share: float = 0.2,
                    max_negligible_share: float = 0.1, min_unique_share: float = 0.1, max_claim_share: float = 0.5,
                    baseline: str | tuple[str, ...] = "token,position", size_in_baseline: bool = False,
                    seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Fit and score the decision probes; returns (JSON-able result, notes).

    ``size_in_baseline`` adds the size one-hot to the baseline (the selection
    null control, whose depths are permuted within size, uses it)."""
    if mode == "auto":
        mode = "online" if timing in ONLINE_TIMINGS else "early"
    if mode not in ("early", "online"):
        raise AniraError(f"mode must be auto, early or online; got {mode!r}")
    if n_splits < 2:
        raise AniraError(f"n_splits must be >= 2, got {n_splits}")
    parts = parse_baseline(baseline)
    sel = select_features(table, token_set=token_set, correct_only=correct_only, min_coverage=min_coverage,
                          names=features)
    notes = list(sel.notes)
    rows = sel.rows
    D = table.max_iters
    depth = table["exit_depth"][rows].astype(np.int64)
    common = {"mode": mode, "token_set": sel.token_set, "correct_only": correct_only, "n_splits": n_splits,
            "features": {k: sel.of_kind(k) for k in ("static", "execution")}}
    if np.unique(depth).size < 2:
        reason = f"the halting decision is constant (every analysed token exits at depth {depth[0]}): nothing to predict"
        verdict = {"label": "none", "reason": reason, "metric": "deviance explained"}
        return {**common, "n_tokens": int(rows.size), "verdict": verdict, "sets": {}, "baselines": {}}, notes

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
    n_classes = int(np.unique(y).size)
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(y)), y, g))
    test_fraction = float(np.mean([len(te) / len(y) for _, te in folds]))

    sets: dict[str, dict[str, Any]] = {}
    cvs: dict[str, dict[str, Any]] = {}
    base = baseline_design(table, rows, sel.token_set, parts, size=size_in_baseline)
    B = base.matrix[token_idx]
    static, execution = sel.of_kind("static"), sel.of_kind("execution")
    # without the baseline (what each kind predicts on its own), then the nested sets of the verdict
    # without the baseline (what each kind predicts linearly on its own), then the nested
    # sets of the verdict: the baseline plus each kind's additive basis
    basis, owner = feature_basis(table.matrix(sel.names, rows), sel.names)
    basis = basis[token_idx]
    feature_sets = {"static": (static, False), "execution": (execution, False), "both": (sel.names, False),
                    "baseline+static": (static, True), "baseline+execution": (execution, True),
                    "baseline+both": (sel.names, True)}
    for name, (names, nested) in feature_sets.items():
        if not names:
            notes.append(f"no {name.split('+')[-1]} features on the {sel.token_set} tokens: the {name} probe is not fitted")
            continue
        cols = [j for j, o in enumerate(owner) if o in names]
        X = np.column_stack([basis[:, cols]] + ([B] if nested else []) + [covariate])
        described = names + [f"as {len(cols)} basis columns"
                             + (f", with the baseline ({base.n_columns} indicators)" if nested else "")]
        cvs[name] = cross_validate(lambda: make_probe(seed, n_classes), X, y, folds)
        sets[name] = {"features": described, **summarize(cvs[name])}

    baselines: dict[str, Any] = {}
    majority = cross_validate(lambda: DummyClassifier(strategy="prior"), np.zeros((len(y), 1)), y, folds)
    baselines["majority"] = summarize(majority)
    X_both = np.column_stack([table.matrix(sel.names, rows)[token_idx], covariate])
    shuffled_y = np.random.default_rng(seed + 1).permutation(y)
    baselines["shuffled"] = summarize(cross_validate(lambda: make_probe(seed, n_classes), X_both, shuffled_y, folds))
    if mode == "online":
        ref = cross_validate(lambda: make_probe(seed, n_classes), covariate, y, folds) if covariate.shape[1] else majority
        baselines["iteration_only"] = summarize(ref)
        reference = list(ref[METRIC])
    else:
        reference = list(majority[METRIC])  # the training class frequencies
    if B.shape[1]:
        X_base = np.column_stack([B, covariate])
        base_cv = cross_validate(lambda: make_probe(seed, n_classes), X_base, y, folds)
        baselines["token_position"] = summarize(base_cv)
        base_scores = list(base_cv[METRIC])
    else:
        base_scores = reference
    draws = {"reference": np.asarray(reference, dtype=np.float64), "baseline": np.asarray(base_scores, dtype=np.float64)}
    draws.update({k: np.asarray(cvs[k][METRIC], dtype=np.float64) for k in cvs if k != "both"})
    kinds_present = [k for k in ("static", "execution") if sel.of_kind(k)]
    if "baseline+both" not in draws:
        draws["baseline+both"] = draws[f"baseline+{kinds_present[0]}"]
    for kind in ("static", "execution"):
        draws.setdefault(f"baseline+{kind}", draws["baseline"])
        draws.setdefault(kind, draws["reference"])
    verdict = decide(SetScores(draws=draws, test_fraction=test_fraction), metric="deviance explained",
                     kinds_present=kinds_present, min_effect=min_effect, min_sufficient_share=min_sufficient_share,
                     max_negligible_share=max_negligible_share, min_unique_share=min_unique_share,
                     max_claim_share=max_claim_share).to_dict()
    margin = None
    if "static" in cvs and "execution" in cvs:  # AUROC of each kind on its own (reported, not the verdict)
        from anira.probes.verdict import corrected_interval

        margin = corrected_interval([e - s for e, s in zip(cvs["execution"]["auroc"], cvs["static"]["auroc"])],
                                    test_fraction).to_dict()
    verdict["auroc_margin"] = margin  # execution − static AUROC, each kind alone

    per_depth: dict[str, Any] = {}
    if mode == "online":  # AUROC of the pooled probes within each depth, from out-of-fold predictions
        for name, cv in cvs.items():
            if name not in ("static", "execution", "both", "baseline+both"):
                continue
            per_depth[name] = {}
            for dd in range(1, D):
                m = (d == dd) & np.isfinite(cv["oof"])
                ok = m.any() and np.unique(y[m]).size == 2
                per_depth[name][str(dd)] = auroc(y[m] == 1, cv["oof"][m]) if ok else None
    class_counts = {str(int(c)): int((y == c).sum()) for c in np.unique(y)}
    result = {
        **common,
        "n_tokens": int(rows.size),
        "n_instances": n_inst,
        "n_rows": int(len(y)),
        "class_counts": class_counts,
        "sets": sets,
        "baselines": baselines,
        "per_depth_auroc": per_depth,
        "baseline": base.describe(),
        "verdict": verdict,
    }
    return result, notes


class DecisionSuite:
    """Linear probes of the halting decision from static / execution / both feature sets."""

    name = "decision"
    description = "logistic probes of the halting decision (GroupKFold by instance) and the static/execution verdict"
    options = {
        **VERDICT_OPTIONS,
        "mode": Option("auto", "early (one row per token, label = exit depth), online (one row per token and "
                       "depth, label = exits now) or auto (by the policy's timing)", choices=("auto", "early", "online")),
        "n_splits": Option(5, "GroupKFold folds (by instance)", minimum=2),
        "max_rows": Option(200_000, "subsample probe rows above this, by whole instances", minimum=1),
        "min_effect": Option(0.01, "the verdict's smallest held-out deviance-explained gain that counts",
                             minimum=0.0),
    }

    def requires(self, context: SuiteContext) -> Requirements:
        opts = read_options(self.name, self.options, context.options)
        return Requirements(min_instances=opts["n_splits"], null_control=opts["correct_only"] is not False,
                            null_permutations=opts["null_permutations"])

    def run(self, table: TokenTable, context: SuiteContext) -> SuiteResult:
        opts = read_options(self.name, self.options, context.options)

        def analyse(t: TokenTable, correct_only: bool, size_in_baseline: bool, full: bool
                    ) -> tuple[dict[str, Any], list[str]]:
            return decision_probes(
                t, mode=opts["mode"], timing=context.timing, token_set=opts["token_set"], correct_only=correct_only,
                n_splits=opts["n_splits"], min_coverage=opts["min_coverage"], features=opts["features"],
                max_rows=opts["max_rows"], min_effect=opts["min_effect"], min_sufficient_share=opts["min_sufficient_share"],
                max_negligible_share=opts["max_negligible_share"], min_unique_share=opts["min_unique_share"],
                max_claim_share=opts["max_claim_share"],
                baseline=opts["baseline"], size_in_baseline=size_in_baseline, seed=context.seed)

        result, notes = with_selection_check(analyse, table, opts["correct_only"], opts["null_permutations"])
        from anira.probes.figures import decision_figure

        v = result["verdict"]
        sets = result["sets"]

        def mean(key: str) -> Any:
            return (v.get(key) or {}).get("mean")

        headline = {
            "mode": result["mode"],
            "AUROC static": sets.get("static", {}).get("auroc", {}).get("mean"),
            "AUROC execution": sets.get("execution", {}).get("auroc", {}).get("mean"),
            "AUROC both": sets.get("both", {}).get("auroc", {}).get("mean"),
            "AUROC baseline": result.get("baselines", {}).get("token_position", {}).get("auroc", {}).get("mean"),
            "beyond baseline": mean("beyond"),
            "unique static": mean("static_unique"),
            "unique execution": mean("execution_unique"),
            "shared": mean("shared"),
            "verdict": v["label"],
            "instances": result["selection"]["headline"],
            "flags": len(result.get("flags", [])),
        }
        figures = {"scores": decision_figure(result)} if sets else {}
        return SuiteResult(name=self.name, data=result, headline=headline, notes=notes, figures=figures)
