"""The alignment suite (anira.probes.alignment) on planted ground truth.

Each table is built so that the answer is known: expected depth a monotone
function of one feature plus noise, a collinear feature the rule never reads,
an independent feature, a constant feature, dependence that lives only
between instances, and a relation that holds in half the instances. The
reference ρ of a process is its Spearman ρ on a sample 50-100 times larger.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import anira
from anira.errors import AniraError
from anira.evaluate import spearman
from anira.probes.alignment import AlignmentSuite, align, weighted_spearman
from anira.probes.options import resolve_options
from anira.probes.run import probe_table
from anira.probes.suites import resolve_suites
from anira.probes.table import TokenTable

D = 6


def q_for(expected: np.ndarray) -> np.ndarray:
    """q over 1..D with mean exactly ``expected`` (mass on the two nearest depths)."""
    e = np.clip(expected, 1.0, float(D))
    lo = np.minimum(np.floor(e).astype(int), D - 1)
    frac = e - lo
    q = np.zeros((e.size, D))
    q[np.arange(e.size), lo - 1] = 1.0 - frac
    q[np.arange(e.size), lo] = frac
    return q


def make_table(instance: np.ndarray, expected: np.ndarray, features: dict[str, np.ndarray]) -> TokenTable:
    q = q_for(expected)
    return TokenTable.from_arrays(instance=instance, exit_depth=np.argmax(q, axis=1) + 1, max_iters=D,
                                  features=features, kinds={n: "execution" for n in features}, q=q)


def depth_of(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A monotone rule: expected depth rises with x (saturating), with noise; always inside (1, D)."""
    return 1.0 + (D - 1.0) / (1.0 + np.exp(-((x - 4.5) / 2.0 + noise)))


