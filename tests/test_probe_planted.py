"""Ground truth for the probe suites: planted answers must come back.

Per-token tables where the exit depth is a known function of a static
feature, of an execution feature, or of neither; the verdicts must be
static / execution / none, and shuffled labels must carry no signal.
"""

from __future__ import annotations

import numpy as np
import pytest

from anira.errors import AniraError
from anira.probes.attribution import attribute, r2_from_gram, gram, shapley
from anira.probes.decision import decision_probes
from anira.probes.table import TokenTable
from anira.probes.verdict import SetScores, corrected_interval, decide

D = 6


def planted(rule: str, *, n_inst: int = 150, per: int = 8, seed: int = 0, noise: float = 0.1) -> TokenTable:
    """Two static (s1, s2) and two execution (e1, e2) features, independent;
    the depth follows s1 ("static"), e1 ("execution"), both, or nothing ("none")."""
    rng = np.random.default_rng(seed)
    n = n_inst * per
    feats = {name: rng.integers(0, 4, n).astype(float) for name in ("s1", "s2", "e1", "e2")}
    kinds = {"s1": "static", "s2": "static", "e1": "execution", "e2": "execution"}
    if rule == "static":
        depth = 1 + feats["s1"]
    elif rule == "execution":
        depth = 1 + feats["e1"]
    elif rule == "both":
        depth = 1 + np.floor((feats["s1"] + feats["e1"]) / 2 + 0.5)
    else:
        depth = rng.integers(1, D + 1, n).astype(float)
    flip = rng.random(n) < noise  # some tokens ignore the rule
    depth = np.where(flip, rng.integers(1, D + 1, n), depth).astype(int)
    instance = np.repeat(np.arange(n_inst), per)
    return TokenTable.from_arrays(instance=instance, exit_depth=depth, max_iters=D, features=feats, kinds=kinds,
                                  difficulty=instance % 3 + 3)


@pytest.mark.parametrize("rule", ["static", "execution", "none"])
@pytest.mark.parametrize("mode", ["early", "online"])
def test_decision_verdict_recovers_the_planted_rule(rule, mode):
    result, _ = decision_probes(planted(rule), mode=mode)
    verdict = result["verdict"]
    assert verdict["label"] == rule, verdict
    if rule != "none":  # the planted kind's unique part is clearly positive, the other's bounded near 0
        other = "static" if rule == "execution" else "execution"
        assert verdict[f"{rule}_unique"]["low"] > 0 and verdict[f"{other}_unique"]["high"] < 0.1 * verdict["beyond"]["mean"]
    # shuffled labels: chance level whatever the rule
    assert abs(result["baselines"]["shuffled"]["auroc"]["mean"] - 0.5) < 0.05
    assert result["baselines"]["majority"]["auroc"]["mean"] == pytest.approx(0.5)


def test_decision_mixed_when_both_kinds_drive_the_decision():
    result, _ = decision_probes(planted("both"), mode="early")
    assert result["verdict"]["label"] == "mixed", result["verdict"]
    both = result["sets"]["both"]["auroc"]["mean"]
    assert both > result["sets"]["static"]["auroc"]["mean"] and both > result["sets"]["execution"]["auroc"]["mean"]


def test_shuffled_depths_give_verdict_none_and_no_attribution():
    table = planted("static")
    rng = np.random.default_rng(5)
    shuffled = TokenTable.from_arrays(
        instance=table["instance"], exit_depth=rng.permutation(table["exit_depth"]), max_iters=D,
        features=table.features(), kinds={n: s.kind for n, s in table.specs.items()})
    assert decision_probes(shuffled, mode="early")[0]["verdict"]["label"] == "none"
    result, _ = attribute(shuffled, n_boot=50)
    assert result["reading"] == "none"
    assert result["selected"]["r2"] < 0.02


@pytest.mark.parametrize("rule", ["static", "execution", "none"])
def test_attribution_reading_and_shares(rule):
    result, _ = attribute(planted(rule), n_boot=60)
    assert result["reading"] == rule
    if rule == "none":
        return
    planted_feature = "s1" if rule == "static" else "e1"
    assert result["selected_features"] == [planted_feature]  # every other ΔR² is below 0.5%
    assert result[f"share_{rule}"] == pytest.approx(1.0)
    assert result["selected"]["r2"] > 0.5
    assert result["selected"]["features"][0]["coef"] > 0.7  # standardized: close to the correlation


@pytest.mark.parametrize("seed", [0, 1])
def test_attribution_reads_mixed_when_both_kinds_contribute_equally(seed):
    result, _ = attribute(planted("both", seed=seed), n_boot=60, seed=seed)
    assert result["reading"] == "mixed"
    assert set(result["selected_features"]) == {"s1", "e1"}


