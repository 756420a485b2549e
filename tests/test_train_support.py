"""A tiny copy task and a registry holding it, shared by the training tests
(the real tasks live in plugins/tasks; these tests must not depend on them)."""

from __future__ import annotations

import numpy as np

from anira.hookspecs import hookimpl
from anira.registry import build_registry
from anira.task import DifficultyRanges, Example, Task, Tokenizer

SYMBOLS = [str(i) for i in range(8)]


class CopyTask(Task):
    """``<bos> x1..xn = x1..xn <eos>``: copy n symbols; difficulty n."""

    name = "copy"
    description = "copy a sequence of symbols"
    knob = "n = symbols to copy"
    default_ranges = DifficultyRanges(train=(2, 4), test_id=(2, 4), test_ood=(5, 6))
    min_difficulty = 1
    max_difficulty = 12
    default_max_iters = 3
    tokenizer = Tokenizer(["<bos>", "<eos>", "=", *SYMBOLS])

    def max_len(self, difficulty: int) -> int:
        return 2 * difficulty + 3

    def _generate(self, difficulty: int, rng: np.random.Generator) -> Example:
        xs = [SYMBOLS[i] for i in rng.integers(0, len(SYMBOLS), size=difficulty)]
        toks = ["<bos>", *xs, "=", *xs, "<eos>"]
        n = len(toks)
        nq = difficulty + 2
        pos = np.arange(n)
        answer = (pos >= nq - 1) & (pos < n - 1)
        return Example(
            tokens=np.asarray(self.tokenizer.encode(toks), dtype=np.int64),
            loss_mask=answer.copy(), answer_mask=answer, question_mask=pos < nq,
            complexity=np.full(n, np.nan), features={}, instance={"xs": xs},
            difficulty=difficulty, answer=xs,
        )


class _Plugin:
    __name__ = "copy-task-plugin"

    @hookimpl
    def register_tasks(self, register):
        register(CopyTask)


def registry():
    return build_registry(load_entry_points=False, extra_plugins=(_Plugin(),))


def spec(policy: str = "fixed", **train):
    from anira.training import RunSpec, TrainConfig

    base = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=3, eval_examples=4,
                checkpoint_every=3, log_every=1, seed=0)
    base.update(train)
    return RunSpec(task="copy", policy=policy, model_preset="test", model={"max_iters": 3},
                   policy_options={"gamma": 0.1, "prior_base": 2.0}, train=TrainConfig(**base))
