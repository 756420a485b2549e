"""Options and entry points of the probes (issue 16, point 5; issue 17, --policy):
bad options fail before any work with one line, the ``*`` wildcard means the same
in Python and on the command line, planted rules reach the CLI and the causal
suite, training-free policies go onto checkpoints, and policies can read the
input (tokens and the task's per-token features)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anira
from anira.checkpoint import checkpoint_config, write_checkpoint
from anira.cli import main
from anira.errors import AniraError
from anira.halting import HaltingPolicy
from anira.hookspecs import hookimpl
from anira.probes.causal import intervention_batches, run_outcome
from anira.probes.depth_rules import compile_rule
from anira.probes.options import parse_cli_options, resolve_options
from anira.probes.run import probe_model, probe_table
from anira.probes.suites import resolve_suites
from anira.probes.table import TokenTable


@pytest.fixture(scope="module")
def brevo_ckpt(tmp_path_factory):
    """A tiny fixed-depth BREVO checkpoint (N 3-5)."""
    torch.set_num_threads(1)
    task = anira.default_registry().task("brevo")()
    cfg = anira.preset_config("test", vocab_size=task.vocab_size, max_len=48, max_iters=4)
    model = anira.build_model(cfg, "fixed", seed=0)
    config = checkpoint_config(step=1, model_config=cfg, policy="fixed", policy_options={}, task="brevo",
                               task_options={"train": [3, 5], "test_id": [3, 5], "test_ood": [6, 7]}, train={})
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "brevo-fixed", config, model)


@pytest.fixture
def no_collection(monkeypatch):
    """Any collection is a test failure: errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("collection started before the bad input was rejected")

    monkeypatch.setattr("anira.probes.run.collect", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--option", "decision.n_split=3"], "unknown option decision.n_split; decision options:"),
    (["--option", "decision.n_splits=abc"], "option decision.n_splits: cannot read 'abc' as an integer"),
    (["--option", "decision.n_splits=1"], "option decision.n_splits: 1 is below the minimum 2"),
    (["--option", "attribution.target=depth"], "is not one of expected_depth, exit_depth"),
    (["--option", "*.correct_only=maybe"], "cannot read 'maybe' as auto, true or false"),
    (["--option", "*.no_such_key=1"], "option *.no_such_key: no suite being run has an option"),
    (["--option", "attribution.features=hub,nope"], "task 'brevo' has no feature 'nope'"),
    (["--option", "causal.iterations=0,x", "--suite", "causal"], "cannot read '0,x'"),
    (["--option", "causal.iterations=9", "--suite", "causal"], "iterations: 9 is outside -1..3"),
    (["--depth-rule", "1 + nope"], "depth rule: unknown name 'nope'"),
    (["--depth-rule", "1 + in_degree +"], "not an expression"),
    (["--depth-rule", 'tok("zz")'], "no such token"),
    (["--depth-rule", "__import__('os')"], "unknown function '__import__'"),
    (["--set", "policy.threshold=1"], "--set policy.* needs --policy NAME"),
    (["--policy", "exit-kl", "--set", "policy.nope=1"], "unknown option policy.nope for policy 'exit-kl'"),
    (["--policy", "exit-kl", "--set", "policy.threshold=abc"], "--set policy.threshold: expected a number"),
    (["--policy", "anira-o"], "has parameters of its own"),
    (["--policy", "exit-kl", "--set", "train.steps=1"], "takes only policy.* options"),
])
def test_bad_options_fail_before_any_work(brevo_ckpt, capsys, no_collection, argv, message):
    assert main(["probe", str(brevo_ckpt), "--suite", "attribution,decision", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("anira: error: ")


def test_wildcard_means_the_same_in_python_and_on_the_command_line():
    suites = resolve_suites(["attribution", "decision"], anira.default_registry())
    cli = resolve_options(suites, parse_cli_options(["*.correct_only=false", "decision.n_splits=3"]))
    api = resolve_options(suites, {"*": {"correct_only": False}, "decision": {"n_splits": 3}})
    assert cli == api
    assert api["attribution"]["correct_only"] is False and api["decision"]["correct_only"] is False
    # an explicit suite.key wins over *.key, in either order of giving them
    both = resolve_options(suites, {"decision": {"correct_only": "true"}, "*": {"correct_only": "false"}})
    assert both["decision"]["correct_only"] is True and both["attribution"]["correct_only"] is False
    with pytest.raises(AniraError, match="unknown option decision.n_split"):
        resolve_options(suites, {"decision": {"n_split": 3}})


def test_wildcard_reaches_the_suites_through_the_python_api():
    rng = np.random.default_rng(0)
    n_inst, per = 60, 6
    instance = np.repeat(np.arange(n_inst), per)
    correct = np.repeat(rng.random(n_inst) < 0.7, per)
    feats = {"s": rng.integers(0, 4, n_inst * per).astype(float), "e": rng.integers(0, 4, n_inst * per).astype(float)}
    table = TokenTable.from_arrays(instance=instance, exit_depth=(1 + feats["s"]).astype(int), max_iters=6,
                                   features=feats, kinds={"s": "static", "e": "execution"}, correct=correct)
    result = probe_table(table, suites="attribution,decision", options={"*": {"correct_only": "false"},
                                                                        "attribution": {"n_boot": 10}})
    for name in ("attribution", "decision"):
        data = result.suite(name).data
        assert data["selection"]["mode"] == "false" and data["correct_only"] is False, name
    # the default filters solved instances, and says that no null control was collected
    default = probe_table(table, suites="attribution", options={"attribution": {"n_boot": 10}})
    assert any("no null control" in f for f in default.flags)


def test_depth_rule_reaches_the_cli_and_the_causal_suite_honours_it(brevo_ckpt, capsys):
    rule = "fill(1 + in_degree, 2)"
    argv = ["probe", str(brevo_ckpt), "--n", "24", "--suite", "causal", "--depth-rule", rule, "--json",
            "--option", "causal.n_instances=8", "--option", "causal.n_random=2", "--option", "causal.features=hub"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["timing"] == "planted" and r["collection"]["depth_rule"] == rule
    causal = r["suites"]["causal"]
    assert causal["status"] == "ok", causal["reason"]
    assert causal["data"]["depths"] == "planted"
    assert any("planted halting rule" in note for note in causal["notes"])
    # every intervention pass runs the rule's depths (not the policy's D)
    model, task = anira.load(brevo_ckpt)
    depth_fn = compile_rule(rule, task, model.cfg.max_iters)
    batches, examples, _ = intervention_batches(task, model, 8, 0, 8, depth_fn=depth_fn)
    clean = run_outcome(model, batches, 0)
    expected = np.concatenate([b.exit_depths.numpy().ravel() for b in batches])
    assert np.array_equal(clean.exit_depth, expected) and len(np.unique(expected)) > 1


def test_training_free_policy_on_a_checkpoint_from_the_cli(brevo_ckpt, capsys):
    argv = ["probe", str(brevo_ckpt), "--n", "10", "--suite", "attribution", "--policy", "exit-kl",
            "--set", "policy.threshold=1e-3", "--option", "attribution.n_boot=5", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["policy"] == "exit-kl" and r["timing"] == "training-free"
    assert r["label"] == "brevo-fixed+exit-kl"


class ByFeature(HaltingPolicy):
    """Test policy: exit depth 1 + in_degree, read from the task's per-token features
    (ctx.features), 1 where undefined; the input token ids must be there too."""

    name = "by-feature"
    timing = "early"

    def begin(self, h0, ctx, emit):
        assert ctx.tokens is not None and ctx.tokens.shape == h0.shape[:2]
        value = torch.nan_to_num(ctx.features["in_degree"].to(h0.device), nan=0.0)
        return {"depth": (1 + value).clamp(1, self.max_iters).long()}

    def planned_exit_depths(self, state, ctx, h0):
        return state["depth"]

    def step(self, state, h, t, ctx, emit):
        return state, (state["depth"] > t + 1).to(h.dtype)

    def finish(self, state, ctx, like):
        return F.one_hot(state["depth"] - 1, self.max_iters).float()


class _Plugin:
    @hookimpl
    def register_halting_policies(self, register):
        register(ByFeature)


def test_a_policy_that_reads_task_features_is_probed_as_static():
    registry = anira.build_registry(load_entry_points=False, extra_plugins=(_Plugin(),))
    task = registry.task("brevo")()
    cfg = anira.preset_config("test", vocab_size=task.vocab_size, max_len=160, max_iters=6)
    model = anira.build_model(cfg, "by-feature", registry=registry, seed=0)
    result = probe_model(model, task, registry=registry, suites="attribution,decision", n=120, batch_size=40,
                         options={"*": {"correct_only": "false"}, "attribution": {"n_boot": 20}})
    assert result.timing == "early"
    rows = result.suite("attribution").data
    assert rows["verdict"]["label"] == "static", rows["verdict"]
    assert result.verdict == "static"
