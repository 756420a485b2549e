"""Evaluation of a trained model on a task, per difficulty value.

Definitions (docs/evaluation.md states them in full):

* accuracy: exact match of the teacher-forced argmax predictions on every
  answer token (``task.score``).
* token_acc: the fraction of answer positions whose teacher-forced argmax
  prediction is right (``task.token_correct``), pooled over all answer
  positions of all instances (each answer token weighs the same).
* mean exit depth / mean expected depth over *answer* positions (positions
  ``i`` with ``answer_mask[i]``: position ``i`` computes the prediction of answer
  token ``i + 1``), pooled over all answer positions of all instances.
* execution cost: Σ_d |A_d|, the token-iterations actually executed on the
  non-pad tokens of one sequence; ``cost_ratio`` is the pooled cost divided by
  D × (number of non-pad tokens), i.e. 1.0 for a fixed-depth model.
* Spearman correlation of per-token exit depth (and expected depth) with the
  task's ground-truth complexity, over the positions where complexity is defined.

The metric math lives in pure numpy functions (:func:`rankdata`,
:func:`spearman`, :class:`Tally`) so it can be tested on hand-made arrays; the
model-facing loop (:func:`evaluate`) only gathers arrays into tallies.
The library never prints: long work reports through an optional ``progress``
callback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from anira.errors import AniraError
from anira.task import Example, Task, all_answers_right, collate

#: Bumped whenever a key of :meth:`EvalResult.to_dict` is renamed or removed
#: (adding keys is backwards compatible and does not bump it).
SCHEMA_VERSION = 1

#: ``progress(done, total)``: instances evaluated so far out of the total.
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------
# Pure metric math
# ---------------------------------------------------------------------------------------


def rankdata(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties receiving the average of the ranks they span (as scipy's default)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    n = a.shape[0]
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered) != 0) + 1])
    ends = np.concatenate([starts[1:], [n]])
    # a tie group occupying sorted slots start..end-1 gets the mean of ranks start+1..end
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks).

    NaN when fewer than two pairs remain or either side is constant: a fixed-depth
    model has no rank order, and reporting 0 would claim "no relation" falsely.
    Pairs where either value is NaN are dropped.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise AniraError(f"spearman: x has {xa.shape[0]} values but y has {ya.shape[0]}")
    keep = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[keep], ya[keep]
    if xa.shape[0] < 2:
        return math.nan
    rx, ry = rankdata(xa), rankdata(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denom == 0.0:
        return math.nan
    return float(np.clip(np.dot(rx, ry) / denom, -1.0, 1.0))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass
class Tally:
    """Additive sums over evaluated instances; :meth:`metrics` turns them into metrics.

    Tallies of different difficulties merge (:meth:`merge`) into the
    in-distribution / OOD summaries, so pooled metrics weight every token (or
    instance) equally rather than every difficulty.
    """

    max_iters: int
    n_instances: int = 0
    n_correct: int = 0
    n_tokens: int = 0  # non-pad positions
    n_answer: int = 0  # answer positions
    n_answer_scored: int = 0  # answer positions whose correctness was given (``answer_correct``)
    n_answer_correct: int = 0  # of those, the ones predicted right
    exit_all: float = 0.0  # Σ exit depth over non-pad positions
    expected_all: float = 0.0
    exit_answer: float = 0.0  # Σ exit depth over answer positions
    expected_answer: float = 0.0
    cost: float = 0.0  # Σ_d |A_d| over non-pad positions
    # per-token values where the ground-truth complexity is defined (for Spearman)
    complexity: list[np.ndarray] = field(default_factory=list)
    complexity_exit: list[np.ndarray] = field(default_factory=list)
    complexity_expected: list[np.ndarray] = field(default_factory=list)
    # the same for every task feature: name -> ([values], [exit depths], [expected depths])
    features: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)

    def add(
        self,
        *,
        correct: np.ndarray,
        exit_depth: np.ndarray,
        expected_depth: np.ndarray,
        token_mask: np.ndarray,
        answer_mask: np.ndarray,
        complexity: np.ndarray,
        running: np.ndarray | None = None,
        features: dict[str, np.ndarray] | None = None,
        answer_correct: np.ndarray | None = None,
    ) -> None:
        """Add one batch. Arrays are (b, p) except ``correct`` (b,) and ``running``
        (D, b, p); ``complexity`` and each of ``features`` (b, p) are NaN where undefined. Without ``running`` the
        cost is the sum of exit depths (equal by construction when every token
        runs iterations 1..d_i). ``answer_correct`` (b, p) marks the positions
        predicted right; only answer positions count. Without it the batch's
        answer tokens are left out of ``token_acc``."""
        token_mask = np.asarray(token_mask, dtype=bool)
        answer_mask = np.asarray(answer_mask, dtype=bool) & token_mask
        exit_depth = np.asarray(exit_depth, dtype=np.float64)
        expected_depth = np.asarray(expected_depth, dtype=np.float64)
        complexity = np.asarray(complexity, dtype=np.float64)
        correct = np.asarray(correct, dtype=bool).reshape(-1)
        self.n_instances += int(correct.shape[0])
        self.n_correct += int(correct.sum())
        self.n_tokens += int(token_mask.sum())
        self.n_answer += int(answer_mask.sum())
        if answer_correct is not None:
            answer_correct = np.asarray(answer_correct, dtype=bool)
            if answer_correct.shape != answer_mask.shape:
                raise AniraError(f"answer_correct has shape {answer_correct.shape}, answer_mask {answer_mask.shape}")
            self.n_answer_scored += int(answer_mask.sum())
            self.n_answer_correct += int((answer_correct & answer_mask).sum())
        self.exit_all += float(exit_depth[token_mask].sum())
        self.expected_all += float(expected_depth[token_mask].sum())
        self.exit_answer += float(exit_depth[answer_mask].sum())
        self.expected_answer += float(expected_depth[answer_mask].sum())
        if running is None:
            self.cost += float(exit_depth[token_mask].sum())
        else:
            self.cost += float(np.asarray(running, dtype=bool)[:, token_mask].sum())
        defined = token_mask & ~np.isnan(complexity)
        if defined.any():
            self.complexity.append(complexity[defined])
            self.complexity_exit.append(exit_depth[defined])
            self.complexity_expected.append(expected_depth[defined])
        for name, values in (features or {}).items():
            values = np.asarray(values, dtype=np.float64)
            defined = token_mask & ~np.isnan(values)
            vals, ex, ed = self.features.setdefault(name, ([], [], []))
            if defined.any():
                vals.append(values[defined])
                ex.append(exit_depth[defined])
                ed.append(expected_depth[defined])

    def merge(self, other: Tally) -> Tally:
        if other.max_iters != self.max_iters:
            raise AniraError(f"cannot merge tallies of D={self.max_iters} and D={other.max_iters}")
        out = Tally(max_iters=self.max_iters)
        for name in ("n_instances", "n_correct", "n_tokens", "n_answer", "n_answer_scored", "n_answer_correct",
                     "exit_all", "expected_all", "exit_answer", "expected_answer", "cost"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for name in ("complexity", "complexity_exit", "complexity_expected"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for src in (self.features, other.features):
            for name, parts in src.items():
                mine = out.features.setdefault(name, ([], [], []))
                for acc, extra in zip(mine, parts):
                    acc.extend(extra)
        return out

    @staticmethod
    def combine(tallies: Iterable[Tally], max_iters: int) -> Tally:
        out = Tally(max_iters=max_iters)
        for t in tallies:
            out = out.merge(t)
        return out

    def metrics(self) -> Metrics:
        cx = np.concatenate(self.complexity) if self.complexity else np.zeros(0)
        cx_exit = np.concatenate(self.complexity_exit) if self.complexity_exit else np.zeros(0)
        cx_exp = np.concatenate(self.complexity_expected) if self.complexity_expected else np.zeros(0)
        return Metrics(
            n=self.n_instances,
            accuracy=_ratio(self.n_correct, self.n_instances),
            mean_exit_depth=_ratio(self.exit_answer, self.n_answer),
            mean_expected_depth=_ratio(self.expected_answer, self.n_answer),
            mean_exit_depth_all=_ratio(self.exit_all, self.n_tokens),
            mean_expected_depth_all=_ratio(self.expected_all, self.n_tokens),
            execution_cost=_ratio(self.cost, self.n_instances),
            cost_ratio=_ratio(self.cost, self.max_iters * self.n_tokens),
            spearman_exit_depth=spearman(cx_exit, cx),
            spearman_expected_depth=spearman(cx_exp, cx),
            n_tokens=self.n_tokens,
            n_answer_tokens=self.n_answer,
            n_complexity_tokens=int(cx.shape[0]),
            feature_spearman={
                name: {"exit_depth": spearman(_cat(ex), _cat(vals)), "expected_depth": spearman(_cat(ed), _cat(vals))}
                for name, (vals, ex, ed) in sorted(self.features.items())
            },
            token_acc=_ratio(self.n_answer_correct, self.n_answer_scored),
            n_correct_answer_tokens=self.n_answer_correct,
        )


# ---------------------------------------------------------------------------------------
# Result types (the JSON schema, docs/evaluation.md)
# ---------------------------------------------------------------------------------------


@dataclass
class Metrics:
    """Metrics of a set of instances (one difficulty, or a pooled range)."""

    n: int  # instances
    accuracy: float
    mean_exit_depth: float  # over answer positions
    mean_expected_depth: float  # over answer positions
    mean_exit_depth_all: float  # over every non-pad position
    mean_expected_depth_all: float  # over every non-pad position (the LANO measure)
    execution_cost: float  # mean Σ_d |A_d| per sequence (non-pad tokens)
    cost_ratio: float  # pooled cost / (D × non-pad tokens)
    spearman_exit_depth: float  # NaN (null in JSON) when undefined
    spearman_expected_depth: float
    n_tokens: int
    n_answer_tokens: int
    n_complexity_tokens: int
    # Spearman of exit / expected depth with each task feature (e.g. LANO's parser
    # proxies, docs/paper.md §4), over the positions where the feature is defined
    feature_spearman: dict[str, dict[str, float]] = field(default_factory=dict)
    # answer tokens predicted right / answer tokens, pooled over instances (each token
    # weighs the same); NaN (null) when not measured, e.g. read from JSON of an older anira
    token_acc: float = math.nan
    n_correct_answer_tokens: int = 0


@dataclass
class DifficultyResult:
    difficulty: int
    in_train: bool  # inside ranges.train
    in_test_id: bool  # inside ranges.test_id
    in_test_ood: bool  # inside ranges.test_ood
    metrics: Metrics


@dataclass
class Summary:
    difficulties: list[int]
    metrics: Metrics


@dataclass
class Sample:
    """One evaluated instance, per position, for the heat-strip plot."""

    difficulty: int
    tokens: list[str]  # decoded token at each position
    exit_depth: list[int]  # at position i (the computation that predicts token i+1)
    expected_depth: list[float]
    answer_mask: list[bool]
    complexity: list[float | None]
    predicted: list[str]  # argmax prediction at position i (for token i+1)
    correct: bool


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; :meth:`to_dict` is the stable JSON schema."""

    task: str
    policy: str
    max_iters: int  # D
    knob: str
    language_modelling: bool
    ranges: dict[str, list[int]]  # train / test_id / test_ood -> [lo, hi]
    seed: int
    n_per_difficulty: int
    per_difficulty: list[DifficultyResult]
    in_distribution: Summary | None
    ood: Summary | None
    samples: list[Sample] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"difficulty", "reason"}
    feature_kinds: dict[str, str] = field(default_factory=dict)  # task feature -> "static" | "execution"
    feature_descriptions: dict[str, str] = field(default_factory=dict)  # task feature -> one-line definition
    label: str | None = None
    checkpoint: str | None = None  # resolved checkpoint directory, when evaluated from one
    step: int | None = None  # training step of that checkpoint
    anira_version: str = ""

    def difficulty(self, k: int) -> DifficultyResult:
        for row in self.per_difficulty:
            if row.difficulty == k:
                return row
        raise AniraError(f"difficulty {k} was not evaluated")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"schema_version": SCHEMA_VERSION, **data}
        return _json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        # allow_nan=False: undefined metrics are null, never the non-standard NaN token
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AniraError(f"evaluation JSON has schema_version {version!r}; this anira reads {SCHEMA_VERSION}")
        try:
            def metrics(d: dict[str, Any]) -> Metrics:
                d = dict(d)
                feats = {f: {k: math.nan if v is None else v for k, v in rho.items()}
                         for f, rho in d.pop("feature_spearman", {}).items()}
                return Metrics(**{k: (math.nan if v is None else v) for k, v in d.items()}, feature_spearman=feats)

            def summary(d: dict[str, Any] | None) -> Summary | None:
                return None if d is None else Summary(list(d["difficulties"]), metrics(d["metrics"]))

            fields = dict(data)
            fields.pop("schema_version")
            fields["per_difficulty"] = [
                DifficultyResult(**{**row, "metrics": metrics(row["metrics"])}) for row in data["per_difficulty"]
            ]
            fields["in_distribution"] = summary(data["in_distribution"])
            fields["ood"] = summary(data["ood"])
            fields["samples"] = [Sample(**s) for s in data.get("samples", [])]
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise AniraError(f"evaluation JSON does not match schema {SCHEMA_VERSION}: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AniraError(f"evaluation JSON is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AniraError("evaluation JSON must be an object")
        return cls.from_dict(data)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------
# The model-facing loop
# ---------------------------------------------------------------------------------------


def default_difficulties(task: Task) -> list[int]:
    """Every difficulty of the in-distribution and OOD test ranges, ascending."""
    return sorted(set(task.ranges.values("test_id")) | set(task.ranges.values("test_ood")))


def eval_instances(task: Task, difficulty: int, n: int, seed: int = 0) -> list[Example]:
    """The ``n`` test instances of ``difficulty`` that :func:`evaluate` (``anira eval
    --seed``) scores: drawn from ``np.random.default_rng([seed, difficulty])``, so they do
    not depend on which other difficulties are evaluated. Analysis scripts that compare
    with an evaluation call this rather than re-deriving the seeding."""
    rng = np.random.default_rng([int(seed), int(difficulty)])
    return [task.sample(difficulty, rng, split="test") for _ in range(n)]


def _in(k: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= k <= bounds[1]


def _padded(examples: list[Example], width: int, attr: str, fill: float) -> np.ndarray:
    out = np.full((len(examples), width), fill, dtype=np.float64)
    for j, e in enumerate(examples):
        out[j, : len(e)] = getattr(e, attr)
    return out


def _padded_feature(examples: list[Example], width: int, name: str) -> np.ndarray:
    out = np.full((len(examples), width), math.nan, dtype=np.float64)
    for j, e in enumerate(examples):
        if name in e.features:  # a task may leave a feature out (e.g. LANO without proxies)
            out[j, : len(e)] = e.features[name]
    return out


def _sample(task: Task, example: Example, row: int, out: Any, predicted: np.ndarray, correct: bool) -> Sample:
    n = len(example)
    return Sample(
        difficulty=example.difficulty,
        tokens=[task.decode([int(t)]) for t in example.tokens],
        exit_depth=[int(d) for d in out.exit_depth[row, :n].tolist()],
        expected_depth=[round(float(d), 6) for d in out.expected_depth[row, :n].tolist()],
        answer_mask=[bool(a) for a in example.answer_mask],
        complexity=[None if math.isnan(c) else float(c) for c in np.asarray(example.complexity, dtype=float)],
        predicted=[task.decode([int(t)]) if int(t) != task.tokenizer.pad_id else "" for t in predicted[:n]],
        correct=bool(correct),
    )


def _score_batch(task: Task, chunk: list[Example], predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact match per instance (b,) and right answer positions (b, p), or None where
    the task redefines ``score`` without ``token_correct``: then its per-token
    rule is unknown and ``token_acc`` is left undefined rather than contradicting
    its exact match."""
    cls = type(task)
    own_score = cls.score is not Task.score
    if own_score and cls.token_correct is Task.token_correct:
        return np.array([task.score(e, predicted[j, : len(e)]) for j, e in enumerate(chunk)], dtype=bool), None
    right = np.zeros(predicted.shape, dtype=bool)
    for j, e in enumerate(chunk):
        right[j, : len(e)] = task.token_correct(e, predicted[j, : len(e)])
    # Task.score is exactly this; computing it here saves a second pass (LANO parses)
    whole = np.array([all_answers_right(e, right[j]) for j, e in enumerate(chunk)], dtype=bool)
    if own_score:
        correct = np.array([task.score(e, predicted[j, : len(e)]) for j, e in enumerate(chunk)], dtype=bool)
        if not np.array_equal(correct, whole):
            raise AniraError(f"{task.name}: score() and token_correct() disagree on an instance "
                             "(exact match must be every answer token right)")
        return correct, right
    return whole, right


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AniraError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def evaluate(
    model: Any,
    task: Task,
    *,
    n_per_difficulty: int = 64,
    seed: int = 0,
    difficulties: Sequence[int] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    n_samples: int = 1,
    progress: Progress | None = None,
    label: str | None = None,
    checkpoint: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``n_per_difficulty`` test instances of every difficulty.

    Instances of difficulty ``k`` come from ``np.random.default_rng([seed, k])``
    on the test side of the task's instance space, so a difficulty's instances
    do not depend on which other difficulties are evaluated. Difficulties whose
    instances exceed the model's ``max_len`` are listed in ``skipped``.
    ``device`` moves the model there (default: where it already is); the
    model's train/eval mode is restored afterwards. The first ``n_samples``
    instances of each difficulty are kept per position for plots.
    """
    n_per_difficulty = _check_positive("n_per_difficulty", n_per_difficulty)
    batch_size = _check_positive("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AniraError(f"seed must be a non-negative integer, got {seed!r}")
    if n_samples < 0:
        raise AniraError(f"n_samples must be >= 0, got {n_samples!r}")
    ks = default_difficulties(task) if difficulties is None else sorted(set(int(k) for k in difficulties))
    if not ks:
        raise AniraError("no difficulty values to evaluate")
    for k in ks:
        task.check_difficulty(k)
    if device is not None:
        model.to(device)
    D = int(model.cfg.max_iters)
    max_len = int(model.cfg.max_len)
    ranges = task.ranges
    total = len(ks) * n_per_difficulty
    done = 0
    rows: list[DifficultyResult] = []
    tallies: dict[int, Tally] = {}
    samples: list[Sample] = []
    skipped: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for k in ks:
            examples = eval_instances(task, k, n_per_difficulty, seed)
            longest = max(len(e) for e in examples)
            if longest > max_len:
                skipped.append({"difficulty": k, "reason": f"instances of {longest} tokens exceed the model's max_len {max_len}"})
                done += n_per_difficulty
                if progress:
                    progress(done, total)
                continue
            tally = Tally(max_iters=D)
            for start in range(0, n_per_difficulty, batch_size):
                chunk = examples[start : start + batch_size]
                batch = collate(chunk, pad_id=task.tokenizer.pad_id)
                with torch.no_grad():
                    out = model(torch.from_numpy(batch.tokens))
                predicted = out.logits.argmax(-1).cpu().numpy()
                correct, answer_correct = _score_batch(task, chunk, predicted)
                width = batch.tokens.shape[1]
                token_mask = np.arange(width)[None, :] < batch.lengths[:, None]
                tally.add(
                    correct=correct,
                    exit_depth=out.exit_depth.cpu().numpy(),
                    expected_depth=out.expected_depth.float().cpu().numpy(),
                    token_mask=token_mask,
                    answer_mask=batch.answer_mask,
                    complexity=_padded(chunk, width, "complexity", math.nan),
                    running=out.running.cpu().numpy(),
                    features={spec.name: _padded_feature(chunk, width, spec.name) for spec in task.features},
                    answer_correct=answer_correct,
                )
                for j in range(max(0, min(n_samples - start, len(chunk)))):
                    samples.append(_sample(task, chunk[j], j, out, predicted[j], bool(correct[j])))
                done += len(chunk)
                if progress:
                    progress(done, total)
            tallies[k] = tally
            rows.append(
                DifficultyResult(
                    difficulty=k,
                    in_train=_in(k, ranges.train),
                    in_test_id=_in(k, ranges.test_id),
                    in_test_ood=_in(k, ranges.test_ood),
                    metrics=tally.metrics(),
                )
            )
    finally:
        model.train(was_training)

    def summary(which: tuple[int, int]) -> Summary | None:
        chosen = [k for k in tallies if _in(k, which)]
        if not chosen:
            return None
        return Summary(chosen, Tally.combine((tallies[k] for k in chosen), D).metrics())

    from anira import __version__

    return EvalResult(
        task=task.name,
        # the class attribute: TransformerLens' setup() sets every submodule's
        # instance ``name`` to its module path ("policy")
        policy=str(getattr(type(model.policy), "name", type(model.policy).__name__)),
        max_iters=D,
        knob=task.knob,
        language_modelling=bool(task.language_modelling),
        ranges={w: [int(v) for v in getattr(ranges, w)] for w in ("train", "test_id", "test_ood")},
        seed=int(seed),
        n_per_difficulty=n_per_difficulty,
        per_difficulty=rows,
        in_distribution=summary(ranges.test_id),
        ood=summary(ranges.test_ood),
        samples=samples,
        skipped=skipped,
        feature_kinds={spec.name: spec.kind for spec in task.features},
        feature_descriptions={spec.name: spec.description for spec in task.features},
        label=label,
        checkpoint=checkpoint,
        anira_version=__version__,
    )


def evaluate_checkpoint(
    path: str | Path,
    *,
    label: str | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> EvalResult:
    """Load a checkpoint (or a run directory's latest checkpoint) and :func:`evaluate` it.

    ``options`` are :func:`evaluate`'s keyword arguments. The result records the
    resolved checkpoint directory and step, and is labelled with the directory
    name unless ``label`` is given.
    """
    from anira.checkpoint import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise AniraError(f"{path}: no such checkpoint or run directory")
    ck = load_checkpoint(path, device=device or "cpu")
    result = evaluate(ck.model, ck.task, checkpoint=str(ck.path), label=label or default_label(path, ck.path), **options)
    result.step = ck.step
    return result


def default_label(given: Path, resolved: Path) -> str:
    """The name a user would recognise: the directory they named (a run directory
    resolves to ``<run>/checkpoints/step-N``, whose own name says little)."""
    return given.resolve().name or str(given)
