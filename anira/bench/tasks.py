"""Generator throughput: examples per second on one CPU core, per task.

Each task is timed at the top of its training range (the slowest training
examples), in this process (one core), and the median over repeats is
compared with what training needs per data-loader worker:
``batch * steps_per_second / workers``. The paper's batches are MANO 512 and
BREVO, DEPO, LANO 64 per step; step rates come from the training benchmark,
so they are a parameter here (``None``: not judged).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from anira.registry import Registry, default_registry

#: examples per optimiser step in the paper's configurations (§3)
PAPER_BATCH: dict[str, int] = {"mano": 512, "brevo": 64, "depo": 64, "lano": 64}

#: constructor options training uses: LANO trains on tokens only, so its
#: parser (~50x slower than drawing the string) is off; pass ``options={}``
#: to time the full examples with every feature instead
TRAINING_OPTIONS: dict[str, dict[str, Any]] = {"lano": {"proxies": False}}


def _rate(task: Any, difficulty: int, seconds: float, seed: int) -> float:
    """Examples per second drawing from the training split for about ``seconds``."""
    rng = np.random.default_rng(seed)
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds or count < 3:
        task.sample(difficulty, rng, split="train")
        count += 1
        elapsed = time.perf_counter() - start
    return count / elapsed


def bench_tasks(
    repeats: int = 3,
    seconds: float = 0.5,
    tasks: list[str] | None = None,
    steps_per_second: float | dict[str, float] | None = None,
    workers: int = 8,
    options: dict[str, dict[str, Any]] | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure each task's generator; returns a JSON-able dict.

    ``steps_per_second``: the training step rate (one number for all tasks or
    one per task); ``workers``: data-loader processes available; ``options``:
    constructor options per task; default :data:`TRAINING_OPTIONS` (what the
    trainer builds), ``{}`` for the tasks' defaults (every feature computed).
    """
    if repeats < 1 or seconds <= 0 or workers < 1:
        raise ValueError("repeats and workers must be >= 1 and seconds > 0")
    registry = registry or default_registry()
    names = tasks if tasks is not None else registry.names("task")
    options = TRAINING_OPTIONS if options is None else options
    results: dict[str, Any] = {}
    for name in names:
        task = registry.task(name)(**options.get(name, {}))
        difficulty = task.ranges.train[1]
        runs = [_rate(task, difficulty, seconds, seed + r) for r in range(repeats)]
        rate = statistics.median(runs)
        batch = PAPER_BATCH.get(name)
        steps = steps_per_second.get(name) if isinstance(steps_per_second, dict) else steps_per_second
        entry: dict[str, Any] = {
            "difficulty": difficulty,
            "options": options.get(name, {}),
            "examples_per_s_per_core": rate,
            "runs": runs,
            "batch": batch,
            "steps_per_s": steps,
        }
        if batch is None or steps is None:
            entry["needed_per_core"] = None
            entry["keeps_up"] = None
            entry["note"] = "step rate or batch unknown: not judged"
        else:
            needed = batch * steps / workers
            entry["needed_per_core"] = needed
            entry["keeps_up"] = rate >= needed
            entry["note"] = (
                f"{rate:.0f}/s per core vs {needed:.0f}/s needed per worker "
                f"({batch} x {steps:g} steps/s over {workers} workers): "
                + ("keeps up" if rate >= needed else "too slow: pre-generate to a cached dataset")
            )
        results[name] = entry
    return {"repeats": repeats, "seconds": seconds, "workers": workers, "tasks": results}
