"""Evaluation metrics: definitions against hand-computed cases, determinism, JSON schema."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from anira import build_model, preset_config
from anira.errors import AniraError
from anira.evaluate import SCHEMA_VERSION, EvalResult, Tally, evaluate, rankdata, spearman
from anira.registry import default_registry
from anira.task import DifficultyRanges, Task, collate

RANGES = DifficultyRanges(train=(3, 4), test_id=(3, 4), test_ood=(5, 6))


def small_task():
    return default_registry().task("mano")(ranges=RANGES)


def small_model(task, policy: str, **cfg):
    return build_model(preset_config("test", vocab_size=task.vocab_size, **cfg), policy, seed=0)


# --- Spearman ---------------------------------------------------------------------------


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]
    assert rankdata([]).shape == (0,)


def test_spearman_hand_computed():
    # ranks x: 1..5; ranks y (5,6,7,8,7): 1,2,3.5,5,3.5. Centred: (-2,-1,0,1,2) and
    # (-2,-1,.5,2,.5): dot = 8, |x|² = 10, |y|² = 9.5, so rho = 8/sqrt(95).
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [10, 200, 3000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_undefined_and_nan_pairs():
    assert math.isnan(spearman([4, 4, 4], [1, 2, 3]))  # constant depth: no rank order
    assert math.isnan(spearman([1], [2]))
    assert spearman([1, np.nan, 2, 3], [1, 5, 2, 3]) == pytest.approx(1.0)  # NaN pair dropped
    with pytest.raises(AniraError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 200).astype(float)  # many ties
    y = x + rng.integers(0, 3, 200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


# --- Tally: the metric definitions on hand-made arrays ------------------------------------


def test_tally_hand_computed():
    D = 4
    # two sequences of width 4; the second has one pad position
    exit_depth = np.array([[1, 2, 3, 4], [4, 4, 1, 2]])
    expected = np.array([[1.5, 2.0, 3.0, 3.5], [4.0, 3.0, 1.0, 9.0]])
    token_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=bool)
    answer_mask = np.array([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=bool)  # last of row 2 is a pad: ignored
    complexity = np.array([[np.nan, np.nan, 2.0, 0.0], [np.nan, 5.0, 0.0, 7.0]])
    t = Tally(max_iters=D)
    t.add(correct=np.array([True, False]), exit_depth=exit_depth, expected_depth=expected,
          token_mask=token_mask, answer_mask=answer_mask, complexity=complexity)
    m = t.metrics()
    assert m.n == 2 and m.accuracy == 0.5
    # answer positions: (3, 4) and (4, 1)
    assert m.mean_exit_depth == pytest.approx((3 + 4 + 4 + 1) / 4)
    assert m.mean_expected_depth == pytest.approx((3.0 + 3.5 + 3.0 + 1.0) / 4)
    assert m.mean_exit_depth_all == pytest.approx((1 + 2 + 3 + 4 + 4 + 4 + 1) / 7)
    # cost: Σ exit depth over non-pad tokens = 10 + 9 per 2 sequences; ratio over D × 7 tokens
    assert m.execution_cost == pytest.approx(19 / 2)
    assert m.cost_ratio == pytest.approx(19 / (4 * 7))
    # complexity pairs (non-pad, defined): depth (3,4,4,1) vs complexity (2,0,5,0)
    assert m.n_complexity_tokens == 4
    assert m.spearman_exit_depth == pytest.approx(spearman([3, 4, 4, 1], [2, 0, 5, 0]))
    assert m.n_answer_tokens == 4 and m.n_tokens == 7


def test_tally_feature_spearman_pools_over_defined_positions():
    D = 4
    base = dict(correct=np.array([True]), token_mask=np.array([[1, 1, 1, 1]], dtype=bool),
                answer_mask=np.array([[0, 0, 1, 1]], dtype=bool), complexity=np.full((1, 4), np.nan))
    a, b = Tally(max_iters=D), Tally(max_iters=D)
    a.add(**base, exit_depth=np.array([[1, 2, 3, 4]]), expected_depth=np.array([[4.0, 3.0, 2.0, 1.0]]),
          features={"f": np.array([[np.nan, 1.0, 2.0, 3.0]])})
    b.add(**base, exit_depth=np.array([[2, 2, 2, 2]]), expected_depth=np.array([[1.0, 1.0, 1.0, 1.0]]),
          features={"f": np.array([[0.0, np.nan, np.nan, np.nan]])})
    assert a.metrics().feature_spearman["f"] == {"exit_depth": pytest.approx(1.0), "expected_depth": pytest.approx(-1.0)}
    # pooled pairs (exit depth, f): (2,1) (3,2) (4,3) (2,0)
    pooled = a.merge(b).metrics().feature_spearman["f"]
    assert pooled["exit_depth"] == pytest.approx(spearman([2, 3, 4, 2], [1, 2, 3, 0]))


def test_tally_cost_from_running_mask_and_merge():
    D = 3
    exit_depth = np.array([[1, 3, 2]])
    running = np.stack([exit_depth > t for t in range(D)])  # (D, b, p): iterations 1..d_i
    kw = dict(correct=np.array([True]), exit_depth=exit_depth, expected_depth=exit_depth.astype(float),
              token_mask=np.array([[1, 1, 0]], dtype=bool), answer_mask=np.array([[0, 1, 1]], dtype=bool),
              complexity=np.full((1, 3), np.nan))
    a, b = Tally(max_iters=D), Tally(max_iters=D)
    a.add(**kw, running=running)
    b.add(**kw)  # without running: the sum of exit depths
    assert a.cost == b.cost == 4  # |A_1| = 2, |A_2| = 1, |A_3| = 1 over the two real tokens
    pooled = a.merge(b).metrics()
    assert pooled.n == 2 and pooled.cost_ratio == pytest.approx(8 / (3 * 4))
    assert math.isnan(pooled.spearman_exit_depth)  # complexity never defined


def test_tally_token_acc_weights_tokens_not_instances():
    D = 4
    # row 1: two answer positions, both right; row 2: four answer positions (one is a pad,
    # ignored), one right. Right marks outside answer positions must not count.
    answer_mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=bool)
    token_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=bool)
    answer_correct = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=bool)
    kw = dict(correct=np.array([True, False]), exit_depth=np.ones((2, 5)), expected_depth=np.ones((2, 5)),
              token_mask=token_mask, answer_mask=answer_mask, complexity=np.full((2, 5), np.nan))
    t = Tally(max_iters=D)
    t.add(**kw, answer_correct=answer_correct)
    m = t.metrics()
    assert m.n_answer_tokens == 5 and m.n_correct_answer_tokens == 3
    assert m.token_acc == pytest.approx(3 / 5)  # per token; per instance it would be (1 + 1/3) / 2
    assert m.accuracy == 0.5  # exact match untouched
    # pooled with a batch without token correctness: only the scored answer tokens count
    other = Tally(max_iters=D)
    other.add(**kw)
    assert math.isnan(other.metrics().token_acc)
    assert t.merge(other).metrics().token_acc == pytest.approx(3 / 5)
    assert t.merge(t).metrics().n_correct_answer_tokens == 6
    with pytest.raises(AniraError):
        Tally(max_iters=D).add(**kw, answer_correct=answer_correct[:, :4])


# --- evaluate() on real (tiny) models -------------------------------------------------------


class _Wrapped(nn.Module):
    """A model wrapper that evaluate() reads like the model (its cfg and policy)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.cfg = model.cfg
        self.policy = model.policy


