"""Named training presets: task + ranges, model size, policy options, TrainConfig.

``paper-*`` presets carry the paper's hyper-parameters (docs/paper.md §3 table;
250k steps, AdamW, constant LR after 1,000 warm-up steps). ``tiny-*`` presets use
small difficulty ranges and a small model so that they learn something real on
a 2-core CPU in minutes. The policy options (gamma, prior base b) apply to the
ANIRA policies; ``fixed`` ignores them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from anira.errors import AniraError
from anira.training.config import RunSpec, TrainConfig


@dataclass(frozen=True)
class TrainPreset:
    """A training recipe; ``spec(task, policy)`` turns it into a RunSpec."""

    name: str
    task: str  # the task it was designed for (``--task`` may name another)
    description: str
    task_options: dict[str, Any] = field(default_factory=dict)
    model_preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    policy_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields

    def spec(self, policy: str, task: str | None = None) -> RunSpec:
        task = task or self.task
        if task != self.task:
            # a preset's ranges are specific to its task; other tasks keep their defaults
            task_options: dict[str, Any] = {}
        else:
            task_options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.task_options.items()}
        return RunSpec(
            task=task,
            policy=policy,
            task_options=task_options,
            model_preset=self.model_preset,
            model=dict(self.model),
            policy_options=dict(self.policy_options),
            train=TrainConfig.from_dict(dict(self.train)),
            preset=self.name,
        )


def _paper(task: str, lr: float, batch: int, gamma: float, base: float, max_len: int, model_preset: str,
           d: int) -> TrainPreset:
    return TrainPreset(
        name=f"paper-{task}",
        task=task,
        description=f"the paper's {task.upper()} run: D={d}, batch {batch}, LR {lr:g}, gamma {gamma:g}, b {base:g}",
        model_preset=model_preset,
        model={"max_iters": d, "max_len": max_len},
        policy_options={"gamma": gamma, "prior_base": base},
        train={
            "steps": 250_000, "batch_size": batch, "lr": lr, "warmup_steps": 1000,
            "eval_every": 5000, "eval_examples": 256, "checkpoint_every": 5000, "log_every": 50,
            "pad_to_max": True, "num_workers": 4,
        },
    )


PRESETS: dict[str, TrainPreset] = {}


def _add(preset: TrainPreset) -> None:
    PRESETS[preset.name] = preset


# -- the paper (docs/paper.md §3 hyper-parameter table) -------------------------------------------
_add(_paper("mano", lr=1e-4, batch=512, gamma=0.1, base=1.25, max_len=64, model_preset="paper-mano", d=14))
_add(_paper("brevo", lr=1e-3, batch=64, gamma=0.1, base=2.0, max_len=256, model_preset="paper", d=6))
_add(_paper("depo", lr=3e-4, batch=64, gamma=0.1, base=2.0, max_len=256, model_preset="paper", d=6))
_add(_paper("lano", lr=1e-4, batch=64, gamma=0.01, base=1.0, max_len=512, model_preset="paper", d=6))

# -- tiny: CPU minutes ----------------------------------------------------------------------
_TINY_TRAIN = {
    "lr": 3e-3, "warmup_steps": 100, "weight_decay": 0.0, "eval_every": 250, "eval_examples": 64,
    "checkpoint_every": 500, "log_every": 10,
}
_add(TrainPreset(
    name="tiny-mano",
    task="mano",
    description="MANO with 1-3 operators (OOD 4-5), d_model 64, D 6; CPU minutes",
    task_options={"train": (1, 3), "test_id": (1, 3), "test_ood": (4, 5)},
    model_preset="tiny",
    model={"max_iters": 6},
    policy_options={"gamma": 0.1, "prior_base": 1.25},
    train={**_TINY_TRAIN, "steps": 1500, "batch_size": 64},
))
_add(TrainPreset(
    name="tiny-brevo",
    task="brevo",
    description="BREVO with 3-4 nodes (OOD 5-6), d_model 64, D 6; CPU minutes",
    task_options={"train": (3, 4), "test_id": (3, 4), "test_ood": (5, 6)},
    model_preset="tiny",
    model={"max_iters": 6},
    policy_options={"gamma": 0.1, "prior_base": 2.0},
    train={**_TINY_TRAIN, "steps": 3000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.1,
           "eval_every": 250, "checkpoint_every": 1000, "data_pool": 100_000},
))
_add(TrainPreset(
    name="tiny-depo",
    task="depo",
    description="DEPO with 1-2 hops (OOD 3), d_model 64, D 6; CPU minutes",
    task_options={"train": (1, 2), "test_id": (1, 2), "test_ood": (3, 3)},
    model_preset="tiny",
    model={"max_iters": 6},
    policy_options={"gamma": 0.1, "prior_base": 2.0},
    train={**_TINY_TRAIN, "steps": 1500, "batch_size": 64},
))
_add(TrainPreset(
    name="tiny-lano",
    task="lano",
    description="LANO (synthetic PCFG language modelling), d_model 64, D 6; CPU minutes",
    model_preset="tiny",
    model={"max_iters": 6},
    policy_options={"gamma": 0.01, "prior_base": 1.0},
    train={**_TINY_TRAIN, "steps": 1500, "batch_size": 32},
))
# -- ref: the bundled reference checkpoints and the policy comparison (GPU minutes) -----------
# The recipe of checkpoints/*/ (checkpoints/README.md): CUDA-graph steps and a cached example
# pool; on a CPU `compile` is ignored and a run takes hours, not minutes.
_REF_TRAIN = {
    "steps": 60_000, "batch_size": 1024, "lr": 2e-3, "warmup_steps": 300, "weight_decay": 0.1,
    "eval_every": 1000, "eval_examples": 256, "checkpoint_every": 1000, "log_every": 100,
    "data_pool": 500_000, "stop_at_acc": 0.97, "pad_to_max": True, "compile": True,
    "compile_mode": "reduce-overhead",
}


def _ref(task: str, knob: str, train: tuple[int, int], ood: tuple[int, int], d: int, base: float) -> TrainPreset:
    ood_text = str(ood[0]) if ood[0] == ood[1] else f"{ood[0]}-{ood[1]}"
    return TrainPreset(
        name=f"ref-{task}",
        task=task,
        description=f"the reference {task.upper()} runs: {knob} {train[0]}-{train[1]} (OOD {ood_text}), "
                    f"d_model 128, D {d}, batch 1024, CUDA graphs",
        task_options={"train": train, "test_id": train, "test_ood": ood},
        model_preset="small",
        model={"max_iters": d},
        policy_options={"gamma": 0.1, "prior_base": base},
        train=dict(_REF_TRAIN),
    )


# MANO on L 1-5, where depth matters; with L up to 5 the core learns slowly (0.47 after 11.6k steps
# at batch 1024, docs/deciders.md), so a batch of 4096 drawn from a 2M-example pool, and a long
# full-depth warm-up so the core can evaluate expressions before the deciders allocate depth; the
# deciders learn at 0.3x the network's rate: at 1x both halted early on hard instances they then
# failed, 4-11 points below the fixed model (docs/deciders.md, section 2; not the paper's recipe)
_add(dataclasses.replace(
    _ref("mano", "L", (1, 5), (6, 7), d=8, base=1.25),
    description="the reference MANO runs: L 1-5 (OOD 6-7), d_model 128, D 8, batch 4096, 2M-example pool, "
                "all-tokens straight-through gradient after a 6,000-step full-depth warm-up, deciders at 0.3x "
                "the learning rate, CUDA graphs",
    train={**_REF_TRAIN, "steps": 20_000, "batch_size": 4096, "data_pool": 2_000_000, "eval_every": 1000,
           "eval_examples": 128, "stop_at_acc": 0.0, "straight_through": "all", "full_depth_steps": 6000,
           "decider_lr_mult": 0.3},
))
# BREVO on N 3-10, where depth matters (a model at depth 1 loses 50 points at N = 10), with the
# deciders' remedies (docs/deciders.md): the all-tokens straight-through surrogate and a 500-step
# full-depth warm-up; every run the same 8,000 steps (the budget the bundled models share)
_add(dataclasses.replace(
    _ref("brevo", "N", (3, 10), (11, 12), d=6, base=2.0),
    description="the reference BREVO runs: N 3-10 (OOD 11-12), d_model 128, D 6, batch 1024, 8,000 steps, "
                "all-tokens straight-through gradient after a 500-step full-depth warm-up, CUDA graphs",
    train={**_REF_TRAIN, "steps": 8000, "eval_every": 500, "eval_examples": 128, "checkpoint_every": 500,
           "log_every": 50, "stop_at_acc": 0.0, "straight_through": "all", "full_depth_steps": 500},
))
# -- smoke: seconds, for tests and trying the CLI -----------------------------------------
_add(TrainPreset(
    name="smoke",
    task="mano",
    description="a few steps of a very small model (D 4); checks the pipeline, learns nothing",
    model_preset="test",
    model={"max_iters": 4},  # not MANO's D of 14: seconds, not minutes, on a CPU
    train={"steps": 20, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "eval_every": 10,
           "eval_examples": 8, "checkpoint_every": 10, "log_every": 5},
))


def get_preset(name: str) -> TrainPreset:
    if name not in PRESETS:
        raise AniraError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def default_spec(task: str, policy: str) -> RunSpec:
    """The spec used without ``--preset``: ``tiny-<task>`` when it exists, else ``tiny`` sizes
    with the task's own ranges and D."""
    name = f"tiny-{task}"
    if name in PRESETS:
        return PRESETS[name].spec(policy, task)
    return dataclasses.replace(TrainPreset(name="default", task=task, description="").spec(policy, task), preset=None)