def planted(n_inst: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n = n_inst * per
    instance = np.repeat(np.arange(n_inst), per)
    driver = rng.integers(0, 10, size=n).astype(float)  # integer-valued, many ties (as parser counts)
    expected = depth_of(driver, rng.normal(0.0, 0.6, size=n))
    features = {
        "driver": driver,
        "collinear": driver + rng.normal(0.0, 0.3, size=n),  # never read by the rule
        "independent": rng.normal(size=n),
        "constant": np.full(n, 3.0),
    }
    return instance, expected, features


def by_name(result: dict) -> dict[str, dict]:
    return {f["name"]: f for f in result["features"]}


def test_weighted_ranks_equal_the_repeated_sample():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        x = rng.integers(0, 5, size=n).astype(float)
        y = x + rng.integers(0, 3, size=n)
        w = rng.integers(0, 4, size=n)
        expected = spearman(np.repeat(x, w), np.repeat(y, w))
        got = weighted_spearman(x, y, w)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_planted_monotone_collinear_independent_constant():
    instance, expected, features = planted(200, 20, seed=0)
    result, notes = align(make_table(instance, expected, features), n_boot=400, seed=0)
    f = by_name(result)
    assert result["n_tokens"] == 4000 and result["n_instances"] == 200 and result["token_set"] == "answer"
    spread = result["target_spread"]
    assert spread["mean"] == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert spread["min"] < spread["q10"] < spread["median"] < spread["q90"] < spread["max"]
    assert sum(spread["exit_depth_share"].values()) == pytest.approx(1.0)

    # the driver: clearly positive, a tight interval (its coverage: the next test)
    d = f["driver"]
    assert d["ci_low"] > 0.9 and d["ci_high"] - d["ci_low"] < 0.02
    assert d["n_tokens"] == 4000 and d["n_instances"] == 200 and d["n_boot_defined"] == 400

    # a rank correlation is not attribution: the collinear feature the rule never reads correlates as well
    c = f["collinear"]
    assert c["ci_low"] > 0.5 and abs(c["rho"] - d["rho"]) < 0.05

    # an independent feature: the interval covers 0
    i = f["independent"]
    assert i["ci_low"] < 0.0 < i["ci_high"] and abs(i["rho"]) < 0.06

    # a constant feature: undefined, not 0
    k = f["constant"]
    assert k["rho"] is None and k["ci_low"] is None and "constant" in k["undefined"]
    assert any("'constant'" in note for note in notes)
    for name in ("driver", "collinear", "independent"):
        assert f[name]["undefined"] is None


def test_interval_covers_the_process_rho():
    """The 95 % interval covers the planted process's ρ (from a sample 100x larger) in
    at least 17 of 20 independent tables (19 expected; a biased ρ or an interval too
    narrow misses far more often)."""
    _, big_e, big_f = planted(20_000, 20, seed=1)
    truth = spearman(big_e, big_f["driver"])
    assert 0.9 < truth < 0.96
    covered = 0
    for seed in range(10, 30):
        instance, expected, features = planted(100, 20, seed=seed)
        table = make_table(instance, expected, {"driver": features["driver"]})
        d = by_name(align(table, n_boot=300, seed=seed)[0])["driver"]
        covered += d["ci_low"] <= truth <= d["ci_high"]
    assert covered >= 17, covered


def test_interval_is_over_instances_not_tokens():
    """Depth and feature share only an instance-level component, drawn independently:
    the true ρ is 0, but tokens of an instance are strongly dependent, so a
    token-level bootstrap would exclude 0 almost always. Over instances, the
    interval must cover 0 and be as wide as 40 independent pairs make it."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n_inst, per = 40, 50
        instance = np.repeat(np.arange(n_inst), per)
        a, b = rng.normal(size=n_inst), rng.normal(size=n_inst)
        x = a[instance] + 0.2 * rng.normal(size=instance.size)
        e = 3.5 + 0.6 * b[instance] + 0.1 * rng.normal(size=instance.size)
        result, _ = align(make_table(instance, e, {"x": x}), n_boot=400, seed=seed)
        f = by_name(result)["x"]
        assert f["ci_low"] < 0.0 < f["ci_high"], (seed, f)
        assert f["ci_high"] - f["ci_low"] > 0.3
        # within instances there is nothing: the quartiles straddle 0
        w = f["within_instance"]
        assert w["n_instances"] == n_inst and w["q25"] < 0.0 < w["q75"]


def mixture(n_inst: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    instance = np.repeat(np.arange(n_inst), per)
    x = rng.integers(0, 10, size=instance.size).astype(float)
    follows = (np.arange(n_inst) % 2 == 0)[instance]  # the rule holds in half the instances
    e = np.where(follows, depth_of(x, rng.normal(0.0, 0.5, size=x.size)), rng.uniform(1.0, 6.0, size=x.size))
    return instance, e, x


def test_relation_in_half_the_instances():
    instance, e, x = mixture(200, 20, seed=0)
    f = by_name(align(make_table(instance, e, {"x": x}), n_boot=400, seed=0)[0])["x"]
    _, big_e, big_x = mixture(20_000, 20, seed=1)
    truth = spearman(big_e, big_x)
    assert f["ci_low"] <= truth <= f["ci_high"]
    assert f["ci_low"] > 0.2  # the pooled ρ is clearly positive...
    follows = (np.repeat(np.arange(20_000), 20) % 2 == 0)
    full = spearman(big_e[follows], big_x[follows])
    assert f["ci_high"] < full - 0.1  # ...and clearly below the ρ where the rule holds
    # the within-instance quartiles show the split: a quarter near 0, a quarter near the full strength
    w = f["within_instance"]
    assert w["q25"] < 0.25 and w["q75"] > 0.7


def test_undefined_tokens_count_per_feature():
    instance, expected, features = planted(60, 10, seed=3)
    partial = features["driver"].copy()
    partial[::4] = np.nan  # undefined on a quarter of the tokens: counted out for this feature only
    sparse = np.full(partial.size, np.nan)
    sparse[:100] = features["independent"][:100]  # defined on 1/6 of the tokens
    result, notes = align(make_table(instance, expected, {"partial": partial, "sparse": sparse,
                                                          "driver": features["driver"]}), n_boot=50)
    f = by_name(result)
    assert f["partial"]["n_tokens"] == 450 and f["driver"]["n_tokens"] == 600
    table = make_table(instance, expected, {"partial": partial})
    assert f["partial"]["rho"] == pytest.approx(spearman(table["expected_depth"], partial), abs=1e-12)
    assert f["sparse"]["rho"] is None and "min_coverage" in f["sparse"]["undefined"]
    result, _ = align(make_table(instance, expected, {"sparse": sparse}), n_boot=50, min_coverage=0.1)
    assert by_name(result)["sparse"]["n_tokens"] == 100 and by_name(result)["sparse"]["n_instances"] == 10


def test_constant_depth_is_skipped_not_zero():
    instance, _, features = planted(20, 10, seed=4)
    table = make_table(instance, np.full(instance.size, 6.0), features)
    with pytest.raises(AniraError, match="constant"):
        align(table)
    result = probe_table(table, suites="alignment")
    suite = result.suite("alignment")
    assert suite.status == "skipped" and "undefined" in suite.reason


def test_registered_options_and_json():
    suites = resolve_suites(["alignment"], anira.default_registry())
    with pytest.raises(AniraError, match="alignment.n_boot"):
        resolve_options(suites, {"alignment": {"n_boot": "abc"}})
    with pytest.raises(AniraError, match="unknown option alignment.n_split"):
        resolve_options(suites, {"alignment": {"n_split": "3"}})
    instance, expected, features = planted(30, 10, seed=5)
    table = make_table(instance, expected, features)
    result = probe_table(table, suites="alignment", options={"alignment": {"n_boot": "30", "features": "driver,constant"}})
    suite = result.suite("alignment")
    assert suite.status == "ok"
    data = result.to_dict()["suites"]["alignment"]["data"]
    assert [f["name"] for f in data["features"]] == ["driver", "constant"]
    assert data["features"][1]["rho"] is None and data["n_boot"] == 30
    assert suite.headline["ρ driver"] == pytest.approx(spearman(table["expected_depth"], features["driver"]), abs=1e-12)
    assert "undefined" in suite.html and "not attribution" in suite.html
    with pytest.raises(AniraError, match="no feature 'nope'"):
        align(table, features=["nope"])
    assert isinstance(AlignmentSuite().options["n_boot"].default, int)
