"""The task interface: complexity-controlled data with per-token ground truth.

Alignment convention (used by every task, the trainer, evaluation and probes):
every per-token array is indexed by *input position* ``i`` and describes the
computation the model does at position ``i``, which predicts token ``i + 1``.
So ``answer_mask[i]`` is True when token ``i + 1`` is an answer token, and the
features at such a position describe the step of the solving algorithm that
produces that answer token. At question positions (``question_mask``) the
features describe reading token ``i``: either the state the reader is in when
token ``i`` arrives (MANO's stack depth ``d`` and owed operands ``r`` before
the token, and ``s``/``s_ops``, what token ``i - 1`` completed, as the paper
defines them) or the work that reading token ``i`` causes (MANO's
``reductions``, LANO's parser proxies, from the chart column after token
``i``). Each :class:`FeatureSpec` description says which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from anira.errors import AniraError

FeatureKind = Literal["static", "execution"]
Split = Literal["train", "test"]

#: Share of the instance space (by hash) reserved for evaluation sets; the
#: training sampler never produces these instances, the test sampler only these.
EVAL_SHARE = 0.1


@dataclass(frozen=True)
class FeatureSpec:
    """One per-token feature a task computes."""

    name: str
    kind: FeatureKind  # "static": readable from the input; "execution": state of the solver
    description: str
    discrete: bool = True  # discrete -> classification probes, else ridge regression
    where: Literal["answer", "question", "all"] = "answer"  # positions where it is defined

    def __post_init__(self) -> None:
        if self.kind not in ("static", "execution"):
            raise AniraError(f"feature {self.name!r} has kind {self.kind!r}; expected 'static' or 'execution'")


class Tokenizer:
    """A fixed vocabulary of readable token strings; id 0 is padding."""

    PAD = "<pad>"

    def __init__(self, tokens: list[str]) -> None:
        vocab = [self.PAD] + [t for t in tokens if t != self.PAD]
        if len(set(vocab)) != len(vocab):
            raise AniraError("tokenizer vocabulary has duplicate tokens")
        self.vocab: list[str] = vocab
        self.index: dict[str, int] = {t: i for i, t in enumerate(vocab)}

    @property
    def pad_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, tokens: list[str]) -> list[int]:
        try:
            return [self.index[t] for t in tokens]
        except KeyError as exc:
            raise AniraError(f"token {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Any) -> str:
        """Readable text: tokens separated by spaces, padding dropped."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not isinstance(i, int) or not 0 <= i < len(self.vocab):
                raise AniraError(f"token id {i} is outside the vocabulary of {len(self.vocab)}")
            if i != self.pad_id:
                out.append(self.vocab[i])
        return " ".join(out)


@dataclass
class Example:
    """One generated instance; every array has one entry per input position."""

    tokens: np.ndarray  # int64 [n]
    loss_mask: np.ndarray  # bool [n]: position i is trained (predicts token i+1)
    answer_mask: np.ndarray  # bool [n]: token i+1 is an answer token (scored)
    question_mask: np.ndarray  # bool [n]: token i belongs to the question
    complexity: np.ndarray  # float [n]: ground-truth per-token complexity, NaN where undefined
    features: dict[str, np.ndarray]  # name -> float [n], NaN where undefined
    instance: dict[str, Any]  # the structured instance, readable, JSON-able
    difficulty: int
    answer: list[str] = field(default_factory=list)  # readable answer tokens

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class DifficultyRanges:
    """Inclusive difficulty ranges for training, in-distribution and OOD tests."""

    train: tuple[int, int]
    test_id: tuple[int, int]
    test_ood: tuple[int, int]

    def values(self, which: str) -> list[int]:
        lo, hi = getattr(self, which)
        return list(range(lo, hi + 1))


def instance_key(tokens: list[int] | np.ndarray) -> bytes:
    """A stable fingerprint of an instance (its question tokens)."""
    return hashlib.blake2b(np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=8).digest()


