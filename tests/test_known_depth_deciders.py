"""scripts/known_depth_deciders.py (docs/deciders.md, "A depth we know"): the needed depth
n_i on planted cases whose answer is known by construction, the exit-vs-n summary, the
loss-optimal depth, and the bookkeeping against the task's scorer on a bundled checkpoint."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import anira
from anira.evaluate import spearman

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "known_depth_deciders.py"
spec = importlib.util.spec_from_file_location("known_depth_deciders", SCRIPT)
kd = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = kd  # its dataclass resolves annotations through the module
spec.loader.exec_module(kd)


# per position (columns) and depth d = 1..4 (rows): is the argmax right?
PLANTED = np.array([
    # k=1  k=3  never  right-wrong-right  right-then-wrong-at-D  only at D  k=2
    [1, 0, 0, 1, 1, 0, 0],
    [1, 0, 0, 1, 1, 0, 1],
    [1, 1, 0, 0, 1, 0, 1],
    [1, 1, 0, 1, 0, 1, 1],
], dtype=bool)
EXPECTED = np.array([1, 3, 0, 4, 0, 4, 2])


def test_needed_depth_on_planted_correctness():
    assert np.array_equal(kd.needed_depth(PLANTED), EXPECTED)
    # any leading shape: the same columns in a (D, 2, 7) batch
    assert np.array_equal(kd.needed_depth(np.stack([PLANTED, PLANTED], 1)), np.stack([EXPECTED, EXPECTED]))


class Planted(nn.Module):
    """A stand-in model: the prediction at position i of a token exiting at depth d is the
    next token iff ``right[d-1, i]``; left to itself each token exits at ``own[i]``. It keeps
    the exit depths it was asked to run."""

    def __init__(self, right: np.ndarray, vocab: int, own: np.ndarray | None = None) -> None:
        super().__init__()
        self.right = torch.from_numpy(right)
        self.vocab = vocab
        self.own = None if own is None else torch.from_numpy(own)
        self.cfg = SimpleNamespace(max_iters=right.shape[0])
        self.calls = []

    def forward(self, tokens, *, exit_depths=None):
        depths = self.own.expand(tokens.shape) if exit_depths is None else exit_depths
        self.calls.append(exit_depths)
        target = torch.roll(tokens, -1, dims=1)
        right = self.right.gather(0, (depths - 1).clamp(0, self.right.shape[0] - 1)[0][None])[0]
        choice = torch.where(right[None, :], target, (target + 1) % self.vocab)
        logits = torch.zeros(*tokens.shape, self.vocab).scatter_(-1, choice[..., None], 6.0)
        return SimpleNamespace(logits=logits, exit_depth=depths)


RIGHT = np.concatenate([PLANTED, np.ones((4, 1), bool)], 1)  # position 7 is the last: never "right"
TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


def test_needed_depth_through_forced_exits_of_a_planted_model():
    model = Planted(RIGHT, vocab=10)
    preds, nll = kd.forced_depth_outputs(model, TOKENS)
    assert [int(c.unique()) for c in model.calls] == [1, 2, 3, 4]  # every token at the same depth d
    assert preds.shape == nll.shape == (4, 2, 8)
    needed = kd.needed_depth(kd.correct_by_depth(preds, TOKENS.numpy()))
    assert np.array_equal(needed[:, :7], np.stack([EXPECTED, EXPECTED]))
    assert (needed[:, 7] == 0).all()
    # the cross-entropy is small exactly where the planted prediction is right
    assert np.array_equal(nll[:, :, :7] < 0.1, np.stack([PLANTED, PLANTED], 1))
    # "confident" needed depth: with p(right) ≈ 0.98 here it equals the argmax one
    assert np.array_equal(kd.needed_depth(nll[:, :, :7] <= -np.log(kd.CONFIDENT)), np.stack([EXPECTED, EXPECTED]))


def test_needed_depth_in_own_context_forces_only_the_answer_positions():
    """Positions 1 and 3 are the answers; every other token keeps its own depth (3)."""
    own = np.full(8, 3)
    model = Planted(RIGHT, vocab=10, own=own)
    answer = np.zeros((2, 8), bool)
    answer[:, [1, 3]] = True
    held = SimpleNamespace(batches=[(3, TOKENS, answer, None, None)], price=None)
    needed, optimal = kd.needed_depth_in_own_context(model, held)
    assert np.array_equal(needed, [3, 4, 3, 4]) and optimal is None  # rows x answer positions 1, 3
    assert model.calls[0] is None  # the decider's own depths first
    for d, depths in enumerate(model.calls[1:], start=1):
        assert (depths[:, [1, 3]] == d).all() and (depths[:, [0, 2, 4, 5, 6, 7]] == 3).all()


def test_follow_stats_on_planted_exits():
    needed = np.array([2, 2, 3, 1, 0, 5])  # the fifth token is undefined and left out
    exits = np.array([1, 2, 5, 1, 6, 5])
    s = kd.follow_stats(exits, needed, correct=np.array([False, True, True, True, True, True]))
    assert (s["tokens"], s["undefined"]) == (5, 1)
    assert s["premature"] == pytest.approx(1 / 5)
    assert s["at_needed"] == pytest.approx(3 / 5)
    assert s["wasted"] == pytest.approx(1 / 5)
    assert s["mean_excess"] == pytest.approx((-1 + 0 + 2 + 0 + 0) / 5)
    assert s["mean_wasted_iterations"] == pytest.approx(2 / 5)
    assert (s["token_acc_premature"], s["token_acc_not_premature"]) == (0.0, 1.0)
    assert s["spearman"] == pytest.approx(spearman([1, 2, 5, 1, 5], [2, 2, 3, 1, 5]), abs=1e-4)  # the defined pairs
    # a decider exiting in the reverse order of n is read as such
    assert kd.follow_stats(np.array([4, 3, 2, 1]), np.array([1, 2, 3, 4]))["spearman"] == pytest.approx(-1.0)


def test_loss_optimal_depth_prices_each_iteration():
    nll = np.array([[2.0, 0.5, 0.10], [0.5, 0.45, 0.05], [0.1, 0.44, 0.04]])  # (D=3, 3 tokens)
    assert np.array_equal(kd.loss_optimal_depth(nll, 0.0), [3, 3, 3])
    assert np.array_equal(kd.loss_optimal_depth(nll, 0.02), [3, 2, 2])
    assert np.array_equal(kd.loss_optimal_depth(nll, 1.0), [2, 1, 1])


def test_needed_depth_matches_the_scorer_on_a_bundled_checkpoint():
    """An instance is solved with every token at depth D exactly when each of its answer
    positions has a defined n_i: the answer positions are the scorer's."""
    model, task = anira.load(ROOT / "checkpoints" / "brevo-anira-o")
    held = kd.held_out_tokens(model, task, n=2, seed=5)
    per_instance = np.array([np.all(held.needed[held.instance == j] > 0) for j in range(len(held.solved_full_depth))])
    assert np.array_equal(per_instance, held.solved_full_depth)
    assert held.needed.min() >= 0 and held.needed.max() <= model.cfg.max_iters
    assert (held.confident[held.confident > 0] >= held.needed[held.confident > 0]).all()
    depth, correct, solved = kd.policy_depths(model, task, held)
    assert depth.shape == correct.shape == held.needed.shape and solved.shape == held.solved_full_depth.shape
    assert held.first.sum() == len(held.solved_full_depth)  # one first answer position per instance
    assert held.last.sum() == len(held.solved_full_depth)  # and one last, the closing <eos>
    _, tokens, mask, _, _ = held.batches[0]  # the first difficulty's instances come first in held
    rows, cols = np.nonzero(mask)
    last_cols = cols[held.last[: len(rows)]]
    eos = task.tokenizer.encode(["<eos>"])[0]
    assert (tokens.numpy()[np.arange(len(last_cols)), last_cols + 1] == eos).all()
    assert not model.training


