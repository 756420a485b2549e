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

**Selection null control** (``null_control=True``): every batch (instances
of one size) is run a second time with its depths permuted among the
positions of the same role (answer / question / other) across the batch —
depths that no longer depend on any feature within a size — and the
instances are scored again. ``table.null`` holds those rows (same rows and
features; permuted depths and q; the correctness those depths give). A suite
that keeps only solved instances reads the null table through the same
filter: whatever signal it finds there, the filter made.

One permutation is one random draw of what the filter makes.
``null_permutations=K`` re-runs every batch K times, each with its own
independent permutation, into ``table.nulls`` (K tables; ``table.null`` is the
first). Draw 0 permutes with ``default_rng([seed, k, NULL_STREAM])`` for
difficulty k, as a single null always has (so K = 1 is the table it always
was); draw j ≥ 1 with ``default_rng([seed, k, NULL_STREAM, j])``. Each draw
costs one more forward pass per batch, without hidden states, unless its
depths repeat an earlier draw's (a fixed-depth model's always do): the model
is deterministic, so that draw reuses the earlier outcome.

:func:`planted_table` builds the same table without a model: depths from a
rule, correctness from a rule — the suites' planted-truth tests use it.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from anira.errors import AniraError
from anira.probes.table import BASE_COLUMNS, TokenTable, null_dir, open_array, own_tempdir, write_manifest
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


# ---------------------------------------------------------------------------------------
# Runners: what produces depths and correctness for a batch
# ---------------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """One batch's per-position results, (b, p[, D]) arrays."""

    exit_depth: np.ndarray  # int, 1..D
    q: np.ndarray  # float32 (b, p, D)
    running: np.ndarray  # bool (b, p, D): computing at iteration t
    correct: np.ndarray  # bool (b,): the instance is solved (task.score)
    token_correct: np.ndarray  # bool (b, p): the prediction at i equals token i+1
    hidden: dict[str, np.ndarray] = field(default_factory=dict)  # site -> (b, p, d_model)


class ModelRunner:
    """Runs the model (eval mode, no gradients); ``forced`` depths go to ``exit_depths=``."""

    def __init__(self, model: Any, task: Task) -> None:
        self.model = model
        self.task = task
        self.max_iters = int(model.cfg.max_iters)

    @torch.no_grad()
    def __call__(self, examples: list[Example], batch: Any, forced: np.ndarray | None,
                 sites: Sequence[str] = ()) -> BatchOutcome:
        model = self.model
        tokens = torch.as_tensor(batch.tokens, device=model.device)
        # policies that read the input see the task's per-token features (ctx.features)
        kwargs: dict[str, Any] = {"features": feature_tensors(examples, batch.tokens.shape[1], model.device)}
        if forced is not None:
            kwargs["exit_depths"] = torch.as_tensor(forced, device=model.device)
        if sites:
            out, cache = model.run_with_cache(tokens, names_filter=list(sites), **kwargs)
        else:
            out, cache = model(tokens, **kwargs), None
        b, p = batch.tokens.shape
        predicted = out.logits.argmax(-1).cpu().numpy()
        correct = np.array([self.task.score(e, predicted[i, : len(e)]) for i, e in enumerate(examples)])
        next_token = np.zeros_like(batch.tokens)
        next_token[:, :-1] = batch.tokens[:, 1:]
        token_correct = (predicted == next_token) & (np.arange(p)[None, :] < (batch.lengths - 1)[:, None])
        hidden = {s: cache[s].float().cpu().numpy() for s in sites} if cache is not None else {}
        return BatchOutcome(
            exit_depth=out.exit_depth.cpu().numpy(),
            q=out.q.float().cpu().numpy(),
            running=out.running.cpu().numpy().transpose(1, 2, 0),
            correct=correct,
            token_correct=token_correct,
            hidden=hidden,
        )


def feature_tensors(examples: list[Example], width: int, device: Any = None) -> dict[str, torch.Tensor]:
    """The examples' per-token task features as (b, width) float32 tensors (NaN where
    undefined and on padding): what ``model(tokens, features=...)`` hands a policy
    as ``ctx.features``."""
    names = list(examples[0].features) if examples else []
    return {name: torch.as_tensor(_padded(examples, width, lambda e, n=name: e.features.get(n), np.nan),
                                  dtype=torch.float32, device=device) for name in names}


#: ``correct_fn(example, depths) -> bool``: is the instance solved when its positions
#: run ``depths`` iterations (planted tables, where no model decides it)
CorrectFn = Callable[[Example, np.ndarray], bool]