class ForcedDepth(_Wrapped):
    """Wraps a model so every token exits at a known depth: 1 + (position mod D)."""

    @staticmethod
    def depths(tokens: torch.Tensor, D: int) -> torch.Tensor:
        return (torch.arange(tokens.shape[1]) % D + 1).expand(tokens.shape[0], -1)

    def forward(self, tokens):
        return self.inner(tokens, exit_depths=self.depths(tokens, self.cfg.max_iters))


class PlantedPredictions(_Wrapped):
    """Wraps a model so its argmax is the true next token (teacher forcing shows it) at
    every position except those with ``i % 3 == 0``, where it is a wrong token."""

    @staticmethod
    def right(length: int) -> np.ndarray:
        return np.arange(length) % 3 != 0

    def forward(self, tokens):
        out = self.inner(tokens)
        vocab = out.logits.shape[-1]
        nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1)  # (b, p): token i + 1
        wrong = (nxt + 1) % vocab
        pred = torch.where(torch.from_numpy(self.right(tokens.shape[1])), nxt, wrong)
        return dataclasses.replace(out, logits=nn.functional.one_hot(pred, vocab).float())


@pytest.mark.parametrize("name,options,ks", [("brevo", {}, [3, 4]), ("depo", {"queries": 3}, [2])])
def test_token_acc_on_planted_predictions(name, options, ks):
    task = default_registry().task(name)(**options)
    model = PlantedPredictions(small_model(task, "fixed", max_len=160))
    n, seed = 6, 2
    res = evaluate(model, task, n_per_difficulty=n, seed=seed, difficulties=ks, batch_size=4)
    pooled_right = pooled_answer = 0
    per_instance = []
    for k in ks:
        rng = np.random.default_rng([seed, k])
        examples = [task.sample(k, rng, split="test") for _ in range(n)]
        right = [PlantedPredictions.right(len(e))[e.answer_mask] for e in examples]
        n_right, n_answer = sum(int(r.sum()) for r in right), sum(r.size for r in right)
        m = res.difficulty(k).metrics
        assert m.n_correct_answer_tokens == n_right and m.n_answer_tokens == n_answer
        assert m.token_acc == pytest.approx(n_right / n_answer)
        assert 0 < m.token_acc < 1
        # exact match is what it always was: the task's scorer on the same predictions
        assert m.accuracy == pytest.approx(np.mean([r.all() for r in right]))
        pooled_right, pooled_answer = pooled_right + n_right, pooled_answer + n_answer
        per_instance += [r.mean() for r in right]
    summary = res.in_distribution.metrics
    assert summary.token_acc == pytest.approx(pooled_right / pooled_answer)
    if name == "brevo":  # answers of different lengths: per token differs from per instance
        assert not summary.token_acc == pytest.approx(np.mean(per_instance))
    else:  # every instance has queries answers plus <eos>
        assert pooled_answer == (3 + 1) * n * len(ks)


