"""Training configuration: :class:`TrainConfig`, the :class:`RunSpec` that ties a
task, a model, a policy and a TrainConfig together, and ``--set key=value``
overrides with dotted keys.

A RunSpec is plain JSON-able data: it is what a checkpoint's ``config.json``
stores, what ``--resume`` compares, and what presets produce.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from anira.config import MODEL_PRESETS, ModelConfig, check_fields
from anira.errors import AniraError

_RANGE_KEYS = ("train", "test_id", "test_ood")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


#: values of TrainConfig.straight_through (RecurrentTransformer.straight_through)
STRAIGHT_THROUGH = ("running", "all")


def uses_cudagraphs(compile_mode: str) -> bool:
    """True for the torch.compile modes that replay CUDA graphs (a training loop then marks
    each step's start, so the previous step's graph outputs may be overwritten)."""
    return compile_mode in ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the paper's where it gives them (docs/paper.md §3)."""

    steps: int = 1000  # optimizer steps in total (a resumed run stops at the same step)
    batch_size: int = 64  # GLOBAL batch (examples per step, summed over DDP ranks)
    lr: float = 1e-3  # peak learning rate, constant after warm-up (paper)
    warmup_steps: int = 1000  # linear warm-up from 0 (paper: 1000)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (paper silent; torch default)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (paper silent)
    seed: int = 0  # seeds model init, exit sampling and the data stream
    log_every: int = 10  # steps between "train" records in metrics.jsonl
    eval_every: int = 500  # steps between evaluations (0: only at the end)
    eval_examples: int = 64  # test examples per difficulty value
    eval_batch_size: int = 256
    eval_ood: bool = True  # also evaluate the out-of-distribution range
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept in a run dir (0: keep all)
    difficulty_sampling: str = "uniform"  # how a training example's difficulty is drawn
    pad_to_max: bool = False  # pad every batch to the longest train length (fixed shapes for compile)
    # > 0: pack each step's examples into rows of this many tokens (anira/packing.py): the
    # same examples, positions and loss without computing padding; at least the longest
    # train example. 0: a row per example (padded)
    pack_length: int = 0
    amp: bool = True  # bf16 autocast; only takes effect on CUDA
    compile: bool = False  # torch.compile the model; only takes effect on CUDA
    # torch.compile mode: "default", "reduce-overhead" (CUDA graphs: needs pad_to_max for
    # fixed shapes), "max-autotune", "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    num_workers: int = 0  # DataLoader worker processes generating batches ahead (with data_pool: pool builders)
    # > 0: train on a fixed pool of this many examples, generated once in parallel and
    # cached on disk (anira.training.pool); 0: every example fresh, on the fly (the paper)
    data_pool: int = 0
    find_unused_parameters: bool = False  # DDP option, for policies with parameters unused by the loss
    stop_at_acc: float = 0.0  # stop early once in-distribution exact match reaches this at an eval (0: off)
    # the policy's regulariser is scaled by min(1, step / reg_warmup_steps): the decider
    # first learns which depths help the task, then the compute penalty comes in (0: off,
    # the paper's objective from the first step)
    reg_warmup_steps: int = 0
    # -- remedies for the deciders' collapse (docs/deciders.md); the defaults are the
    # -- paper's recipe as first implemented, which collapses
    # which tokens' continue decisions get the straight-through gradient: "running" (only
    # tokens that ran on; a token that stopped never learns that running on would help)
    # or "all" (every token: the freeze mix's gradient is computed for all of them)
    straight_through: str = "running"
    # the first N steps run every token at full depth with the policy's parameters frozen
    # (no update, no regulariser): the core learns to use depth before anyone decides
    full_depth_steps: int = 0
    # the policy's parameters train at lr * decider_lr_mult
    decider_lr_mult: float = 1.0
    # -- a new decider on a trained network (docs/deciders.md, "known depth")
    # a checkpoint (or run directory) of the same task whose network weights -- every
    # tensor but the policy's -- initialise a new run; the policy keeps its fresh init
    init_network_from: str = ""
    # only the policy's parameters train: every other parameter stays bit-identical
    freeze_network: bool = False

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "eval_examples", "eval_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise AniraError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "reg_warmup_steps", "full_depth_steps", "data_pool", "pack_length", "eval_every", "checkpoint_every", "keep_checkpoints", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise AniraError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.straight_through not in STRAIGHT_THROUGH:
            raise AniraError(f"train.straight_through must be one of {', '.join(STRAIGHT_THROUGH)}, "
                             f"got {self.straight_through!r}")
        if not (math.isfinite(self.decider_lr_mult) and self.decider_lr_mult > 0):
            raise AniraError(f"train.decider_lr_mult must be a finite number > 0, got {self.decider_lr_mult}")
        for name in ("lr", "weight_decay", "grad_clip", "eps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise AniraError(f"train.{name} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise AniraError("train.lr must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise AniraError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.stop_at_acc <= 1:
            raise AniraError(f"train.stop_at_acc must be in [0, 1], got {self.stop_at_acc}")
        if self.compile_mode not in COMPILE_MODES:
            raise AniraError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.difficulty_sampling != "uniform":
            raise AniraError(f"train.difficulty_sampling must be 'uniform', got {self.difficulty_sampling!r}")

    def full_depth_at(self, step: int) -> bool:
        """Whether the update producing step ``step + 1`` is a full-depth warm-up step."""
        return step < self.full_depth_steps

    def reg_weight_at(self, step: int) -> float:
        """Weight of the policy's regulariser in the update that produces step ``step + 1``."""
        if self.full_depth_at(step):
            return 0.0
        if self.reg_warmup_steps and step < self.reg_warmup_steps:
            return step / self.reg_warmup_steps
        return 1.0

    def lr_at(self, step: int) -> float:
        """Learning rate for the update that produces step ``step + 1`` (0-based ``step``)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_fields(cls, data)
        return cls(**data)


#: TrainConfig fields that do not change the trained function; a resumed run may
#: change them (e.g. more steps, another device, more data workers).
RESUMABLE_FIELDS = frozenset(
    {"steps", "log_every", "eval_every", "eval_examples", "eval_batch_size", "eval_ood",
     "checkpoint_every", "keep_checkpoints", "device", "num_workers", "compile", "compile_mode", "stop_at_acc",
     "pack_length"}
)


@dataclass
class RunSpec:
    """Everything that defines a training run, as JSON-able data."""

    task: str
    policy: str
    task_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"train": [3, 8], ...}
    model_preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the model preset
    policy_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # the training preset this spec came from, for the record

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "policy": self.policy,
            "task_options": _jsonable(self.task_options),
            "model_preset": self.model_preset,
            "model": dict(self.model),
            "policy_options": dict(self.policy_options),
            "train": self.train.to_dict(),
            "preset": self.preset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AniraError(f"unknown run field(s): {', '.join(unknown)}")
        for name in ("task", "policy"):
            if not isinstance(data.get(name), str):
                raise AniraError(f"run field {name!r} must be a string")
        data = dict(data)
        data["train"] = TrainConfig.from_dict(dict(data.get("train", {})))
        return cls(**data)

    # -- building the pieces ---------------------------------------------------------------
    def task_class(self, registry: Any) -> type:
        return registry.task(self.task)

    def build_task(self, registry: Any) -> Any:
        return build_task(self.task_class(registry), self.task_options)

    def model_config(self, task: Any) -> ModelConfig:
        """The model config: preset, then the task's vocabulary, D and lengths, then overrides."""
        if self.model_preset not in MODEL_PRESETS:
            raise AniraError(f"unknown model preset {self.model_preset!r}; known: {', '.join(sorted(MODEL_PRESETS))}")
        fields = dict(MODEL_PRESETS[self.model_preset])
        fields["vocab_size"] = task.vocab_size
        fields["max_iters"] = task.default_max_iters  # the paper's D for the task, unless overridden
        fields.update(self.model)
        # never shorter than the longest sequence the run trains or evaluates on (a
        # preset's max_len, e.g. the paper's 256 for BREVO, is a floor: OOD sizes need more)
        hi = max(task.ranges.train[1], task.ranges.test_id[1], task.ranges.test_ood[1])
        fields["max_len"] = max(fields.get("max_len", 0), task.max_len(hi))
        return ModelConfig.from_dict(fields)

    def effective_policy_options(self, registry: Any) -> dict[str, Any]:
        """Policy options the chosen policy accepts. Presets carry gamma/b for the
        ANIRA policies; a policy without them (``fixed``) simply ignores them, but an
        option set explicitly with ``--set`` must exist (checked in :func:`apply_overrides`)."""
        known = set(registry.policy(self.policy).option_names())
        return {k: v for k, v in self.policy_options.items() if k in known}


def build_task(task_cls: type, options: dict[str, Any]) -> Any:
    """Instantiate a task; the three range options become a DifficultyRanges."""
    from anira.task import DifficultyRanges

    options = dict(options)
    ranges = {k: options.pop(k) for k in _RANGE_KEYS if k in options}
    kwargs = dict(options)
    if ranges:
        base = task_cls.default_ranges
        full = {k: tuple(int(v) for v in ranges.get(k, getattr(base, k))) for k in _RANGE_KEYS}
        kwargs["ranges"] = DifficultyRanges(**full)
    try:
        inspect.signature(task_cls).bind(**kwargs)
    except TypeError as exc:
        raise AniraError(f"bad options for task {task_cls.name!r}: {exc}") from None
    return task_cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# --set key=value
# ---------------------------------------------------------------------------------------


def parse_value(raw: str, kind: Any, key: str) -> Any:
    """Parse ``raw`` as the annotated type ``kind``; a wrong type is a one-line error."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(args) < len(typing.get_args(kind)):
            return None
        kind = args[0] if len(args) == 1 else str
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise AniraError(f"--set {key}: expected true/false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise AniraError(f"--set {key}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise AniraError(f"--set {key}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise AniraError(f"--set {key}: expected a finite number, got {raw!r}")
        return value
    if kind == "range":
        parts = raw.replace("..", ",").split(",")
        try:
            lo, hi = (int(p) for p in parts)
        except ValueError:
            raise AniraError(f"--set {key}: expected a range LO,HI (or LO..HI), got {raw!r}") from None
        return [lo, hi]
    return raw


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _option_types(fn: Any, skip: tuple[str, ...]) -> dict[str, Any]:
    """Types of a constructor's keyword options, from annotations or defaults."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to defaults
        hints = {}
    out: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in hints:
            out[name] = hints[name]
        elif p.default is not inspect.Parameter.empty and p.default is not None:
            out[name] = type(p.default)
        else:
            out[name] = str
    return out


def apply_overrides(spec: RunSpec, assignments: list[str], registry: Any) -> RunSpec:
    """Apply ``--set`` assignments (``section.key=value``) to a copy of ``spec``.

    Sections: ``train.<TrainConfig field>``, ``model.<ModelConfig field>`` (or
    ``model.preset``), ``policy.<option of the chosen policy>``, ``task.<option>``
    where ``task.train`` / ``task.test_id`` / ``task.test_ood`` take ``LO,HI``.
    """
    train = spec.train.to_dict()
    model = dict(spec.model)
    policy_options = dict(spec.policy_options)
    task_options = dict(spec.task_options)
    model_preset = spec.model_preset
    train_types = _field_types(TrainConfig)
    model_types = _field_types(ModelConfig)
    policy_cls = registry.policy(spec.policy)
    policy_types = {n: t for n, t in _option_types(policy_cls.__init__, ("self", "cfg")).items()
                    if n in policy_cls.option_names()}
    task_cls = registry.task(spec.task)
    task_types = _option_types(task_cls.__init__, ("self", "ranges"))
    task_types.update({k: "range" for k in _RANGE_KEYS})

    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AniraError(f"--set expects key=value, got {item!r}")
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise AniraError(f"--set key {key!r} must be dotted: train.*, model.*, policy.* or task.*")
        if section == "train":
            if name not in train_types:
                raise AniraError(f"unknown key {key!r}; TrainConfig fields: {', '.join(sorted(train_types))}")
            train[name] = parse_value(raw, train_types[name], key)
        elif section == "model":
            if name == "preset":
                if raw not in MODEL_PRESETS:
                    raise AniraError(f"--set {key}: unknown model preset {raw!r}; known: {', '.join(sorted(MODEL_PRESETS))}")
                model_preset = raw
            elif name in model_types:
                model[name] = parse_value(raw, model_types[name], key)
            else:
                raise AniraError(f"unknown key {key!r}; ModelConfig fields: preset, {', '.join(sorted(model_types))}")
        elif section == "policy":
            if name not in policy_types:
                raise AniraError(
                    f"unknown key {key!r}: policy {spec.policy!r} options are {', '.join(sorted(policy_types)) or 'none'}"
                )
            policy_options[name] = parse_value(raw, policy_types[name], key)
        elif section == "task":
            if name not in task_types:
                raise AniraError(f"unknown key {key!r}; task {spec.task!r} options: {', '.join(sorted(task_types))}")
            task_options[name] = parse_value(raw, task_types[name], key)
        else:
            raise AniraError(f"unknown --set section {section!r} in {key!r}; use train, model, policy or task")
    return dataclasses.replace(
        spec,
        train=TrainConfig.from_dict(train),
        model=model,
        model_preset=model_preset,
        policy_options=policy_options,
        task_options=task_options,
    )