def is_eval_instance(tokens: list[int] | np.ndarray) -> bool:
    """True when an instance belongs to the evaluation share of the instance space."""
    return int.from_bytes(instance_key(tokens), "little") / 2**64 < EVAL_SHARE


def all_answers_right(example: Example, right: np.ndarray) -> bool:
    """Exact match from per-position correctness (:meth:`Task.token_correct`): right at
    every answer position. The last position predicts no token, so it is never scored."""
    return bool(np.all(right[: len(example) - 1][example.answer_mask[:-1]]))


class Task:
    """Base class of every task. Subclasses set the class attributes and ``_generate``
    (or ``_draft``).

    ``sample(difficulty, rng, split)`` draws instances until one falls on the
    requested side of the train/test partition (by instance hash), so
    evaluation sets are disjoint from training data by construction. Only the
    instance it returns is built into a full example.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    knob: ClassVar[str] = "difficulty"  # what the difficulty counts (e.g. "L = number of operators")
    language_modelling: ClassVar[bool] = False  # train on every token
    features: ClassVar[tuple[FeatureSpec, ...]] = ()
    complexity_description: ClassVar[str] = ""
    default_ranges: ClassVar[DifficultyRanges]
    min_difficulty: ClassVar[int] = 1
    max_difficulty: ClassVar[int] = 10_000
    default_max_iters: ClassVar[int] = 6  # the paper's D for this task

    tokenizer: Tokenizer

    def __init__(self, ranges: DifficultyRanges | None = None) -> None:
        self.ranges = ranges or self.default_ranges
        for which in ("train", "test_id", "test_ood"):
            lo, hi = getattr(self.ranges, which)
            if lo > hi:
                raise AniraError(f"{self.name}: {which} range {lo}..{hi} is empty")
            self.check_difficulty(lo)
            self.check_difficulty(hi)

    # --- to implement: _generate, or _draft when building an example is costly ---------
    def _generate(self, difficulty: int, rng: np.random.Generator) -> Example:
        """One random example at ``difficulty``, drawn with ``rng`` only."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate nor _draft")

    def _draft(self, difficulty: int, rng: np.random.Generator) -> tuple[np.ndarray, Callable[[], Example]]:
        """A random instance as (its question tokens, a function building its example).

        The question tokens decide the instance's side of the train/test
        partition, so :meth:`sample` builds only the instances it keeps (a test
        draw keeps one in ten). The default builds the example at once; a task
        whose examples are costly to build (features, a parse) overrides this,
        drawing everything random here and leaving the building to the function.
        """
        example = self._generate(difficulty, rng)
        return self.question_tokens(example), lambda: example

    def question_tokens(self, example: Example) -> np.ndarray:
        """The tokens that identify the instance (used for the train/test partition)."""
        return example.tokens[example.question_mask]

    def max_len(self, difficulty: int) -> int:
        """An upper bound on the sequence length at this difficulty."""
        raise NotImplementedError

    # --- provided ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def feature_spec(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise AniraError(f"task {self.name!r} has no feature {name!r}")

    def check_difficulty(self, difficulty: int) -> None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, (int, np.integer)):
            raise AniraError(f"{self.name}: difficulty must be an integer, got {difficulty!r}")
        if not self.min_difficulty <= difficulty <= self.max_difficulty:
            raise AniraError(
                f"{self.name}: difficulty {difficulty} is outside the supported range "
                f"{self.min_difficulty}..{self.max_difficulty}"
            )

    def sample(self, difficulty: int, rng: np.random.Generator, split: Split = "train") -> Example:
        """One example at ``difficulty`` from the ``split`` side of the instance space."""
        self.check_difficulty(difficulty)
        if split not in ("train", "test"):
            raise AniraError(f"split must be 'train' or 'test', got {split!r}")
        want_eval = split == "test"
        for _ in range(10_000):
            question, build = self._draft(int(difficulty), rng)
            if is_eval_instance(question) == want_eval:
                return build()
        raise AniraError(
            f"{self.name}: could not draw a {split} instance at difficulty {difficulty} "
            "(instance space too small to partition)"
        )

    def score(self, example: Example, predicted: np.ndarray) -> bool:
        """Exact match: every answer token predicted correctly.

        ``predicted[i]`` is the model's (teacher-forced, greedy) prediction at
        position ``i`` for token ``i + 1``. For deterministic answers, all-correct
        teacher-forced predictions are exactly what greedy decoding would emit.
        Defined as :meth:`token_correct` at every answer position, so a task that
        redefines what a right token is overrides that method only.
        """
        return all_answers_right(example, self.token_correct(example, predicted))

    def token_correct(self, example: Example, predicted: np.ndarray) -> np.ndarray:
        """Bool [n]: True exactly at the answer positions ``i`` whose prediction
        ``predicted[i]`` is right (here: equals token ``i + 1``); False elsewhere.

        The per-token form of :meth:`score`; its share of the answer positions
        is ``token_acc`` in ``anira eval`` (docs/evaluation.md).
        """
        target = example.tokens[1:]
        pred = np.asarray(predicted)
        if pred.ndim != 1 or len(pred) < len(target):
            raise AniraError(
                f"{self.name}: expected one prediction per position (at least {len(target)}), "
                f"got shape {pred.shape}"
            )
        right = np.zeros(len(example), dtype=bool)
        right[: len(target)] = (pred[: len(target)] == target) & example.answer_mask[:-1]
        return right

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids)