def test_attribution_prunes_collinear_and_controls_for_size():
    rng = np.random.default_rng(1)
    n_inst, per = 120, 10
    n = n_inst * per
    instance = np.repeat(np.arange(n_inst), per)
    size = np.repeat(rng.integers(3, 8, n_inst), per).astype(float)
    hub = rng.integers(0, 4, n).astype(float)
    twin = hub + rng.normal(0, 0.05, n)  # |r| > 0.8 with hub, less related to the target
    dfs = rng.integers(0, 5, n).astype(float)
    expected = 1 + 0.3 * size + 0.5 * dfs + rng.normal(0, 0.3, n)
    q = np.zeros((n, D), np.float32)
    # a two-point q whose mean is the planted expected depth
    lo = np.clip(np.floor(expected), 1, D - 1).astype(int)
    frac = np.clip(expected - lo, 0, 1)
    q[np.arange(n), lo - 1] = 1 - frac
    q[np.arange(n), lo] = frac
    table = TokenTable.from_arrays(
        instance=instance, exit_depth=lo, max_iters=D, q=q, difficulty=size,
        features={"N": size, "hub": hub, "twin": twin, "dfs": dfs},
        kinds={"N": "static", "hub": "static", "twin": "static", "dfs": "execution"})
    result, _ = attribute(table, n_boot=0)
    assert [d["dropped"] for d in result["dropped_correlated"]] != []
    assert {d["dropped"] for d in result["dropped_correlated"]} <= {"hub", "twin"}
    assert set(result["selected_features"]) == {"N", "dfs"}
    ctrl = result["controlled"]
    assert ctrl["absorbed_by_size"] == ["N"]  # constant within each size: the one-hot takes it
    assert [f["name"] for f in ctrl["features"]] == ["dfs"]
    assert ctrl["r2"] >= result["selected"]["r2"] - 1e-9


def test_attribution_refuses_constant_target_and_skips_constant_features():
    table = planted("static")
    fixed = TokenTable.from_arrays(instance=table["instance"], exit_depth=np.full(len(table), D), max_iters=D,
                                   features=table.features(), kinds={n: s.kind for n, s in table.specs.items()})
    with pytest.raises(AniraError, match="constant"):
        attribute(fixed)
    feats = dict(table.features())
    feats["flat"] = np.ones(len(table))
    kinds = {n: s.kind for n, s in table.specs.items()} | {"flat": "static"}
    t2 = TokenTable.from_arrays(instance=table["instance"], exit_depth=table["exit_depth"], max_iters=D,
                                features=feats, kinds=kinds)
    _, notes = attribute(t2, n_boot=0)
    assert any("'flat' skipped: constant" in note for note in notes)


def test_gram_r2_matches_sklearn_and_shapley_sums_to_r2():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = X @ [1.0, -0.5, 0.2] + rng.normal(size=300)
    G = gram(np.column_stack([np.ones(300), X, y]))
    assert r2_from_gram(G, [1, 2, 3], 4) == pytest.approx(LinearRegression().fit(X, y).score(X, y))
    phi = shapley({"a": [1], "b": [2, 3]}, lambda cols: r2_from_gram(G, cols, 4))
    assert sum(phi.values()) == pytest.approx(r2_from_gram(G, [1, 2, 3], 4))


def _cv_scores(**sets):
    """SetScores from per-fold AUROCs (reference 0.5) for the nested sets."""
    draws = {"reference": np.full(5, 0.5)}
    draws.update({k.replace("_", "+"): np.asarray(v, dtype=float) for k, v in sets.items()})
    return SetScores(draws=draws, test_fraction=0.2)


def test_corrected_interval_is_wider_than_naive_and_decide_rules():
    diffs = [0.10, 0.12, 0.08, 0.11, 0.09]
    iv = corrected_interval(diffs, test_fraction=0.2)
    naive_se = np.std(diffs, ddof=1) / np.sqrt(5)
    assert iv.se > naive_se and iv.low < 0.1 < iv.high
    jitter = np.array([0.0, 0.01, -0.01, 0.005, -0.005])
    base = 0.5 + jitter
    # execution carries it, static adds nothing once execution is known
    ex = _cv_scores(baseline=base, baseline_static=base + 0.1, baseline_execution=base + 0.4,
                    baseline_both=base + 0.4 + jitter / 10)
    assert decide(ex, metric="AUROC").label == "execution"
    # nothing beyond the reference
    assert decide(_cv_scores(baseline=base, baseline_static=base, baseline_execution=base, baseline_both=base),
                  metric="AUROC").label == "none"
    # the baseline explains it and the features add nothing
    assert decide(_cv_scores(baseline=base + 0.3, baseline_static=base + 0.3, baseline_execution=base + 0.3,
                             baseline_both=base + 0.3), metric="AUROC").label == "baseline"
    # each kind alone explains all of it: shared, the kinds cannot be told apart
    shared = _cv_scores(baseline=base, baseline_static=base + 0.3, baseline_execution=base + 0.3,
                        baseline_both=base + 0.3)
    v = decide(shared, metric="AUROC")
    assert v.label == "undetermined" and "shared information dominates" in v.reason
    # both kinds add their own part
    both = _cv_scores(baseline=base, baseline_static=base + 0.2, baseline_execution=base + 0.2,
                      baseline_both=base + 0.35)
    assert decide(both, metric="AUROC").label == "mixed"
    no_exec = _cv_scores(baseline=base, baseline_static=base + 0.3, baseline_both=base + 0.3)
    assert decide(no_exec, metric="AUROC", kinds_present=["static"]).label == "undetermined"


def test_too_few_instances_for_the_folds_is_a_clear_error():
    with pytest.raises(AniraError, match="fewer than the 5 folds"):
        decision_probes(planted("static", n_inst=4), mode="early")


def test_macro_auroc_when_the_test_fold_holds_a_class_the_binary_model_never_saw():
    from anira.probes.decision import macro_auroc

    # trained on depths {1, 2}; the test fold holds {1, 3}: macro one-vs-rest over the
    # present classes, depth 3 (never seen) scored 0 -> AUROC 0.5, depth 1 ranked perfectly
    y = np.array([1, 3, 1, 3])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert macro_auroc(y, proba, np.array([1, 2])) == pytest.approx(0.75)
    assert macro_auroc(np.array([1, 2, 1, 2]), proba, np.array([1, 2])) == pytest.approx(1.0)
