"""Collection into the per-token table, the table API, and a model whose halting
rule is fixed by construction (depth override) run end to end through the suites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import anira
from anira.errors import AniraError
from anira.probes.collect import collect, spread
from anira.probes.run import probe_model, probe_table
from anira.probes.table import TokenTable
from anira.task import collate

SITES = ["prelude.0.hook_resid_post", "loop.1.hook_resid_post"]


@pytest.fixture(scope="module")
def brevo():
    torch.set_num_threads(1)
    task = anira.default_registry().task("brevo")()
    cfg = anira.preset_config("test", vocab_size=task.vocab_size, max_len=160, max_iters=4)
    model = anira.build_model(cfg, "anira-o", seed=0).eval()
    return model, task


@pytest.fixture(scope="module")
def table(brevo):
    model, task = brevo
    return collect(model, task, n=24, batch_size=8, difficulties=[4, 8, 12], hidden_sites=SITES)


def test_table_rows_match_a_direct_forward_pass(brevo, table):
    model, task = brevo
    assert table.n_instances == 24 and table.meta["policy"] == "anira-o" and table.meta["timing"] == "online"
    # instances 0..7 are the first batch: difficulty 4 from rng [seed, 4]. Compare with the
    # same batch (an untrained decider sits near its thresholds, so float noise of another
    # batch shape could flip a depth)
    rng = np.random.default_rng([0, 4])
    examples = [task.sample(4, rng, split="test") for _ in range(8)]
    example = examples[0]
    with torch.no_grad():
        out, cache = model.run_with_cache(torch.as_tensor(collate(examples).tokens), names_filter=SITES)
    rows = np.flatnonzero(table["instance"] == 0)
    keep = example.answer_mask | example.question_mask
    assert table["position"][rows].tolist() == np.flatnonzero(keep).tolist()
    pos = table["position"][rows]
    assert np.array_equal(table["exit_depth"][rows], out.exit_depth[0].numpy()[pos])
    np.testing.assert_allclose(table.q[rows], out.q[0].numpy()[pos], atol=1e-6)
    np.testing.assert_allclose(table["expected_depth"][rows], out.expected_depth[0].numpy()[pos], atol=1e-5)
    assert np.array_equal(table.running[rows], out.running[:, 0].numpy().T[pos])
    np.testing.assert_allclose(table.hidden("hook_resid_post", 1, rows), cache["loop.1.hook_resid_post"][0].numpy()[pos],
                               atol=1e-5)
    np.testing.assert_allclose(table.hidden("prelude.0.hook_resid_post", rows=rows),
                               cache["prelude.0.hook_resid_post"][0].numpy()[pos], atol=1e-5)
    hub = example.features["hub"][pos]
    np.testing.assert_array_equal(table.feature("hub", rows), hub)
    assert table["is_answer"][rows].tolist() == example.answer_mask[pos].tolist()


def test_table_api(table):
    answer = table.rows("answer")
    assert table["is_answer"][answer].all()
    assert table.rows("answer", defined=["hub"]).size < answer.size  # the <eos> step has no node
    assert table.feature_names(kind="execution") == ["dfs_depth", "frontier", "enabled", "distance"]
    assert table.matrix(["hub", "N"], answer).shape == (answer.size, 2)
    assert np.array_equal(table.groups(answer), table["instance"][answer])
    h = table.hazard()
    np.testing.assert_allclose(h[:, 0], table.q[:, 0] / table.q.sum(1), rtol=1e-5)
    sub = table.select(answer)
    np.testing.assert_array_equal(sub.hidden("hook_resid_post", 1), table.hidden("hook_resid_post", 1, answer))
    with pytest.raises(AniraError, match="no hidden states"):
        table.hidden("hook_resid_post", 3)
    with pytest.raises(AniraError, match="token set"):
        table.rows("everything")


def test_streaming_to_disk_gives_the_same_table(brevo, table, tmp_path):
    model, task = brevo
    streamed = collect(model, task, n=24, batch_size=5, difficulties=[4, 8, 12], hidden_sites=SITES,
                       memory_limit_bytes=1)
    assert streamed.meta["stored_on_disk"]
    stored = collect(model, task, n=24, batch_size=8, difficulties=[4, 8, 12], hidden_sites=SITES,
                     store_dir=tmp_path / "t")
    for other in (streamed, stored, TokenTable.load(tmp_path / "t")):
        for name in ("instance", "position", "exit_depth", "correct"):
            np.testing.assert_array_equal(other[name], table[name])
        np.testing.assert_allclose(other.hidden("loop.1.hook_resid_post"), table.hidden("loop.1.hook_resid_post"),
                                   atol=1e-5)
        np.testing.assert_array_equal(other.feature("dfs_depth"), table.feature("dfs_depth"))
    saved = table.save(tmp_path / "copy")
    assert TokenTable.load(saved).q.shape == table.q.shape


def test_bad_collection_input(brevo):
    model, task = brevo
    with pytest.raises(AniraError, match="unknown hook name"):
        collect(model, task, n=2, hidden_sites=["loop.9.hook_nothing"])
    with pytest.raises(AniraError, match="positive integer"):
        collect(model, task, n=0)
    skipped = collect(model, task, n=4, difficulties=[4, 30])  # N = 30 does not fit max_len 160
    assert [s["difficulty"] for s in skipped.meta["skipped"]] == [30]
    assert sum(spread(7, [1, 2, 3])) and sum(spread(7, [1, 2, 3]).values()) == 7


def test_halting_fixed_by_construction_end_to_end(brevo):
    """depth = f(feature) through model(tokens, exit_depths=...): the suites must
    name the kind of the feature the rule reads."""
    model, task = brevo
    D = model.cfg.max_iters

    def by(feature):
        return lambda e: np.clip(1 + np.nan_to_num(e.features[feature]).astype(int), 1, D)

    opts = {"attribution": {"correct_only": False, "n_boot": 40}, "decision": {"correct_only": False}}
    run = dict(suites="attribution,decision", n=60, batch_size=30, options=opts)
    static = probe_model(model, task, depth_fn=by("hub"), **run)
    assert static.timing == "planted" and static.collection["depth_override"]
    table_depths = static.suite("decision").data
    assert static.verdict == "static", table_depths["verdict"]
    execution = probe_model(model, task, depth_fn=by("dfs_depth"), **run)
    assert execution.verdict == "execution", execution.suite("decision").data["verdict"]
    assert execution.suite("attribution").data["reading"] == "execution"


def test_probe_table_reports_unusable_suites_without_crashing(table):
    result = probe_table(table, suites="attribution,decision",
                         options={"attribution": {"features": "no_such_feature", "correct_only": "false"},
                                  "decision": {"n_splits": "50"}})
    att, dec = result.suite("attribution"), result.suite("decision")
    assert att.status == "skipped" and "no feature 'no_such_feature'" in att.reason
    assert dec.status == "skipped" and "at least 50 instances" in dec.reason
    with pytest.raises(AniraError, match="unknown probe suite 'nope'"):
        probe_table(table, suites="attribution,nope")
