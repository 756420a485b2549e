"""``pattern``: each token's exit depth is given (cycled over positions).

A controllable policy with no parameters, for benchmarks and tests that need a
known mean depth (e.g. d̄/D = 0.5) and for compute-matched controls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import HaltingPolicy, LoopContext, State
from anira.hookspecs import hookimpl


class DepthPattern(HaltingPolicy):
    """Token at position i exits at depth ``depths[i % len(depths)]``."""

    name = "pattern"
    timing = "fixed"
    description = "exit depths given per position (cycled); for benchmarks and controls"

    def __init__(self, cfg: ModelConfig, *, depths: tuple[int, ...] | list[int] = (1,)) -> None:
        super().__init__(cfg)
        depths = [int(d) for d in depths]
        if not depths or min(depths) < 1 or max(depths) > cfg.max_iters:
            raise AniraError(f"pattern: depths must be a non-empty list of values in 1..{cfg.max_iters}")
        self.depths = depths
        self.register_buffer("_pattern", torch.tensor(depths), persistent=False)

    def _depth(self, like: Tensor, positions: Tensor | None) -> Tensor:
        if positions is None:
            positions = torch.arange(like.shape[1], device=like.device).expand(like.shape[0], -1)
        pattern = self._pattern.to(like.device)
        return pattern[positions % len(self.depths)]

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        return state, (self._depth(h, ctx.positions) > t + 1).to(h.dtype)

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor:
        return self._depth(h0, ctx.positions)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(self._depth(like, ctx.positions) - 1, self.max_iters).float()


@hookimpl
def register_halting_policies(register):
    register(DepthPattern)
