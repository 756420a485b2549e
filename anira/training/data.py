"""Seeded, on-the-fly training data and fixed evaluation sets.

Example ``j`` of the global batch at step ``s`` is drawn from its own numpy
Generator seeded by ``(seed, s, j)``. So a batch depends only on the seed and the
step (resume is exact without saving any data-RNG state), and DDP rank ``r`` of
``W`` builds examples ``j`` in its contiguous slice of the global batch: the
union over ranks is the single-process batch, whatever ``W`` is.
"""

from __future__ import annotations

import signal

from dataclasses import dataclass

import numpy as np
import torch

from anira.errors import AniraError
from anira.packing import pack_batch
from anira.task import Batch, Example, Task, collate
from anira.training.pool import ExamplePool, step_rows

# stream tags keep the training and evaluation streams of one seed independent
_TRAIN_STREAM = 0
_EVAL_STREAM = 1


def rank_slice(global_batch: int, rank: int, world: int) -> range:
    """The indices of the global batch that ``rank`` of ``world`` builds."""
    if global_batch % world:
        raise AniraError(f"train.batch_size {global_batch} is not divisible by the {world} DDP processes")
    per = global_batch // world
    return range(rank * per, (rank + 1) * per)


def example_rng(seed: int, step: int, index: int, stream: int = _TRAIN_STREAM) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step, index])


def train_example(task: Task, seed: int, step: int, index: int) -> Example:
    """Example ``index`` of the global batch at ``step``: difficulty uniform over the train range."""
    rng = example_rng(seed, step, index)
    lo, hi = task.ranges.train
    difficulty = int(rng.integers(lo, hi + 1))
    return task.sample(difficulty, rng, split="train")


def train_batch(task: Task, seed: int, step: int, indices: range, length: int | None = None) -> Batch:
    return collate([train_example(task, seed, step, j) for j in indices], length=length)


@dataclass
class TorchBatch:
    tokens: torch.Tensor  # (b, n) long
    loss_mask: torch.Tensor  # (b, n) bool
    answer_mask: torch.Tensor  # (b, n) bool
    token_mask: torch.Tensor  # (b, n) bool: real (non-padding) tokens
    difficulty: torch.Tensor  # (b,) long; packed: (e,), per example
    complexity: torch.Tensor | None = None  # (b, n) float32, NaN where undefined (oracle supervision)
    # packed rows (anira.packing): each token's example (-1 on padding) and segment along its row
    example_index: torch.Tensor | None = None  # (rows, n) long
    segments: torch.Tensor | None = None  # (rows, n) long

    @property
    def n_examples(self) -> int:
        return int(self.difficulty.shape[0])

    @property
    def layout(self) -> dict[str, torch.Tensor]:
        """The keyword arguments that tell the model this batch's row layout: none for a
        row per example, ``segments`` for packed rows."""
        return {} if self.segments is None else {"segments": self.segments}

    def to(self, device: torch.device) -> TorchBatch:
        fields = (self.tokens, self.loss_mask, self.answer_mask, self.token_mask, self.difficulty, self.complexity,
                  self.example_index, self.segments)
        if device.type != "cuda":
            return TorchBatch(*(None if t is None else t.to(device) for t in fields))
        # a copy from pageable host memory first waits for the work already queued on the
        # device (a synchronisation at every training step); from pinned memory it is queued
        # behind that work and the host runs on
        return TorchBatch(*(None if t is None else (t.pin_memory() if t.device.type == "cpu" else t)
                            .to(device, non_blocking=True) for t in fields))


def to_torch(batch: Batch) -> TorchBatch:
    n = batch.tokens.shape[1]
    if batch.segments is None:
        token_mask = torch.arange(n)[None, :] < torch.from_numpy(batch.lengths)[:, None]
    else:
        token_mask = torch.from_numpy(batch.example_index >= 0)
    return TorchBatch(
        tokens=torch.from_numpy(batch.tokens),
        loss_mask=torch.from_numpy(batch.loss_mask),
        answer_mask=torch.from_numpy(batch.answer_mask),
        token_mask=token_mask,
        difficulty=torch.from_numpy(batch.difficulty),
        complexity=None if batch.complexity is None else torch.from_numpy(batch.complexity),
        example_index=None if batch.example_index is None else torch.from_numpy(batch.example_index),
        segments=None if batch.segments is None else torch.from_numpy(batch.segments),
    )


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``s`` is this rank's batch for step ``s``.

    Handing it to a DataLoader with ``num_workers > 0`` generates batches ahead
    in worker processes; the content still depends only on ``(seed, step)``.
    """

    def __init__(self, task: Task, seed: int, global_batch: int, rank: int, world: int,
                 start: int, stop: int, pad_to_max: bool, pool: ExamplePool | None = None,
                 pack_length: int = 0) -> None:
        self.task = task
        self.seed = seed
        self.global_batch = global_batch
        self.indices = rank_slice(global_batch, rank, world)
        self.start, self.stop = start, stop
        self.length = task.max_len(task.ranges.train[1]) if pad_to_max else None
        self.pool = pool  # None: generate every example on the fly
        self.pack_length = pack_length  # > 0: examples packed into rows of this many tokens

    def _finish(self, batch: Batch, step: int) -> TorchBatch:
        # checked here, on the host, so that the loss on the device need not read it back
        if not batch.loss_mask[:, :-1].any():
            raise AniraError(f"the training batch of step {step} has no position to train on (its loss_mask is empty)")
        return to_torch(pack_batch(batch, self.pack_length) if self.pack_length else batch)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> TorchBatch:
        step = self.start + i
        if self.pool is not None:
            rows = step_rows(self.seed, step, len(self.pool), self.global_batch)
            return self._finish(self.pool.batch(rows[self.indices.start:self.indices.stop], self.length), step)
        return self._finish(train_batch(self.task, self.seed, step, self.indices, self.length), step)


def _identity(x):
    return x


def _ignore_stop_signals(worker_id: int) -> None:
    """Data workers ignore SIGINT/SIGTERM. Ctrl-C and `timeout` signal the whole
    process group; a worker that died of it would make the trainer raise before it
    could save, so only the trainer reacts (it saves, then shuts the workers down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def step_loader(dataset: StepBatches, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # items are already batches
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=_ignore_stop_signals if num_workers else None,
    )


def eval_examples(task: Task, difficulty: int, n: int, seed: int) -> list[Example]:
    """A fixed test set: the same ``n`` held-out examples at every evaluation of a run."""
    rng = np.random.default_rng([seed, _EVAL_STREAM, difficulty])
    return [task.sample(difficulty, rng, split="test") for _ in range(n)]
