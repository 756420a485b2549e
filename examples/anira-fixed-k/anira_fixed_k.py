"""An example third-party anira plugin: the ``fixed-k`` halting policy.

Every token runs exactly ``k`` iterations (1 <= k <= D). It is the
compute-matched baseline for an adaptive model whose mean depth is k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anira import AniraError, HaltingPolicy
from anira.hookspecs import hookimpl


class FixedK(HaltingPolicy):
    name = "fixed-k"
    timing = "fixed"
    description = "every token runs exactly k iterations"

    def __init__(self, cfg, *, k: int = 1) -> None:
        super().__init__(cfg)
        if not 1 <= k <= cfg.max_iters:
            raise AniraError(f"fixed-k: k must lie in 1..{cfg.max_iters}, got {k}")
        self.k = k

    def step(self, state, h: Tensor, t: int, ctx, emit):
        keep = torch.full(h.shape[:2], float(t + 1 < self.k), dtype=h.dtype, device=h.device)
        return state, keep

    def finish(self, state, ctx, like: Tensor) -> Tensor:
        q = torch.zeros(*like.shape[:2], self.max_iters, device=like.device)
        q[..., self.k - 1] = 1.0
        return q


@hookimpl
def register_halting_policies(register):
    register(FixedK)