class ScoreOnly(Task):
    """A plugin-style task that redefines exact match without a per-token rule."""

    def __init__(self, inner, score):
        self.inner, self._score = inner, score
        self.name, self.tokenizer, self.ranges = inner.name, inner.tokenizer, inner.ranges
        self.knob, self.features = inner.knob, inner.features

    def sample(self, difficulty, rng, split="train"):
        return self.inner.sample(difficulty, rng, split)

    def check_difficulty(self, difficulty):
        self.inner.check_difficulty(difficulty)

    def score(self, example, predicted):
        return self._score(example, predicted)


class ScoreAndTokens(ScoreOnly):
    def token_correct(self, example, predicted):
        return Task.token_correct(self, example, predicted)


def test_token_acc_needs_a_per_token_rule_that_agrees_with_score():
    task = small_task()
    model = PlantedPredictions(small_model(task, "fixed"))
    kw = dict(n_per_difficulty=3, difficulties=[3])
    ref = evaluate(model, task, **kw).difficulty(3).metrics
    only = evaluate(model, ScoreOnly(task, lambda e, p: True), **kw).difficulty(3).metrics
    assert only.accuracy == 1.0 and math.isnan(only.token_acc) and ref.token_acc > 0
    both = evaluate(model, ScoreAndTokens(task, task.score), **kw).difficulty(3).metrics
    assert both == ref
    with pytest.raises(AniraError, match="disagree"):
        evaluate(model, ScoreAndTokens(task, lambda e, p: True), **kw)


