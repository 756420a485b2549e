"""``mor-token``: Mixture-of-Recursions token-choice routing.

Reference: S. Bae et al., "Mixture-of-Recursions: Learning Dynamic Recursive
Depths for Adaptive Token-Level Computation", arXiv 2507.10524 (2025), §2.2.1
(token-choice routing) and its balancing loss.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import Decider, HaltingPolicy, LoopContext, State
from anira.hookspecs import hookimpl
from anira.objective import LossTerms, masked_next_token_ce


def balance_loss(q: Tensor, token_mask: Tensor) -> Tensor:
    """Switch-style load balance D·Σ_d f_d·P_d over the tokens where ``token_mask``.

    q (b, p, D) router probabilities; f_d = fraction of those tokens whose top-1
    depth is d (no gradient), P_d = their mean router probability for d. It is 1
    when routing is uniform and D when every token picks the same depth with
    certainty.
    """
    D = q.shape[-1]
    mask = token_mask.to(q.dtype)[..., None]  # (b, p, 1)
    count = mask.sum().clamp_min(1.0)
    chosen = F.one_hot(q.argmax(-1), D).to(q.dtype)  # (b, p, D)
    f = (chosen * mask).sum((0, 1)) / count
    P = (q * mask).sum((0, 1)) / count
    return D * (f * P).sum()


class MoRTokenChoice(HaltingPolicy):
    """Token-choice router: each token picks its recursion depth once, from h0.

    Mapping onto anira's interface. MoR's D "experts" are the recursion depths
    1..D. In ``begin`` a Decider FFN reads the Prelude output h0 and gives D
    logits; q = softmax(logits) is the router distribution and the exit-depth
    distribution the engine reports. Each token takes the top-1 depth
    k = argmax q, in training and at inference alike (MoR routes
    deterministically; no sampling). ``step`` keeps a token running while
    k > t + 1, so it runs exactly k iterations.

    Gradient to the router (MoR scales the chosen expert's output by its router
    weight g = q(k)): we gate the token's *last state update* with a
    straight-through factor in ``readout_state``,
    ``h_read = h(k) + (g - sg(g))·(h(k) - h(k-1))``, whose forward value is
    exactly h(k) (so exits, the fast path and the engine's invariants are
    untouched) and whose gradient is that of h(k-1) + g·(h(k) - h(k-1)) at g = 1:
    dL/dg = <dL/dh_read, h(k) - h(k-1)>, with h(0) = h0. The Coda reads h_read,
    so the router learns whether the chosen depth's last iteration helped. With
    forced ``exit_depths`` the gate still uses the router's own k.

    Balancing loss: ``balance_weight`` · D·Σ_d f_d·P_d (:func:`balance_loss`)
    over every non-padding token of the batch, added to the answer-token CE in
    :meth:`loss` (it is a batch-level term, so ``token_regularizer`` stays 0).
    """

    name = "mor-token"
    timing = "early"
    description = "MoR token-choice router on h0: top-1 depth, gated last update, Switch balancing loss"
    begin_signals = {"logits": "(batch, pos, D) router logits", "q": "(batch, pos, D) router softmax"}

    def __init__(self, cfg: ModelConfig, *, balance_weight: float = 0.01) -> None:
        super().__init__(cfg)
        if isinstance(balance_weight, bool) or not isinstance(balance_weight, Real) \
                or not math.isfinite(balance_weight) or balance_weight < 0:
            raise AniraError(f"mor-token balance_weight must be a finite number >= 0, got {balance_weight!r}")
        self.balance_weight = float(balance_weight)
        self.router = Decider(cfg.d_model, cfg.d_decider, cfg.max_iters)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        logits = emit("logits", self.router(h0).float())
        q = emit("q", logits.softmax(-1))
        depth = q.argmax(-1) + 1  # (b, p), 1..D
        gate = q.gather(-1, (depth - 1)[..., None]).squeeze(-1)  # router weight of the chosen depth
        # "before": each token's state before its last update; "last": the state before this iteration
        return {"q": q, "depth": depth, "gate": gate, "last": h0, "before": h0}

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        depth = state["depth"]
        ends_here = (depth == t + 1)[..., None]
        before = torch.where(ends_here, state["last"], state["before"])
        keep = (depth > t + 1).to(h.dtype)
        return dict(state, before=before, last=h), keep

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor:
        return state["depth"]

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        return state["q"]

    def readout_state(self, state: State, h: Tensor) -> Tensor:
        gate = state["gate"]
        st = (gate - gate.detach()).to(h.dtype)[..., None]  # 0 in value, dg in gradient
        return h + st * (h - state["before"])

    def loss(self, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor, *,
             targets=None) -> LossTerms:
        ce = masked_next_token_ce(out.logits, tokens, loss_mask)
        reg = self.balance_weight * balance_loss(out.q, token_mask)
        return LossTerms(total=ce + reg, ce=ce, regularizer=reg)


@hookimpl
def register_halting_policies(register):
    register(MoRTokenChoice)