@dataclass
class Batch:
    """Right-padded examples as tensors-to-be (numpy); padding never affects real tokens
    because attention is causal."""

    tokens: np.ndarray  # int64 [b, n]
    loss_mask: np.ndarray  # bool [b, n]
    answer_mask: np.ndarray  # bool [b, n]
    question_mask: np.ndarray  # bool [b, n]
    lengths: np.ndarray  # int64 [b]
    difficulty: np.ndarray  # int64 [b]
    # float32 [b, n]: per-token ground-truth complexity, NaN where undefined and on
    # padding (supervision for the ``oracle`` policy); None when built without it
    complexity: np.ndarray | None = None
    # packed rows (anira.packing): several examples to a row. Then ``lengths`` and
    # ``difficulty`` are per example (e,), and per token: the example each token belongs
    # to (int64 [rows, n], -1 on padding) and its segment along the row (int64 [rows, n]:
    # non-decreasing ids, one run per example, each padding token a segment of its own)
    example_index: np.ndarray | None = None
    segments: np.ndarray | None = None


def collate(examples: list[Example], pad_id: int = 0, length: int | None = None) -> Batch:
    """Pad a list of examples on the right into one batch."""
    if not examples:
        raise AniraError("cannot collate an empty list of examples")
    n = max(len(e) for e in examples) if length is None else length
    b = len(examples)
    tokens = np.full((b, n), pad_id, dtype=np.int64)
    loss = np.zeros((b, n), dtype=bool)
    ans = np.zeros((b, n), dtype=bool)
    que = np.zeros((b, n), dtype=bool)
    cx = np.full((b, n), np.nan, dtype=np.float32)
    for i, e in enumerate(examples):
        k = len(e)
        if k > n:
            raise AniraError(f"example of length {k} does not fit the batch length {n}")
        tokens[i, :k] = e.tokens
        loss[i, :k] = e.loss_mask
        ans[i, :k] = e.answer_mask
        que[i, :k] = e.question_mask
        cx[i, :k] = e.complexity
    return Batch(
        tokens=tokens,
        loss_mask=loss,
        answer_mask=ans,
        question_mask=que,
        lengths=np.array([len(e) for e in examples], dtype=np.int64),
        difficulty=np.array([e.difficulty for e in examples], dtype=np.int64),
        complexity=cx,
    )