def test_fixed_policy_costs_exactly_D():
    task = small_task()
    res = evaluate(small_model(task, "fixed"), task, n_per_difficulty=6, seed=1, batch_size=4)
    D = res.max_iters
    assert [r.difficulty for r in res.per_difficulty] == [3, 4, 5, 6]
    for row in res.per_difficulty:
        assert row.metrics.cost_ratio == 1.0
        assert row.metrics.mean_exit_depth == D and row.metrics.mean_expected_depth == pytest.approx(D)
        assert math.isnan(row.metrics.spearman_exit_depth)  # constant depth
    assert res.in_distribution.difficulties == [3, 4] and res.ood.difficulties == [5, 6]
    assert res.in_distribution.metrics.cost_ratio == 1.0
    assert res.to_dict()["per_difficulty"][0]["metrics"]["spearman_exit_depth"] is None


def test_evaluate_matches_hand_computation_with_forced_depths():
    task = small_task()
    model = ForcedDepth(small_model(task, "anira-e"))
    n, seed = 5, 3
    res = evaluate(model, task, n_per_difficulty=n, seed=seed, difficulties=[4], batch_size=2)
    # rebuild the same instances and the metrics from first principles
    rng = np.random.default_rng([seed, 4])
    examples = [task.sample(4, rng, split="test") for _ in range(n)]
    D = model.cfg.max_iters
    depth_of = [np.arange(len(e)) % D + 1 for e in examples]
    answer_depths = np.concatenate([d[e.answer_mask] for d, e in zip(depth_of, examples)])
    all_depths = np.concatenate(depth_of)
    cx = np.concatenate([e.complexity for e in examples])
    defined = ~np.isnan(cx)
    with torch.no_grad():
        out = model.inner(torch.from_numpy(collate(examples).tokens), exit_depths=None)
    m = res.difficulty(4).metrics
    assert m.mean_exit_depth == pytest.approx(answer_depths.mean())
    assert m.cost_ratio == pytest.approx(all_depths.sum() / (D * all_depths.size))
    assert m.execution_cost == pytest.approx(all_depths.sum() / n)
    assert m.spearman_exit_depth == pytest.approx(spearman(all_depths[defined], cx[defined]))
    assert m.n_complexity_tokens == int(defined.sum())
    assert out.logits.shape[0] == n  # the wrapped model is the real one


def test_accuracy_uses_the_task_scorer():
    task = small_task()
    model = small_model(task, "anira-o")
    res = evaluate(model, task, n_per_difficulty=4, seed=0, difficulties=[3], n_samples=4)
    correct = [s.correct for s in res.samples]
    assert len(correct) == 4
    assert res.difficulty(3).metrics.accuracy == pytest.approx(sum(correct) / 4)
    s = res.samples[0]
    assert len(s.tokens) == len(s.exit_depth) == len(s.answer_mask) == len(s.predicted)
    assert s.tokens[0] == "<bos>"


def test_deterministic_given_seed():
    task = small_task()
    model = small_model(task, "anira-o")
    a = evaluate(model, task, n_per_difficulty=5, seed=7, batch_size=5).to_json()
    assert evaluate(model, task, n_per_difficulty=5, seed=7, batch_size=5).to_json() == a
    assert evaluate(model, task, n_per_difficulty=5, seed=8, batch_size=5).to_json() != a
    # a difficulty's instances do not depend on which other difficulties are evaluated
    only = evaluate(model, task, n_per_difficulty=5, seed=7, batch_size=5, difficulties=[5])
    assert only.difficulty(5).metrics == EvalResult.from_json(a).difficulty(5).metrics
    # another batch size pads differently: float sums may differ in the last bits only
    other = evaluate(model, task, n_per_difficulty=5, seed=7, batch_size=2).difficulty(5).metrics
    ref = only.difficulty(5).metrics
    assert other.accuracy == ref.accuracy and other.n_complexity_tokens == ref.n_complexity_tokens
    assert other.mean_expected_depth == pytest.approx(ref.mean_expected_depth, rel=1e-5)