def test_training_a_decider_leaves_the_network_alone(tmp_path):
    """Two steps of the script's run on a bundled checkpoint: its recipe (γ, prior, LR) and the
    frozen network, read back bit for bit from the run's saved checkpoint."""
    path = str(ROOT / "checkpoints" / "brevo-anira-o")
    result = kd.train_decider(path, "all", steps=2, batch_size=4, seed=1, warmup_steps=0, at=[0, 1], n=1,
                              eval_seed=0, out=str(tmp_path / "run"))
    assert result["network_unchanged"] is True
    assert [r["step"] for r in result["reads"]] == [0, 1, 2]
    assert (result["gamma"], result["prior_base"], result["lr"]) == (0.1, 2.0, 0.002)
    fresh, _ = anira.load(tmp_path / "run")
    bundled, _ = anira.load(path)
    changed = [k for k, v in bundled.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
    assert changed and all(k.startswith("policy.") for k in changed)


def test_compact_json_round_trips():
    import json

    data = {"a": {"b": [1, 2.5, None], "c": {"d": "x", "e": [{"f": 1}, {"g": [True]}]}}, "h": []}
    text = kd.compact_json(data)
    assert json.loads(text) == data
    assert '"b": [1, 2.5, null]' in text  # an innermost list stays on one line
