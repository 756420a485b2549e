"""The evaluation the trainer runs every ``eval_every`` steps.

Per difficulty value: exact-match accuracy (the task's scorer on greedy,
teacher-forced predictions), mean exit depth over answer tokens (docs/paper.md §3),
and mean expected depth Σ_d d·q(d) over the same tokens. The model runs in eval
mode (deterministic exits, early loop stop). The full analysis of a checkpoint
is ``anira eval``; this is the cheap version that tracks training dynamics.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from anira.task import Example, Task, collate
from anira.training.data import eval_examples, to_torch


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU runs stay exact)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_examples(model: torch.nn.Module, task: Task, difficulty: int, examples: list[Example],
                      batch_size: int, amp: bool = False) -> dict[str, Any]:
    device = next(model.parameters()).device
    correct = 0
    depth_sum = exp_sum = 0.0
    n_tokens = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = to_torch(collate(chunk)).to(device)
        with autocast_for(device, amp):
            out = model(batch.tokens)
        pred = out.logits.argmax(-1).cpu().numpy()
        for i, example in enumerate(chunk):
            correct += bool(task.score(example, pred[i]))
        mask = batch.answer_mask
        depth_sum += float(out.exit_depth[mask].float().sum())
        exp_sum += float(out.expected_depth[mask].float().sum())
        n_tokens += int(mask.sum())
    return {
        "difficulty": int(difficulty),
        "n": len(examples),
        "acc": correct / len(examples),
        "mean_depth": depth_sum / max(n_tokens, 1),
        "mean_expected_depth": exp_sum / max(n_tokens, 1),
    }


class EvalSets:
    """The fixed test examples of a run, drawn once and reused at every evaluation."""

    def __init__(self, task: Task, n: int, seed: int) -> None:
        self.task, self.n, self.seed = task, n, seed
        self._cache: dict[int, list[Example]] = {}

    def get(self, difficulty: int) -> list[Example]:
        if difficulty not in self._cache:
            self._cache[difficulty] = eval_examples(self.task, difficulty, self.n, self.seed)
        return self._cache[difficulty]


def evaluate_range(model: torch.nn.Module, task: Task, which: str, sets: EvalSets,
                   batch_size: int, amp: bool = False) -> dict[str, Any]:
    """One eval record for ``which`` in ("test_id", "test_ood"); restores train mode after."""
    was_training = model.training
    model.eval()
    try:
        rows = [evaluate_examples(model, task, d, sets.get(d), batch_size, amp) for d in task.ranges.values(which)]
    finally:
        model.train(was_training)
    return {
        "split": which,
        "acc": sum(r["acc"] for r in rows) / len(rows),
        "mean_depth": sum(r["mean_depth"] for r in rows) / len(rows),
        "mean_expected_depth": sum(r["mean_expected_depth"] for r in rows) / len(rows),
        "per_difficulty": rows,
    }
