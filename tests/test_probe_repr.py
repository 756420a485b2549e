"""Representation probes on synthetic hidden states with planted answers."""

import numpy as np
import pytest

from anira.probes.representation import (
    H0,
    ProbeTarget,
    RepresentationConfig,
    control_labels,
    plot_representation,
    representation_curves,
)




N_INST, PER_INST, D, N_TYPES = 60, 10, 16, 12


def planted_states(seed=0):
    """Hidden states at h0 and iterations 0..2 for N_INST * PER_INST tokens.

    - h0 encodes only token identity (a fixed random embedding per type);
    - ``flag`` (execution, binary, independent of type) is written at t = 0 and 1;
    - ``amount`` (execution, continuous) is written at t = 1 only;
    - t = 2 is noise. ``arity`` (static) is a function of the token type.
    """
    rng = np.random.default_rng(seed)
    n = N_INST * PER_INST
    groups = np.repeat(np.arange(N_INST), PER_INST)
    token_type = rng.integers(1, N_TYPES + 1, size=n)
    arity = (token_type % 3 == 0).astype(float)
    flag = rng.integers(0, 2, size=n).astype(float)
    amount = rng.normal(size=n)
    embed = rng.normal(size=(N_TYPES + 1, D)) * 3.0
    noise = lambda: rng.normal(size=(n, D))  # noqa: E731
    u, v = rng.normal(size=D), rng.normal(size=D)
    states = {
        H0: embed[token_type] + noise(),
        0: noise() + 4.0 * np.outer(2 * flag - 1, u),
        1: noise() + 4.0 * np.outer(2 * flag - 1, u) + 3.0 * np.outer(amount, v),
        2: noise(),
    }
    running = {t: np.ones(n, dtype=bool) for t in (0, 1, 2)}
    targets = [
        ProbeTarget("arity", "static", True, arity),
        ProbeTarget("flag", "execution", True, flag),
        ProbeTarget("amount", "execution", False, amount),
    ]
    return states, running, targets, token_type, groups


@pytest.fixture(scope="module")
def result():
    states, running, targets, token_type, groups = planted_states()
    return representation_curves(states, running, targets, token_type, groups, RepresentationConfig(n_splits=4))


def _curve(result, name):
    feature = next(f for f in result["features"] if f["name"] == name)
    return feature, {p["t"]: p for p in feature["curve"]}


def test_probe_curve_recovers_where_a_feature_is_planted(result):
    feature, pts = _curve(result, "flag")
    assert feature["probe"] == "logistic" and feature["metric"] == "accuracy"
    for t in (0, 1):
        assert pts[t]["score"] > 0.95 and pts[t]["selectivity"] > 0.3
    for t in (H0, 2):
        assert pts[t]["score"] < 0.65 and pts[t]["selectivity"] < 0.15
    assert feature["peak"]["t"] in (0, 1)


def test_continuous_feature_uses_ridge_r2(result):
    feature, pts = _curve(result, "amount")
    assert feature["probe"] == "ridge" and feature["metric"] == "r2"
    assert pts[1]["score"] > 0.8 and pts[1]["selectivity"] > 0.7
    for t in (H0, 0, 2):
        assert pts[t]["score"] < 0.1 and pts[t]["selectivity"] < 0.2


def test_memorising_token_identity_is_not_selective(result):
    # h0 encodes the token type, and arity is a function of it: the probe reads
    # arity perfectly, but the control task (random labels per type) just as well
    _, pts = _curve(result, "arity")
    assert pts[H0]["score"] > 0.95
    assert pts[H0]["control"] > 0.9
    assert abs(pts[H0]["selectivity"]) < 0.1


def test_only_running_tokens_are_probed():
    states, running, targets, token_type, groups = planted_states()
    running = dict(running)
    running[0] = np.arange(groups.size) % 2 == 0
    running[2] = np.zeros(groups.size, dtype=bool)
    out = representation_curves(states, running, targets[1:2], token_type, groups, RepresentationConfig(n_splits=3))
    pts = {p["t"]: p for p in out["features"][0]["curve"]}
    assert pts[0]["n_tokens"] == groups.size // 2
    assert pts[H0]["n_tokens"] == groups.size
    assert "skipped" in pts[2] and pts[2]["n_tokens"] == 0


