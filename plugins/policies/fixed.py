"""``fixed``: every token runs all D iterations (the paper's non-adaptive baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from anira.config import ModelConfig
from anira.halting import HaltingPolicy, LoopContext, State
from anira.hookspecs import hookimpl


class FixedDepth(HaltingPolicy):
    """Run every token for exactly D iterations; q is a point mass at D."""

    name = "fixed"
    timing = "fixed"
    description = "every token runs all D iterations"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        return state, torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor:
        return torch.full(h0.shape[:2], self.max_iters, dtype=torch.long, device=h0.device)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        q = torch.zeros(*like.shape[:2], self.max_iters, dtype=torch.float32, device=like.device)
        q[..., -1] = 1.0
        return q


@hookimpl
def register_halting_policies(register):
    register(FixedDepth)
