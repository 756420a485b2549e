"""``anira-o``: ANIRA's online decider (arXiv 2602.08864, §2).

After iteration d the decider reads each token's state h(d) and gives a halting
probability alpha(d) = sigmoid(logit). With r(0) = 1:
q(d) = r(d-1)·alpha(d) for d < D, r(d) = r(d-1)(1 - alpha(d)), q(D) = r(D-1).

Training draws u ~ U(0, 1) per token and exits at d = min{d : F(d) >= u}
(inverse CDF). The straight-through surrogate of "still running after d" is
the survival probability r(d), which is exactly its expectation over u (the
paper does not give its surrogate; see docs/policies.md). Inference exits at
the first d whose CDF reaches ``threshold`` (0.5: the median), else D. The
rules ``mode`` and ``mean`` need the whole distribution, so the engine first
runs a scouting pass at full depth, then re-runs with the chosen depths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import (
    Decider,
    HaltingPolicy,
    LoopContext,
    State,
    depth_mean,
    depth_mode,
    online_distribution,
    straight_through,
)
from anira.hookspecs import hookimpl
from anira.plugins.policies._prior import GeometricPriorMixin

_RULES = ("median", "threshold", "mode", "mean")
_TOL = 1e-6  # CDF values within this of the threshold count as reaching it


class AniraOnline(GeometricPriorMixin, HaltingPolicy):
    name = "anira-o"
    timing = "online"
    description = "online decider after each iteration; inverse-CDF ST in training, median at inference"
    step_signals = {
        "logit": "(batch, pos) halting logit after depth t+1",
        "prob": "(batch, pos) halting probability alpha(t+1)",
    }

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        gamma: float = 0.1,
        prior_base: float = 2.0,
        rule: str = "median",
        threshold: float = 0.5,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__(cfg)
        if rule not in _RULES:
            raise AniraError(f"anira-o rule must be one of {', '.join(_RULES)}, got {rule!r}")
        if not 0 < threshold <= 1:
            raise AniraError(f"anira-o threshold must be in (0, 1], got {threshold}")
        self._init_prior(cfg.max_iters, gamma, prior_base)
        self.rule = rule
        self.threshold = 0.5 if rule == "median" else float(threshold)
        self.decider = Decider(cfg.d_model, cfg.d_decider, 1)
        with torch.no_grad():
            self.decider.fc_out.bias.fill_(init_bias)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        shape = h0.shape[:2]
        state: State = {"survive": torch.ones(shape, device=h0.device), "alphas": []}
        if ctx.stochastic:
            state["u"] = torch.rand(shape, device=h0.device)
        return state

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        if t == self.max_iters - 1:  # depth D: q(D) = r(D-1), no decision left
            return state, torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        logit = emit("logit", self.decider(h).squeeze(-1).float())
        alpha = emit("prob", torch.sigmoid(logit))
        survive = state["survive"] * (1 - alpha)  # r(t+1)
        if ctx.stochastic:
            # continue past depth t+1 iff F(t+1) < u, i.e. r(t+1) > 1 - u
            keep = straight_through((survive > 1 - state["u"]).float(), survive)
        else:
            keep = ((1 - survive) < self.threshold - _TOL).float()
        alphas = state["alphas"] + [alpha] if ctx.history else state["alphas"]  # only finish reads them
        new_state = dict(state, survive=survive, alphas=alphas)
        return new_state, keep.to(h.dtype)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        alphas = list(state["alphas"])
        if self.max_iters == 1:
            return torch.ones(*like.shape[:2], 1, device=like.device)
        # When the loop stopped early every token was frozen, so the decider would
        # have read the same state again: repeating the last alpha is exact.
        while len(alphas) < self.max_iters - 1:
            alphas.append(alphas[-1])
        return online_distribution(torch.stack(alphas, dim=-1))

    def needs_full_distribution(self) -> bool:
        return self.rule in ("mode", "mean")

    def depths_from_distribution(self, q: Tensor) -> Tensor:
        return depth_mode(q) if self.rule == "mode" else depth_mean(q)


@hookimpl
def register_halting_policies(register):
    register(AniraOnline)
