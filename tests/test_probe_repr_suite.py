"""The representation and causal suites end to end: a tiny model, a collected table."""

import json

import numpy as np
import pytest

from anira import build_model, preset_config
from anira.probes.collect import collect
from anira.probes.suites import SuiteContext, json_safe, run_suite
from anira.registry import build_registry
from anira.task import DifficultyRanges

D = 4



@pytest.fixture(scope="module")
def setup():
    registry = build_registry(load_entry_points=False)
    task = registry.task("brevo")(ranges=DifficultyRanges(train=(3, 5), test_id=(3, 5), test_ood=(6, 7)))
    model = build_model(preset_config("test", vocab_size=task.vocab_size, max_iters=D), "anira-o", seed=0).eval()
    rep, cau = registry.suite("representation"), registry.suite("causal")
    ctx = SuiteContext(max_iters=D, timing="online", model=model, task=task,
                       options={"n_splits": 3, "iterations": "all"})
    sites = list(dict.fromkeys([*rep.requires(ctx).hidden_sites, *cau.requires(ctx).hidden_sites]))
    table = collect(model, task, n=30, hidden_sites=sites, batch_size=16)
    return registry, task, model, table


def test_suites_are_registered_builtins(setup):
    registry, *_ = setup
    assert {"representation", "causal"} <= set(registry.names("suite"))


def test_representation_suite_runs_on_a_collected_table(setup):
    registry, task, model, table = setup
    ctx = SuiteContext(max_iters=D, timing="online", model=model, task=task,
                       options={"n_splits": "3", "iterations": "h0,0,3"})
    result = run_suite(registry.suite("representation"), table, ctx)
    assert result.status == "ok", result.reason
    data = result.data
    assert data["labels"] == ["h0", "t0", "t3"]
    assert data["sites"]["t3"] == "loop.3.hook_resid_post"
    assert {f["name"] for f in data["features"]} == {s.name for s in task.features}
    point = next(p for f in data["features"] for p in f["curve"] if "score" in p)
    assert point["n_folds"] == 3 and point["n_tokens"] > 0
    assert set(result.figures) == {"curves"}
    json.dumps(result.to_dict())  # JSON-able
    assert "max selectivity execution" in result.headline


def test_representation_suite_reports_missing_hidden_states(setup):
    registry, task, model, table = setup
    ctx = SuiteContext(max_iters=D + 2, timing="online", model=model, task=task)  # asks for loop.5
    result = run_suite(registry.suite("representation"), table, ctx)
    assert result.status == "skipped" and "hidden states" in result.reason


def test_causal_suite_runs_with_random_controls(setup):
    registry, task, model, table = setup
    ctx = SuiteContext(max_iters=D, timing="online", model=model, task=task,
                       options={"features": "dfs_depth,hub", "n_random": "3", "n_instances": "16"})
    result = run_suite(registry.suite("causal"), table, ctx)
    assert result.status == "ok", result.reason
    checks = result.data["checks"]
    assert [c["feature"] for c in checks] == ["dfs_depth", "hub"]
    assert {c["kind"] for c in checks} == {"execution", "static"}
    for c in checks:
        assert len(c["control"]["exit_depth_abs_change"]) == 3
        assert c["n_target_tokens"] > 0 and c["rank"] == 1
        assert 0 < c["tests"]["exit_depth_abs_change"]["p"] <= 1
    json.dumps(json_safe(result.to_dict()))
    assert set(result.figures) == {"effects"}


def test_causal_suite_needs_the_model(setup):
    registry, task, model, table = setup
    result = run_suite(registry.suite("causal"), table, SuiteContext(max_iters=D, task=task))
    assert result.status == "skipped" and "model" in result.reason


def test_causal_suite_unknown_feature_is_a_clear_skip(setup):
    registry, task, model, table = setup
    ctx = SuiteContext(max_iters=D, model=model, task=task, options={"features": "nope"})
    result = run_suite(registry.suite("causal"), table, ctx)
    assert result.status == "skipped" and "nope" in result.reason


def test_causal_suite_auto_picks_one_feature_per_kind(setup):
    registry, task, model, table = setup
    ctx = SuiteContext(max_iters=D, model=model, task=task, options={"n_random": "2", "n_instances": "8"})
    result = run_suite(registry.suite("causal"), table, ctx)
    assert result.status == "ok", result.reason
    kinds = [c["kind"] for c in result.data["checks"]]
    assert sorted(kinds) == ["execution", "static"]
    picked = result.data["selection"]["loop.0.hook_resid_post"]
    assert [c["feature"] for c in result.data["checks"]] == picked["picked"]
    # the pick is the most decodable feature of its kind
    r2 = picked["ridge_r2"]
    for c in result.data["checks"]:
        same = [v for n, v in r2.items() if v is not None and task.feature_spec(n).kind == c["kind"]]
        assert r2[c["feature"]] == max(same)