class PlantedRunner:
    """No model: every position runs its forced depth; the instance is solved when
    ``correct_fn(example, depths)`` says so (always, by default)."""

    def __init__(self, max_iters: int, correct_fn: CorrectFn | None = None) -> None:
        self.max_iters = int(max_iters)
        self.correct_fn = correct_fn

    def __call__(self, examples: list[Example], batch: Any, forced: np.ndarray | None,
                 sites: Sequence[str] = ()) -> BatchOutcome:
        if forced is None:
            raise AniraError("a planted table needs depths (depth_fn)")
        D = self.max_iters
        depth = np.asarray(forced, dtype=np.int64)
        correct = np.array([True if self.correct_fn is None else bool(self.correct_fn(e, depth[i, : len(e)]))
                            for i, e in enumerate(examples)])
        p = depth.shape[1]
        token_correct = np.broadcast_to(correct[:, None], depth.shape) & (np.arange(p)[None, :] < (batch.lengths - 1)[:, None])
        return BatchOutcome(
            exit_depth=depth,
            q=np.eye(D, dtype=np.float32)[depth - 1],
            running=np.arange(D)[None, None, :] < depth[..., None],
            correct=correct,
            token_correct=token_correct,
        )


# ---------------------------------------------------------------------------------------
# The selection null control
# ---------------------------------------------------------------------------------------


def position_roles(batch: Any) -> np.ndarray:
    """(b, p) int: 1 answer positions, 2 question positions, 0 other real positions, -1 padding."""
    real = np.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]
    roles = np.where(batch.answer_mask, 1, np.where(batch.question_mask, 2, 0))
    return np.where(real, roles, -1)


