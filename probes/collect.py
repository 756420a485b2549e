"""Collection: run a model over generated instances into a :class:`TokenTable`.

Instances are drawn on the requested side of the task's train/test partition
(the in-distribution test split by default): difficulty ``k`` uses
``np.random.default_rng([seed, k])`` as :func:`anira.evaluate.evaluate` does, and
the ``n`` instances are spread evenly over the difficulty values. Each batch
is one forward pass (``run_with_cache`` with a names filter when hidden states
are requested, a plain call otherwise); per-token rows are appended to a sink
that holds them in memory or, when the estimated size exceeds
``memory_limit_bytes`` (or ``store_dir`` is given), streams them to raw files
that the table then memory-maps. Memory therefore stays bounded by one batch
plus the table's small columns.

A *depth override* ``depth_fn(example) -> int array (len,) in 1..D`` fixes the
halting rule by construction (planted-answer models): the model runs with
``exit_depths=`` those depths, and the table's q is the one-hot of the forced
depth (its expected depth = the forced depth), since the rule, not the
policy's decider, made the decision.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from anira.errors import AniraError
from anira.probes.table import BASE_COLUMNS, TokenTable, open_array, own_tempdir, write_manifest
from anira.task import Example, Task, collate

DepthFn = Callable[[Example], np.ndarray]
Progress = Callable[[int, int], None]

#: stream to disk when the estimated table (with hidden states) exceeds this
DEFAULT_MEMORY_LIMIT = 1 << 30


class _Sink:
    """Appends per-batch row chunks, in memory or to raw files in ``directory``."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.chunks: dict[str, list[np.ndarray]] = defaultdict(list)
        self.layout: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}  # dtype, trailing shape, rows

    def append(self, key: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        dtype, trailing, rows = self.layout.get(key, (arr.dtype, arr.shape[1:], 0))
        if arr.dtype != dtype or arr.shape[1:] != trailing:
            raise AniraError(f"collection: {key} changed shape/dtype between batches")
        self.layout[key] = (dtype, trailing, rows + arr.shape[0])
        if self.directory is None:
            self.chunks[key].append(arr.copy())
        else:
            with open(self.directory / f"{key}.bin", "ab") as fh:
                arr.tofile(fh)

    def finish(self, empty: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
        out = {}
        for key, (dtype, trailing) in empty.items():  # keys never appended (no rows at all)
            if key not in self.layout:
                self.layout[key] = (np.dtype(dtype), trailing, 0)
        for key, (dtype, trailing, rows) in self.layout.items():
            shape = (rows, *trailing)
            if self.directory is None:
                out[key] = np.concatenate(self.chunks[key]) if self.chunks[key] else np.zeros(shape, dtype)
            else:
                out[key] = open_array(self.directory / f"{key}.bin", dtype.str, shape)
        return out


def spread(n: int, ks: Sequence[int]) -> dict[int, int]:
    """``n`` instances over difficulties ``ks``: equal shares, the remainder given
    to evenly spaced values (so a small n still covers the range)."""
    base, rem = divmod(n, len(ks))
    counts = {k: base for k in ks}
    # rem < len(ks) points spaced more than 1 apart round to distinct indices
    for i in np.round(np.linspace(0, len(ks) - 1, rem)).astype(int) if rem else ():
        counts[ks[i]] += 1
    return {k: c for k, c in counts.items() if c}


def check_hidden_sites(model: Any, sites: Sequence[str]) -> list[str]:
    known = set(model.hook_dict)
    bad = [s for s in sites if s not in known]
    if bad:
        raise AniraError(f"unknown hook name {bad[0]!r} for hidden states (see docs/hooks.md)")
    return list(dict.fromkeys(sites))


def _padded(examples: list[Example], width: int, get: Callable[[Example], np.ndarray | None], fill: float) -> np.ndarray:
    out = np.full((len(examples), width), fill, dtype=np.float64)
    for i, e in enumerate(examples):
        values = get(e)
        if values is not None:
            out[i, : len(e)] = values
    return out


def collect(
    model: Any,
    task: Task,
    *,
    n: int = 2000,
    seed: int = 0,
    split: str = "test",
    difficulties: Sequence[int] | None = None,
    batch_size: int = 64,
    keep: str = "answer|question",
    hidden_sites: Sequence[str] = (),
    depth_fn: DepthFn | None = None,
    store_dir: str | Path | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    meta: dict[str, Any] | None = None,
) -> TokenTable:
    """Run ``model`` on ``n`` instances of ``task`` and return the per-token table.

    ``keep``: which positions become rows ("answer", "question",
    "answer|question", "all" non-pad positions). ``hidden_sites``: full hook
    names whose activations are stored per row (float32). ``difficulties``:
    default the task's in-distribution test range. Difficulties whose instances
    do not fit the model's ``max_len`` are skipped and listed in
    ``table.meta["skipped"]``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise AniraError(f"n must be a positive integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise AniraError(f"batch_size must be a positive integer, got {batch_size!r}")
    if keep not in ("answer", "question", "answer|question", "all"):
        raise AniraError(f"keep must be answer, question, answer|question or all; got {keep!r}")
    if split not in ("train", "test"):
        raise AniraError(f"split must be 'train' or 'test', got {split!r}")
    ks = list(task.ranges.values("test_id")) if difficulties is None else sorted({int(k) for k in difficulties})
    if not ks:
        raise AniraError("no difficulty values to collect")
    for k in ks:
        task.check_difficulty(k)
    sites = check_hidden_sites(model, hidden_sites)
    if device is not None:
        model.to(device)
    D = int(model.cfg.max_iters)
    max_len = int(model.cfg.max_len)
    specs = {spec.name: spec for spec in task.features}

    # memory: rows are at most n * max_len; a row costs its columns plus hidden states
    row_bytes = 64 + 5 * D + 8 * len(specs) + 4 * int(model.cfg.d_model) * len(sites)
    owned = None
    if store_dir is not None:
        directory: Path | None = Path(store_dir)
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise AniraError(f"{directory}: store_dir must be empty or new")
    elif n * max_len * row_bytes > memory_limit_bytes:
        owned = tempfile.TemporaryDirectory(prefix="anira-probe-")
        directory = Path(owned.name)
    else:
        directory = None
    sink = _Sink(directory)

    counts = spread(int(n), ks)
    skipped: list[dict[str, Any]] = []
    next_id = 0
    done = 0
    total = sum(counts.values())
    was_training = model.training
    model.eval()
    try:
        for k, n_k in counts.items():
            rng = np.random.default_rng([int(seed), int(k)])
            left = n_k
            while left > 0:
                examples = [task.sample(k, rng, split=split) for _ in range(min(batch_size, left))]
                longest = max(len(e) for e in examples)
                if longest > max_len:
                    skipped.append({"difficulty": k, "reason": f"instances of length {longest} exceed max_len {max_len}"})
                    done += left
                    if progress is not None:
                        progress(done, total)
                    break
                n_rows = _collect_batch(model, task, examples, sink, specs, sites, depth_fn, next_id, keep, D)
                next_id += len(examples)
                left -= len(examples)
                done += len(examples)
                if progress is not None:
                    progress(done, total)
    finally:
        model.train(was_training)
    if next_id == 0:
        reasons = "; ".join(f"{s['difficulty']}: {s['reason']}" for s in skipped)
        raise AniraError(f"no instance could be collected ({reasons})")

    empty = {f"col.{c}": (np.dtype(dt), ()) for c, dt in BASE_COLUMNS.items()}
    empty.update({"q": (np.dtype("float32"), (D,)), "running": (np.dtype("bool"), (D,))})
    empty.update({f"feat.{f}": (np.dtype("float64"), ()) for f in specs})
    empty.update({f"hidden.{s}": (np.dtype("float32"), (int(model.cfg.d_model),)) for s in sites})
    arrays = sink.finish(empty)
    policy = getattr(model, "policy", None)
    info = {
        "task": task.name,
        "knob": task.knob,
        "policy": getattr(type(policy), "name", "unknown"),  # setup() shadows .name on modules
        "timing": "planted" if depth_fn is not None else getattr(policy, "timing", "unknown"),
        "policy_timing": getattr(policy, "timing", "unknown"),
        "depth_override": depth_fn is not None,
        "max_iters": D,
        "seed": int(seed),
        "split": split,
        "keep": keep,
        "difficulties": list(counts),
        "n_requested": int(n),
        "n_instances": next_id,
        "skipped": skipped,
        "stored_on_disk": directory is not None,
        **(meta or {}),
    }
    table = TokenTable(
        {c: np.asarray(arrays[f"col.{c}"]) for c in BASE_COLUMNS},
        np.asarray(arrays["q"]),
        np.asarray(arrays["running"]),
        {f: np.asarray(arrays[f"feat.{f}"]) for f in specs},
        specs,
        hidden={s: arrays[f"hidden.{s}"] for s in sites},
        meta=info,
    )
    if directory is not None:
        layout = {k: {"dtype": dt.str, "shape": [rows, *trailing]} for k, (dt, trailing, rows) in sink.layout.items()}
        write_manifest(directory, layout, specs, info)
    if owned is not None:
        own_tempdir(table, owned)
    return table


@torch.no_grad()
def _collect_batch(
    model: Any,
    task: Task,
    examples: list[Example],
    sink: _Sink,
    specs: dict[str, Any],
    sites: list[str],
    depth_fn: DepthFn | None,
    first_id: int,
    keep: str,
    D: int,
) -> int:
    batch = collate(examples)
    b, p = batch.tokens.shape
    tokens = torch.as_tensor(batch.tokens, device=model.device)
    kwargs: dict[str, Any] = {}
    forced = None
    if depth_fn is not None:
        forced = np.ones((b, p), dtype=np.int64)  # padding runs one iteration (it is never read)
        for i, e in enumerate(examples):
            depths = np.asarray(depth_fn(e), dtype=np.int64).reshape(-1)
            if depths.shape != (len(e),) or depths.min() < 1 or depths.max() > D:
                raise AniraError(f"depth_fn must return {len(e)} depths in 1..{D} per example")
            forced[i, : len(e)] = depths
        kwargs["exit_depths"] = torch.as_tensor(forced, device=model.device)
    if sites:
        out, cache = model.run_with_cache(tokens, names_filter=sites, **kwargs)
    else:
        out, cache = model(tokens, **kwargs), None

    exit_depth = out.exit_depth.cpu().numpy()
    q = out.q.float().cpu().numpy()
    if forced is not None:  # the rule made the decision: q is its point mass
        q = np.eye(D, dtype=np.float32)[forced - 1]
    expected = (q.astype(np.float64) * np.arange(1, D + 1)).sum(-1)
    running = out.running.cpu().numpy().transpose(1, 2, 0)  # (b, p, D)
    predicted = out.logits.argmax(-1).cpu().numpy()

    lengths = batch.lengths
    real = np.arange(p)[None, :] < lengths[:, None]
    if keep == "answer":
        mask = batch.answer_mask & real
    elif keep == "question":
        mask = batch.question_mask & real
    elif keep == "answer|question":
        mask = (batch.answer_mask | batch.question_mask) & real
    else:
        mask = real
    correct = np.array([task.score(e, predicted[i, : len(e)]) for i, e in enumerate(examples)])
    next_token = np.zeros_like(batch.tokens)
    next_token[:, :-1] = batch.tokens[:, 1:]
    token_correct = (predicted == next_token) & (np.arange(p)[None, :] < (lengths - 1)[:, None])

    ids = np.broadcast_to((first_id + np.arange(b))[:, None], (b, p))
    columns = {
        "instance": ids,
        "position": np.broadcast_to(np.arange(p)[None, :], (b, p)),
        "difficulty": np.broadcast_to(batch.difficulty[:, None], (b, p)),
        "token": batch.tokens,
        "is_answer": batch.answer_mask,
        "is_question": batch.question_mask,
        "correct": np.broadcast_to(correct[:, None], (b, p)),
        "token_correct": token_correct,
        "exit_depth": exit_depth,
        "expected_depth": expected,
        "complexity": _padded(examples, p, lambda e: e.complexity, np.nan),
    }
    for name, dtype in BASE_COLUMNS.items():
        sink.append(f"col.{name}", np.asarray(columns[name])[mask].astype(dtype))
    sink.append("q", q[mask].astype(np.float32))
    sink.append("running", running[mask].astype(bool))
    for name in specs:
        sink.append(f"feat.{name}", _padded(examples, p, lambda e: e.features.get(name), np.nan)[mask])
    for site in sites:
        sink.append(f"hidden.{site}", cache[site].float().cpu().numpy()[mask].astype(np.float32))
    return int(mask.sum())
