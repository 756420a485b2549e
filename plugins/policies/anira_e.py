"""``anira-e``: ANIRA's early decider (arXiv 2602.08864, §2).

Reads the Prelude output h0 once, emits D logits, mean-centres them and takes a
softmax: q(d), d = 1..D. Training samples the exit depth with a
straight-through Gumbel-softmax (the paper does not give the temperature; we
default to 1.0, see docs/policies.md); inference takes the mode of q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import (
    Decider,
    HaltingPolicy,
    LoopContext,
    State,
    continue_from_depth_sample,
    depth_at_cdf_threshold,
    depth_mean,
    depth_mode,
    straight_through,
)
from anira.hookspecs import hookimpl
from anira.plugins.policies._prior import GeometricPriorMixin

_RULES = ("mode", "median", "mean")


class AniraEarly(GeometricPriorMixin, HaltingPolicy):
    name = "anira-e"
    timing = "early"
    description = "early decider on the Prelude output; Gumbel-softmax ST in training, mode at inference"
    begin_signals = {"logits": "(batch, pos, D) mean-centred depth logits", "q": "(batch, pos, D) softmax"}
    step_signals = {"q": "(batch, pos) probability of exiting at depth t+1"}

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        gamma: float = 0.1,
        prior_base: float = 2.0,
        temperature: float = 1.0,
        rule: str = "mode",
        threshold: float = 0.5,
    ) -> None:
        super().__init__(cfg)
        if temperature <= 0:
            raise AniraError(f"anira-e temperature must be > 0, got {temperature}")
        if rule not in _RULES:
            raise AniraError(f"anira-e rule must be one of {', '.join(_RULES)}, got {rule!r}")
        if not 0 < threshold <= 1:
            raise AniraError(f"anira-e threshold must be in (0, 1], got {threshold}")
        self._init_prior(cfg.max_iters, gamma, prior_base)
        self.temperature = float(temperature)
        self.rule = rule
        self.threshold = float(threshold)
        self.decider = Decider(cfg.d_model, cfg.d_decider, cfg.max_iters)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        logits = self.decider(h0).float()
        logits = emit("logits", logits - logits.mean(-1, keepdim=True))
        q = emit("q", logits.softmax(-1))
        if ctx.stochastic:
            gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)))
            soft = F.softmax((logits + gumbel) / self.temperature, dim=-1)
            hard = F.one_hot(soft.argmax(-1), self.max_iters).to(soft.dtype)
            choice = straight_through(hard, soft)
        else:
            depth = self._choose(q)
            choice = F.one_hot(depth - 1, self.max_iters).to(q.dtype)
        return {"q": q, "choice": choice}

    def _choose(self, q: Tensor) -> Tensor:
        if self.rule == "mode":
            return depth_mode(q)
        if self.rule == "mean":
            return depth_mean(q)
        return depth_at_cdf_threshold(q, self.threshold)

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor | None:
        # at inference the choice is one-hot and made in begin; training samples per step
        return None if ctx.stochastic else state["choice"].argmax(-1) + 1

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        emit("q", state["q"][..., t])
        return state, continue_from_depth_sample(state["choice"], t).to(h.dtype)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        return state["q"]


@hookimpl
def register_halting_policies(register):
    register(AniraEarly)