def permute_within_roles(depth: np.ndarray, q: np.ndarray, roles: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle (depth, q) pairs among the positions of each role across the batch
    (a batch holds instances of one size: the permutation is within size).
    Padding (role -1) keeps depth 1."""
    new_depth = np.ones_like(depth)
    new_q = np.array(q, copy=True)
    for role in (0, 1, 2):
        idx = np.flatnonzero(roles.ravel() == role)
        if idx.size == 0:
            continue
        src = idx[rng.permutation(idx.size)]
        new_depth.ravel()[idx] = depth.ravel()[src]
        new_q.reshape(-1, q.shape[-1])[idx] = q.reshape(-1, q.shape[-1])[src]
    return new_depth, new_q


# ---------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------


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
    null_control: bool = False,
    null_permutations: int = 1,
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
    ``table.meta["skipped"]``. ``null_control``: also build ``table.null`` —
    each batch re-run with its depths permuted within size (module docstring);
    ``null_permutations``: how many independent permutations (``table.nulls``).
    """
    sites = check_hidden_sites(model, hidden_sites)
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        policy = getattr(model, "policy", None)
        info = {
            "policy": getattr(type(policy), "name", "unknown"),  # setup() shadows .name on modules
            "timing": "planted" if depth_fn is not None else getattr(policy, "timing", "unknown"),
            "policy_timing": getattr(policy, "timing", "unknown"),
        }
        return _collect(ModelRunner(model, task), task, n=n, seed=seed, split=split, difficulties=difficulties,
                        batch_size=batch_size, keep=keep, sites=sites, d_model=int(model.cfg.d_model),
                        max_len=int(model.cfg.max_len), depth_fn=depth_fn, null_control=null_control,
                        null_permutations=null_permutations, store_dir=store_dir,
                        memory_limit_bytes=memory_limit_bytes, progress=progress,
                        meta={**info, **(meta or {})})
    finally:
        model.train(was_training)


def planted_table(
    task: Task,
    depth_fn: DepthFn,
    *,
    max_iters: int,
    n: int = 500,
    seed: int = 0,
    split: str = "test",
    difficulties: Sequence[int] | None = None,
    batch_size: int = 64,
    keep: str = "answer|question",
    correct_fn: CorrectFn | None = None,
    null_control: bool = False,
    null_permutations: int = 1,
    meta: dict[str, Any] | None = None,
) -> TokenTable:
    """The table :func:`collect` would give for a model that halts by ``depth_fn``
    and solves an instance when ``correct_fn(example, depths)`` (always when None),
    built without any model: the same instances, rows, features, token ids and
    positions, and the same null control. For validating the suites on a known
    answer (tests/test_probe_matrix.py, docs/probes.md)."""
    if depth_fn is None:
        raise AniraError("planted_table needs a depth_fn")
    info = {"policy": "planted", "timing": "planted", "policy_timing": "planted"}
    return _collect(PlantedRunner(max_iters, correct_fn), task, n=n, seed=seed, split=split,
                    difficulties=difficulties, batch_size=batch_size, keep=keep, sites=[], d_model=0,
                    max_len=max(task.max_len(k) for k in _difficulties(task, difficulties)), depth_fn=depth_fn,
                    null_control=null_control, null_permutations=null_permutations, store_dir=None,
                    memory_limit_bytes=DEFAULT_MEMORY_LIMIT,
                    progress=None, meta={**info, **(meta or {})})


def _difficulties(task: Task, difficulties: Sequence[int] | None) -> list[int]:
    ks = list(task.ranges.values("test_id")) if difficulties is None else sorted({int(k) for k in difficulties})
    if not ks:
        raise AniraError("no difficulty values to collect")
    for k in ks:
        task.check_difficulty(k)
    return ks


def _collect(runner: Any, task: Task, *, n: int, seed: int, split: str, difficulties: Sequence[int] | None,
             batch_size: int, keep: str, sites: list[str], d_model: int, max_len: int, depth_fn: DepthFn | None,
             null_control: bool, null_permutations: int, store_dir: str | Path | None, memory_limit_bytes: int,
             progress: Progress | None, meta: dict[str, Any]) -> TokenTable:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise AniraError(f"n must be a positive integer, got {n!r}")
    check_null_permutations(null_permutations)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise AniraError(f"batch_size must be a positive integer, got {batch_size!r}")
    if keep not in ("answer", "question", "answer|question", "all"):
        raise AniraError(f"keep must be answer, question, answer|question or all; got {keep!r}")
    if split not in ("train", "test"):
        raise AniraError(f"split must be 'train' or 'test', got {split!r}")
    ks = _difficulties(task, difficulties)
    D = runner.max_iters
    specs = {spec.name: spec for spec in task.features}

    # memory: rows are at most n * max_len; a row costs its columns plus hidden states
    row_bytes = 64 + 5 * D + 8 * len(specs) + 4 * d_model * len(sites)
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
    null_sinks = [_Sink(None) for _ in range(int(null_permutations))] if null_control else []

    counts = spread(int(n), ks)
    skipped: list[dict[str, Any]] = []
    next_id = 0
    done = 0
    total = sum(counts.values())
    for k, n_k in counts.items():
        rng = np.random.default_rng([int(seed), int(k)])
        null_rngs = null_generators(seed, k, len(null_sinks))
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
            _collect_batch(runner, examples, sink, null_sinks, null_rngs, specs, sites, depth_fn, next_id, keep, D)
            next_id += len(examples)
            left -= len(examples)
            done += len(examples)
            if progress is not None:
                progress(done, total)
    if next_id == 0:
        reasons = "; ".join(f"{s['difficulty']}: {s['reason']}" for s in skipped)
        raise AniraError(f"no instance could be collected ({reasons})")

    empty = {f"col.{c}": (np.dtype(dt), ()) for c, dt in BASE_COLUMNS.items()}
    empty.update({"q": (np.dtype("float32"), (D,)), "running": (np.dtype("bool"), (D,))})
    empty.update({f"feat.{f}": (np.dtype("float64"), ()) for f in specs})
    hidden_empty = {f"hidden.{s}": (np.dtype("float32"), (d_model,)) for s in sites}
    arrays = sink.finish({**empty, **hidden_empty})
    info = {
        "task": task.name,
        "knob": task.knob,
        **meta,
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
        "null_control": bool(null_control),
        "null_permutations": len(null_sinks),
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
    for draw, null_sink in enumerate(null_sinks):
        null_arrays = null_sink.finish(empty)
        table.nulls.append(TokenTable(
            {c: np.asarray(null_arrays[f"col.{c}"]) for c in BASE_COLUMNS},
            np.asarray(null_arrays["q"]),
            np.asarray(null_arrays["running"]),
            {f: table.feature(f) for f in specs},  # the same rows: share the feature arrays
            specs,
            meta={**info, "null": "depths permuted within size (and role), model re-run with them",
                  **({"null_draw": draw} if draw else {})},
        ))
    if directory is not None:
        layout = {k: {"dtype": dt.str, "shape": [rows, *trailing]} for k, (dt, trailing, rows) in sink.layout.items()}
        write_manifest(directory, layout, specs, info)
        for draw, null in enumerate(table.nulls):
            null.save(directory / null_dir(draw))
    if owned is not None:
        own_tempdir(table, owned)
    return table


#: a seed stream apart from the instances' for the null control's permutations
NULL_STREAM = 0x5E1EC7


def check_null_permutations(value: Any) -> int:
    """``value`` as a number of null draws (a positive integer), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AniraError(f"null_permutations must be a positive integer, got {value!r}")
    return int(value)


def null_generators(seed: int, difficulty: int, draws: int) -> list[np.random.Generator]:
    """One independent generator per null draw for the batches of ``difficulty``: draw 0
    the stream a single null control has always used, draw j ≥ 1 its own."""
    return [np.random.default_rng([int(seed), int(difficulty), NULL_STREAM, *([j] if j else [])])
            for j in range(draws)]


def _keep_mask(batch: Any, keep: str) -> np.ndarray:
    real = np.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]
    if keep == "answer":
        return batch.answer_mask & real
    if keep == "question":
        return batch.question_mask & real
    if keep == "answer|question":
        return (batch.answer_mask | batch.question_mask) & real
    return real


def _forced_depths(depth_fn: DepthFn, examples: list[Example], shape: tuple[int, int], D: int) -> np.ndarray:
    forced = np.ones(shape, dtype=np.int64)  # padding runs one iteration (it is never read)
    for i, e in enumerate(examples):
        depths = np.asarray(depth_fn(e), dtype=np.int64).reshape(-1)
        if depths.shape != (len(e),) or depths.min() < 1 or depths.max() > D:
            raise AniraError(f"depth_fn must return {len(e)} depths in 1..{D} per example")
        forced[i, : len(e)] = depths
    return forced


def _collect_batch(
    runner: Any,
    examples: list[Example],
    sink: _Sink,
    null_sinks: list[_Sink],
    null_rngs: list[np.random.Generator],
    specs: dict[str, Any],
    sites: list[str],
    depth_fn: DepthFn | None,
    first_id: int,
    keep: str,
    D: int,
) -> None:
    batch = collate(examples)
    b, p = batch.tokens.shape
    forced = None if depth_fn is None else _forced_depths(depth_fn, examples, (b, p), D)
    out = runner(examples, batch, forced, sites)
    q = out.q
    if forced is not None:  # the rule made the decision: q is its point mass
        q = np.eye(D, dtype=np.float32)[forced - 1]
    mask = _keep_mask(batch, keep)
    _append_rows(sink, examples, batch, mask, first_id, out.exit_depth, q, out.running, out.correct,
                 out.token_correct, specs)
    for site in sites:
        sink.append(f"hidden.{site}", out.hidden[site][mask].astype(np.float32))
    roles = position_roles(batch) if null_sinks else None
    seen: list[tuple[np.ndarray, BatchOutcome]] = []  # the draws' depths run so far, and what they gave
    for null_sink, null_rng in zip(null_sinks, null_rngs):
        depth, q_null = permute_within_roles(np.asarray(out.exit_depth, dtype=np.int64), q, roles, null_rng)
        # the same depths give the same outcome: a draw that repeats an earlier one (every draw
        # of a fixed-depth model) is not run again
        again = next((done for prev, done in seen if np.array_equal(prev, depth)), None)
        if again is None:
            again = runner(examples, batch, depth, ())
            seen.append((depth, again))
        running = np.arange(D)[None, None, :] < depth[..., None]
        _append_rows(null_sink, examples, batch, mask, first_id, depth, q_null, running, again.correct,
                     again.token_correct, specs)


def _append_rows(sink: _Sink, examples: list[Example], batch: Any, mask: np.ndarray, first_id: int,
                 exit_depth: np.ndarray, q: np.ndarray, running: np.ndarray, correct: np.ndarray,
                 token_correct: np.ndarray, specs: dict[str, Any]) -> None:
    b, p = batch.tokens.shape
    D = q.shape[-1]
    expected = (q.astype(np.float64) * np.arange(1, D + 1)).sum(-1)
    columns = {
        "instance": np.broadcast_to((first_id + np.arange(b))[:, None], (b, p)),
        "position": np.broadcast_to(np.arange(p)[None, :], (b, p)),
        "difficulty": np.broadcast_to(batch.difficulty[:, None], (b, p)),
        "token": batch.tokens,
        "is_answer": batch.answer_mask,
        "is_question": batch.question_mask,
        "correct": np.broadcast_to(np.asarray(correct)[:, None], (b, p)),
        "token_correct": token_correct,
        "exit_depth": exit_depth,
        "expected_depth": expected,
        "complexity": _padded(examples, p, lambda e: e.complexity, np.nan),
    }
    for name, dtype in BASE_COLUMNS.items():
        sink.append(f"col.{name}", np.asarray(columns[name])[mask].astype(dtype))
    sink.append("q", q[mask].astype(np.float32))
    sink.append("running", np.asarray(running)[mask].astype(bool))
    for name in specs:
        sink.append(f"feat.{name}", _padded(examples, p, lambda e: e.features.get(name), np.nan)[mask])