def test_control_labels_keep_the_marginal_and_are_a_function_of_type():
    rng = np.random.default_rng(3)
    token_type = rng.integers(0, 500, size=20_000)
    y = rng.choice([0.0, 1.0, 2.0], p=[0.6, 0.3, 0.1], size=token_type.size)
    ctrl = control_labels(token_type, y, seed=1)
    for tau in np.unique(token_type)[:50]:
        assert np.unique(ctrl[token_type == tau]).size == 1
    assert set(np.unique(ctrl)) <= {0.0, 1.0, 2.0}
    # types draw from the marginal: per-type label frequencies match it
    per_type = np.array([ctrl[token_type == tau][0] for tau in np.unique(token_type)])
    assert np.allclose([np.mean(per_type == v) for v in (0.0, 1.0, 2.0)], [0.6, 0.3, 0.1], atol=0.07)
    # keyed by type, not by index: shuffling the tokens shuffles the labels with them
    perm = rng.permutation(token_type.size)
    assert np.array_equal(control_labels(token_type[perm], y[perm], seed=1), ctrl[perm])


def test_degenerate_features_are_skipped_with_a_reason():
    states, running, _, token_type, groups = planted_states()
    targets = [
        ProbeTarget("constant", "static", True, np.ones(groups.size)),
        ProbeTarget("undefined", "execution", True, np.full(groups.size, np.nan)),
    ]
    out = representation_curves(states, running, targets, token_type, groups)
    for feature in out["features"]:
        assert all("skipped" in p for p in feature["curve"])
        assert feature["peak"] is None


def test_figure_has_score_and_selectivity_panels(result):
    fig = plot_representation(result, title="planted")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) >= 3


def test_figure_draws_a_point_whose_selectivity_is_undefined(result):
    # a scored point whose control could not be scored (DEPO's probe curves had one) is
    # drawn in the score panel and left out of the selectivity panel, not an error
    import copy
    broken = copy.deepcopy(result)
    point = next(p for f in broken["features"] for p in f["curve"] if p.get("score") is not None)
    point["selectivity"], point["selectivity_std"] = None, None
    fig = plot_representation(broken, title="one undefined selectivity")
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) >= 1


def test_suite_on_a_planted_table_reads_states_running_masks_and_token_types():
    from anira.probes.representation import RepresentationSuite
    from anira.probes.suites import SuiteContext, run_suite
    from anira.probes.table import TokenTable
    from anira.task import FeatureSpec

    states, _, targets, token_type, groups = planted_states()
    n = groups.size
    # depth 2 for even instances, 3 for odd: iteration 2 sees only the odd ones
    depth = np.where(groups % 2 == 0, 2, 3)
    base = TokenTable.from_arrays(instance=groups, exit_depth=depth, max_iters=3,
                                  features={t.name: t.values for t in targets}, kinds={t.name: t.kind for t in targets})
    columns = dict(base.columns, token=token_type.astype(np.int32))
    specs = {t.name: FeatureSpec(t.name, t.kind, "planted", t.discrete, "answer") for t in targets}
    hidden = {"prelude.0.hook_resid_post": states[H0].astype(np.float32)}
    hidden.update({f"loop.{t}.hook_resid_post": states[t].astype(np.float32) for t in (0, 1, 2)})
    table = TokenTable(columns, base.q, base.running, {t.name: t.values for t in targets}, specs,
                       hidden=hidden, meta=base.meta)
    result = run_suite(RepresentationSuite(), table, SuiteContext(max_iters=3, options={"n_splits": 4}))
    assert result.status == "ok", result.reason
    flag = next(f for f in result.data["features"] if f["name"] == "flag")
    pts = {p["label"]: p for p in flag["curve"]}
    assert pts["t2"]["n_tokens"] == n // 2 and pts["t1"]["n_tokens"] == n
    assert pts["t0"]["selectivity"] > 0.3 and pts["h0"]["selectivity"] < 0.15
    arity = next(f for f in result.data["features"] if f["name"] == "arity")
    assert abs(arity["curve"][0]["selectivity"]) < 0.1  # token identity: not selective
    assert result.headline["at (execution)"].split(" @ ")[1] in ("t0", "t1")