def test_mode_is_restored_and_bad_arguments_are_one_line_errors():
    task = small_task()
    model = small_model(task, "fixed")
    model.train()
    evaluate(model, task, n_per_difficulty=1, difficulties=[3])
    assert model.training
    for kwargs in (dict(n_per_difficulty=0), dict(seed=-1), dict(batch_size=0), dict(difficulties=[])):
        with pytest.raises(AniraError) as info:
            evaluate(model, task, **{"n_per_difficulty": 1, **kwargs})
        assert "\n" not in str(info.value)


def test_too_long_difficulties_are_skipped():
    task = small_task()
    # mano with L operators has 2L + 5 tokens: 15 fits L = 5 but not L = 6
    model = small_model(task, "fixed", max_len=15)
    res = evaluate(model, task, n_per_difficulty=2)
    assert [r.difficulty for r in res.per_difficulty] == [3, 4, 5]
    assert [s["difficulty"] for s in res.skipped] == [6]
    assert res.ood.difficulties == [5]


# --- JSON schema -------------------------------------------------------------------------

TOP_KEYS = {
    "schema_version", "task", "policy", "max_iters", "knob", "language_modelling", "ranges", "seed",
    "n_per_difficulty", "per_difficulty", "in_distribution", "ood", "samples", "skipped", "label",
    "checkpoint", "step", "anira_version", "feature_kinds", "feature_descriptions",
}
METRIC_KEYS = {
    "n", "accuracy", "mean_exit_depth", "mean_expected_depth", "mean_exit_depth_all",
    "mean_expected_depth_all", "execution_cost", "cost_ratio", "spearman_exit_depth",
    "spearman_expected_depth", "n_tokens", "n_answer_tokens", "n_complexity_tokens", "feature_spearman",
    "token_acc", "n_correct_answer_tokens",
}


def test_json_schema_is_stable_and_round_trips():
    task = small_task()
    res = evaluate(small_model(task, "anira-e"), task, n_per_difficulty=2, seed=0)
    data = json.loads(res.to_json())  # strict JSON: no NaN tokens
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert set(data) == TOP_KEYS
    row = data["per_difficulty"][0]
    assert set(row) == {"difficulty", "in_train", "in_test_id", "in_test_ood", "metrics"}
    assert set(row["metrics"]) == METRIC_KEYS
    assert set(data["in_distribution"]) == {"difficulties", "metrics"}
    assert set(data["in_distribution"]["metrics"]) == METRIC_KEYS
    assert set(data["samples"][0]) == {
        "difficulty", "tokens", "exit_depth", "expected_depth", "answer_mask", "complexity", "predicted", "correct"
    }
    assert data["ranges"] == {"train": [3, 4], "test_id": [3, 4], "test_ood": [5, 6]}
    assert data["feature_kinds"]["d"] == "execution" and data["feature_kinds"]["L"] == "static"
    assert data["feature_descriptions"] == {f.name: f.description for f in task.features}
    assert set(data["in_distribution"]["metrics"]["feature_spearman"]["d"]) == {"exit_depth", "expected_depth"}
    assert EvalResult.from_json(res.to_json()).to_json() == res.to_json()
    with pytest.raises(AniraError):
        EvalResult.from_dict({**data, "schema_version": 99})


def test_json_without_token_acc_still_reads():
    # an eval JSON of an anira before token_acc: same schema version, the keys only added
    task = small_task()
    data = evaluate(small_model(task, "anira-e"), task, n_per_difficulty=2, seed=0).to_dict()
    assert data["in_distribution"]["metrics"]["token_acc"] is not None
    for m in [r["metrics"] for r in data["per_difficulty"]] + [data["in_distribution"]["metrics"], data["ood"]["metrics"]]:
        del m["token_acc"], m["n_correct_answer_tokens"]
    old = EvalResult.from_dict(data)
    assert math.isnan(old.in_distribution.metrics.token_acc)
    assert old.to_dict()["in_distribution"]["metrics"]["token_acc"] is None
