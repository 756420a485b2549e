"""A fixed pool of training examples, built once in parallel and cached on disk.

Generating examples one by one in Python costs ~0.3 ms each (MANO, BREVO at the
small sizes trained here), so a compiled model on a GPU that takes a few
milliseconds a step at batch 512 would wait on its data. With
``train.data_pool = P`` the trainer instead draws each batch from P examples
generated ahead:

* pool example ``i`` is drawn from ``numpy.random.default_rng([seed, 3, i])``
  (difficulty uniform over the train range, then ``task.sample(..., "train")``),
  so the pool depends only on the task, its options, the seed and P;
* the global batch at step ``s`` is the pool rows
  ``default_rng([seed, 4, s]).integers(0, P, size=batch)``; DDP rank ``r`` takes
  its contiguous slice, so resume and DDP stay exact, as with on-the-fly data.

A pool is a finite training set (it is re-sampled with replacement), unlike the
paper's fresh data every step: choose P much larger than the steps × batch you
expect to need distinct examples for, or equal to the instance space where that
is small. The cache file is keyed by everything the pool depends on (including
a digest of the task's source file), written atomically, and built by one
process while concurrent runs of the same key wait on a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import io
import json
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from anira.errors import AniraError
from anira.fileio import atomic_write_bytes
from anira.task import Batch, Task, collate

_POOL_STREAM = 3  # example i of the pool
_INDEX_STREAM = 4  # the pool rows of step s
_FORMAT = 1
_CHUNK = 2048  # examples per unit of parallel work


def cache_dir() -> Path:
    """Where pools are cached: ``$ANIRA_CACHE_DIR/pools`` or ``~/.cache/anira/pools``."""
    root = os.environ.get("ANIRA_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "anira") / "pools"


def pool_key(task: Task, task_options: dict[str, Any], seed: int, size: int) -> str:
    """A digest of everything the pool's content depends on."""
    source = inspect.getsourcefile(type(task))
    code = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else type(task).__qualname__
    data = {"format": _FORMAT, "task": task.name, "options": task_options, "ranges": task.ranges.__dict__,
            "seed": seed, "size": size, "code": code}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pool_example(task: Task, seed: int, index: int):
    rng = np.random.default_rng([seed, _POOL_STREAM, index])
    lo, hi = task.ranges.train
    return task.sample(int(rng.integers(lo, hi + 1)), rng, split="train")


@dataclass
class ExamplePool:
    """P padded examples as arrays; ``batch(rows)`` trims them to the batch's longest."""

    tokens: np.ndarray  # int32 (P, n)
    loss_mask: np.ndarray  # bool (P, n)
    answer_mask: np.ndarray  # bool (P, n)
    question_mask: np.ndarray  # bool (P, n)
    lengths: np.ndarray  # int32 (P,)
    difficulty: np.ndarray  # int32 (P,)
    complexity: np.ndarray  # float16 (P, n), NaN where undefined

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batch(self, rows: np.ndarray, length: int | None = None) -> Batch:
        n = int(self.lengths[rows].max()) if length is None else int(length)
        if n > self.tokens.shape[1]:
            pad = n - self.tokens.shape[1]
            widen = lambda a, v: np.pad(a[rows], ((0, 0), (0, pad)), constant_values=v)  # noqa: E731
        else:
            widen = lambda a, v: a[rows, :n]  # noqa: E731
        return Batch(
            tokens=widen(self.tokens, 0).astype(np.int64),
            loss_mask=widen(self.loss_mask, False),
            answer_mask=widen(self.answer_mask, False),
            question_mask=widen(self.question_mask, False),
            lengths=self.lengths[rows].astype(np.int64),
            difficulty=self.difficulty[rows].astype(np.int64),
            complexity=widen(self.complexity, np.nan).astype(np.float32),
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self, k) for k in _FIELDS})
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> ExamplePool:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _FIELDS if k not in data.files]
            if missing:
                raise AniraError(f"{path}: pool file lacks {', '.join(missing)}")
            return cls(**{k: data[k] for k in _FIELDS})


_FIELDS = ("tokens", "loss_mask", "answer_mask", "question_mask", "lengths", "difficulty", "complexity")


#: the task forked pool builders generate from (set before forking, so no pickling)
_BUILD_TASK: Task | None = None


def _build_chunk(args: tuple[int, int, int, int]) -> ExamplePool:
    seed, start, stop, width = args
    task = _BUILD_TASK
    b = collate([pool_example(task, seed, i) for i in range(start, stop)], length=width)
    return ExamplePool(
        tokens=b.tokens.astype(np.int32), loss_mask=b.loss_mask, answer_mask=b.answer_mask,
        question_mask=b.question_mask, lengths=b.lengths.astype(np.int32),
        difficulty=b.difficulty.astype(np.int32), complexity=b.complexity.astype(np.float16),
    )


def build_pool(task: Task, seed: int, size: int, workers: int = 0) -> ExamplePool:
    """Generate the pool (``workers`` processes; 0: all CPU cores)."""
    if size < 1:
        raise AniraError(f"train.data_pool must be >= 1, got {size}")
    global _BUILD_TASK
    width = task.max_len(task.ranges.train[1])
    jobs = [(seed, s, min(s + _CHUNK, size), width) for s in range(0, size, _CHUNK)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    _BUILD_TASK = task
    try:
        if workers > 1:
            # fork: the children only run numpy task code (never CUDA), and re-importing
            # the package in spawned children would cost seconds each
            with multiprocessing.get_context("fork").Pool(workers) as procs:
                parts = procs.map(_build_chunk, jobs)
        else:
            parts = [_build_chunk(job) for job in jobs]
    finally:
        _BUILD_TASK = None
    return ExamplePool(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS})


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_or_build_pool(task: Task, task_options: dict[str, Any], seed: int, size: int,
                       workers: int = 0, directory: Path | None = None) -> tuple[ExamplePool, Path]:
    """The cached pool for this key, building (and caching) it first if needed.

    A cache file that cannot be read or has the wrong size is rebuilt and replaced
    (it is a cache: its content is a pure function of its key)."""
    directory = directory or cache_dir()
    path = directory / f"{task.name}-{pool_key(task, task_options, seed, size)}.npz"
    with _locked(path.with_suffix(".lock")):
        if path.is_file():
            try:
                pool = ExamplePool.from_file(path)
                if len(pool) == size:
                    return pool, path
            except (OSError, ValueError, EOFError, AniraError, KeyError):
                pass  # unreadable: rebuild below
        pool = build_pool(task, seed, size, workers)
        atomic_write_bytes(path, pool.to_bytes())
    return pool, path


def step_rows(seed: int, step: int, size: int, global_batch: int) -> np.ndarray:
    """The pool rows of the global batch at ``step``."""
    return np.random.default_rng([seed, _INDEX_STREAM, step]).integers(0, size, size=global_batch)
