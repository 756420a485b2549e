"""Invariants every built-in task keeps, the train/test partition, the CLI and the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anira.bench.tasks import bench_tasks
from anira.cli import main
from anira.errors import AniraError
from anira.registry import build_registry
from anira.task import collate, is_eval_instance

TASKS = ["mano", "brevo", "depo", "lano"]


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_entry_points=False)


def small_difficulty(task) -> int:
    lo, hi = task.ranges.train
    return min(hi, lo + 2)


def test_all_builtin_tasks_are_registered(registry):
    assert set(TASKS) <= set(registry.names("task"))
    for name in TASKS:
        row = registry.entries["task"][name]
        assert row.plugin == f"anira.plugins.tasks.{name}"
        cls = registry.task(name)
        assert cls.__doc__ and cls.features and cls.complexity_description
        assert {f.kind for f in cls.features} == {"static", "execution"}


@pytest.mark.parametrize("name", TASKS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_example_invariants(registry, name, seed):
    task = registry.task(name)()
    k = small_difficulty(task)
    e = task.sample(k, np.random.default_rng(seed))
    n = len(e)
    assert n <= task.max_len(k) and e.difficulty == k
    for arr in (e.loss_mask, e.answer_mask, e.question_mask, e.complexity):
        assert arr.shape == (n,)
    assert set(e.features) == {f.name for f in task.features}
    assert e.tokens.dtype == np.int64 and (e.tokens > 0).all() and (e.tokens < task.vocab_size).all()
    assert not e.answer_mask[-1]  # the last token predicts nothing
    assert np.array_equal(e.loss_mask, e.answer_mask) or task.language_modelling
    if not task.language_modelling:
        assert e.answer_mask.sum() == len(e.answer) + 1  # the answer and its <eos>
        targets = [task.tokenizer.vocab[t] for t in e.tokens[1:][e.answer_mask[:-1]]]
        assert targets == [*e.answer, "<eos>"]
    json.dumps(e.instance)  # readable and JSON-able
    where = {"answer": e.answer_mask, "question": e.question_mask, "all": np.ones(n, bool)}
    for spec in task.features:
        values = e.features[spec.name]
        assert values.shape == (n,)
        assert np.isnan(values[~where[spec.where]]).all(), spec.name
        assert (~np.isnan(values)).any(), spec.name
    assert task.score(e, e.tokens[1:])


@pytest.mark.parametrize("name", TASKS)
def test_determinism_and_wrong_answers(registry, name):
    task = registry.task(name)()
    k = small_difficulty(task)
    a = task.sample(k, np.random.default_rng(11))
    b = task.sample(k, np.random.default_rng(11))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.complexity, b.complexity)
    for f in a.features:
        np.testing.assert_array_equal(a.features[f], b.features[f])
    if not task.language_modelling:
        pred = a.tokens[1:].copy()
        i = int(np.flatnonzero(a.answer_mask)[0])
        pred[i] = (pred[i] % (task.vocab_size - 1)) + 1 if pred[i] != 1 else 2
        assert not task.score(a, pred)
        # per token: every answer position right except the corrupted one, nothing else marked
        want = np.zeros(len(a), dtype=bool)
        want[:-1] = a.answer_mask[:-1]
        np.testing.assert_array_equal(task.token_correct(a, a.tokens[1:]), want)
        want[i] = False
        np.testing.assert_array_equal(task.token_correct(a, pred), want)


@pytest.mark.parametrize("name", TASKS)
def test_train_and_test_instances_are_disjoint(registry, name):
    task = registry.task(name)()
    k = task.ranges.train[0]
    rng = np.random.default_rng(0)
    train = {task.question_tokens(task.sample(k, rng, "train")).tobytes() for _ in range(150)}
    test = [task.question_tokens(task.sample(k, rng, "test")) for _ in range(30)]
    assert all(is_eval_instance(q) for q in test)
    assert not train & {q.tobytes() for q in test}


@pytest.mark.parametrize("name", TASKS)
def test_the_split_is_decided_before_building(registry, name, monkeypatch):
    """A draft's question tokens are exactly the built example's, and `sample` builds
    only the instance it returns (a test draw used to build ~10 examples per one kept)."""
    task = registry.task(name)()
    k = task.ranges.train[0]
    rng = np.random.default_rng(3)
    for _ in range(40):
        question, build = task._draft(k, rng)
        np.testing.assert_array_equal(question, task.question_tokens(build()))
    built = []
    original = task.build
    monkeypatch.setattr(task, "build", lambda *a, **kw: built.append(1) or original(*a, **kw))
    for split in ("test", "train"):
        for _ in range(15):
            task.sample(k, rng, split)
        assert len(built) == 15, split
        built.clear()


def test_collate_mixes_tasks_lengths(registry):
    task = registry.task("brevo")()
    rng = np.random.default_rng(0)
    batch = collate([task.sample(n, rng) for n in (3, 10, 30)])
    assert batch.tokens.shape[0] == 3 and batch.difficulty.tolist() == [3, 10, 30]


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_list(capsys):
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert f"{name}:" in out
    assert main(["tasks", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 1
    info = {t["name"]: t for t in data["tasks"]}
    assert info["mano"]["ranges"]["train"] == [3, 16] and info["mano"]["default_max_iters"] == 14
    assert {f["kind"] for f in info["brevo"]["features"]} == {"static", "execution"}


def test_cli_sample_text(capsys):
    assert main(["tasks", "sample", "mano", "--difficulty", "3", "--n", "2", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("example ") == 2 and "d[e]" in out and "token_type[s]" in out
    assert "<bos>" in out and "answer:" in out


def test_cli_sample_json_matches_the_api(capsys, registry):
    assert main(["tasks", "sample", "brevo", "-k", "6", "--n", "3", "--seed", "7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["schema"], data["task"], data["difficulty"], data["seed"], data["split"]) == (
        1, "brevo", 6, 7, "train")
    assert len(data["examples"]) == 3
    task = registry.task("brevo")()
    rng = np.random.default_rng(7)
    first = task.sample(6, rng)
    ex = data["examples"][0]
    assert ex["tokens"] == first.tokens.tolist() and ex["answer"] == first.answer
    assert ex["text"] == task.decode(first.tokens) and ex["instance"] == first.instance
    feats = {f["name"]: f for f in ex["features"]}
    assert feats["dfs_depth"]["kind"] == "execution" and feats["hub"]["kind"] == "static"
    values = [np.nan if v is None else v for v in feats["frontier"]["values"]]
    np.testing.assert_array_equal(values, first.features["frontier"])
    assert len(ex["complexity"]) == len(ex["tokens"]) == len(ex["answer_mask"])


def test_cli_sample_test_split(capsys):
    assert main(["tasks", "sample", "depo", "-k", "2", "--split", "test", "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)["examples"][0]
    q = np.array(ex["tokens"])[np.array(ex["question_mask"])]
    assert is_eval_instance(q)


@pytest.mark.parametrize("argv, message", [
    (["tasks", "sample", "nope"], "unknown task 'nope'"),
    (["tasks", "sample", "mano", "--n", "0"], "--n must be at least 1"),
    (["tasks", "sample", "mano", "--seed", "1.5"], "--seed must be an integer"),
    (["tasks", "sample", "mano", "--seed", "-1"], "--seed must be non-negative"),
    (["tasks", "sample", "mano", "--difficulty", "99"], "outside the supported range"),
    (["tasks", "sample", "mano", "--difficulty", "x"], "--difficulty must be an integer"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_api_errors():
    task = build_registry(load_entry_points=False).task("mano")()
    with pytest.raises(AniraError):
        task.sample(3, np.random.default_rng(0), split="validation")


def test_score_and_decode_reject_malformed_input(registry):
    task = registry.task("mano")()
    e = task.build("+ 3 4".split())
    with pytest.raises(AniraError):
        task.score(e, e.tokens[1:3])  # fewer predictions than the example's positions
    with pytest.raises(AniraError):
        task.score(e, np.stack([e.tokens[1:], e.tokens[1:]]))  # a batch, not one example
    with pytest.raises(AniraError):
        task.token_correct(e, e.tokens[1:3])
    with pytest.raises(AniraError):
        task.decode(np.array([1.5]))


# --- benchmark ----------------------------------------------------------------------------------
def test_bench_tasks_reports_rates(registry):
    result = bench_tasks(repeats=2, seconds=0.02, tasks=["mano", "depo"], steps_per_second={"mano": 1.0},
                         registry=registry)
    mano, depo = result["tasks"]["mano"], result["tasks"]["depo"]
    assert mano["difficulty"] == 16 and mano["batch"] == 512 and len(mano["runs"]) == 2
    assert mano["examples_per_s_per_core"] > 0 and mano["needed_per_core"] == 512 / 8
    assert mano["keeps_up"] is True
    assert depo["keeps_up"] is None and depo["steps_per_s"] is None
    json.dumps(result)
    lano = bench_tasks(repeats=1, seconds=0.02, tasks=["lano"], registry=registry)["tasks"]["lano"]
    assert lano["options"] == {"proxies": False}  # the training configuration by default
