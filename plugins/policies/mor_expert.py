"""``mor-expert``: Mixture-of-Recursions expert-choice routing.

Reference: S. Bae et al., "Mixture-of-Recursions: Learning Dynamic Recursive
Depths for Adaptive Token-Level Computation", arXiv 2507.10524 (2025), §2.2.1
(expert-choice routing, hierarchical filtering) and its remedy for the
causality violation of top-k (the auxiliary router trained with BCE).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import Decider, HaltingPolicy, LoopContext, State, straight_through
from anira.hookspecs import hookimpl
from anira.objective import LossTerms, masked_next_token_ce


def _number(name: str, value: object, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    """``value`` as a float inside the interval, else a one-line AniraError."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise AniraError(f"mor-expert {name} must be a number in {interval}, got {value!r}")
    return float(value)


def capacity_counts(running: Tensor, capacity: float) -> Tensor:
    """k per sequence: ⌈capacity · (running tokens)⌉, so a sequence with a running
    token keeps at least one. running (b, p) bool -> long (b,)."""
    n = running.sum(-1).double()
    return torch.ceil(n * capacity - 1e-9).clamp_min(0).long()  # tolerance: 0.3·10 = 3.0000000000000004


def top_k_running(scores: Tensor, running: Tensor, capacity: float) -> Tensor:
    """Per sequence, the ⌈capacity·n⌉ highest-scoring running tokens (ties: earlier
    position first). scores (b, p), running (b, p) bool -> selected (b, p) bool."""
    k = capacity_counts(running, capacity)
    masked = scores.masked_fill(~running, float("-inf"))
    order = torch.argsort(masked, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & running


class MoRExpertChoice(HaltingPolicy):
    """Expert-choice router: after each iteration the top-k running tokens continue.

    Mapping onto anira's interface. Iteration 1 runs for every token (the
    engine's guarantee), so MoR's routers act after iterations 1..D-1: in
    ``step`` after iteration t (depth t+1) a Decider FFN scores every token,
    g = sigmoid(logit) (emitted at every t; the scores after depth D decide
    nothing). Hierarchical filtering: only tokens still running
    are eligible, and per sequence the k = ⌈capacity·n_t⌉ highest-scoring of
    the n_t running tokens continue (``capacity`` in (0, 1], default 0.5).

    Gradient to the router (MoR multiplies the next recursion's update of a
    selected token by g): the continue weight of a selected token is
    straight-through, value 1, gradient of g, so dL/dg = <dL/dh(t+2),
    h~(t+2) - h(t+1)>, the update it admitted. Unselected tokens carry none.

    Causality. In training the top-k runs over the whole sequence, so whether
    an earlier token continues may depend on later tokens (non-causal, as in
    the paper). The paper's remedy: an auxiliary router (a second Decider on the
    detached state, so it does not train the model) is trained with BCE to
    predict "selected by top-k" for every running non-padding token
    (``aux_weight`` · mean BCE, added in :meth:`loss`). At inference
    (``ctx.stochastic`` false) a running token continues iff its auxiliary
    probability exceeds ``threshold`` (0.5): a per-token decision on its own
    causal state, so inference is causal and the fast path applies. The main
    router's signals are still emitted at inference but decide nothing there.
    Padding tokens count as sequence positions in training's top-k (the policy
    is not told which positions are padding).

    q: the one-hot of the depth the router's own decisions gave (the realised
    exit depth, unless ``exit_depths`` is forced), so the expected depth is the
    exit depth; top-k depths have no per-token distribution of their own.
    """

    name = "mor-expert"
    timing = "online"
    description = "MoR expert-choice: top-k running tokens continue (training); causal auxiliary router at inference"
    step_signals = {
        "logit": "(batch, pos) router logit after depth t+1",
        "prob": "(batch, pos) router score g = sigmoid(logit); training keeps the top-k running",
        "aux_logit": "(batch, pos) auxiliary router logit (detached input)",
        "aux_prob": "(batch, pos) auxiliary P(selected); inference continues where > threshold",
    }

    def __init__(
        self, cfg: ModelConfig, *, capacity: float = 0.5, aux_weight: float = 1.0, threshold: float = 0.5
    ) -> None:
        super().__init__(cfg)
        self.capacity = _number("capacity", capacity, 0.0, 1.0, low_open=True, high_open=False)
        self.aux_weight = _number("aux_weight", aux_weight, 0.0, math.inf, low_open=False, high_open=True)
        self.threshold = _number("threshold", threshold, 0.0, 1.0, low_open=True, high_open=True)
        self.router = Decider(cfg.d_model, cfg.d_decider, 1)
        self.aux_router = Decider(cfg.d_model, cfg.d_decider, 1)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        shape = h0.shape[:2]
        return {
            "running": torch.ones(shape, dtype=torch.bool, device=h0.device),
            "depth": torch.ones(shape, dtype=torch.long, device=h0.device),
            "aux_logits": [],  # training only: per routed step, (b, p)
            "targets": [],  # selected by top-k, (b, p) float
            "eligible": [],  # running when routed, (b, p) bool
        }

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        running = state["running"]
        # signals at every depth, D included, so each loop.{t}.halt point fires (uniform catalogue)
        logit = emit("logit", self.router(h).squeeze(-1).float())
        prob = emit("prob", torch.sigmoid(logit))
        aux_logit = emit("aux_logit", self.aux_router(h.detach()).squeeze(-1).float())
        aux_prob = emit("aux_prob", torch.sigmoid(aux_logit))
        if t == self.max_iters - 1:  # depth D: nothing left to route
            return state, torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        new = dict(state)
        if ctx.stochastic:
            selected = top_k_running(prob, running, self.capacity)
            hard = selected.float()
            keep = straight_through(hard, hard * prob)  # value 0/1; gradient of g where selected
            new.update(
                aux_logits=state["aux_logits"] + [aux_logit],
                targets=state["targets"] + [hard],
                eligible=state["eligible"] + [running],
            )
        else:
            selected = running & (aux_prob > self.threshold)
            keep = selected.float()
        new.update(running=selected, depth=state["depth"] + selected.long())
        return new, keep.to(h.dtype)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        return F.one_hot(state["depth"] - 1, self.max_iters).float()

    def aux_loss(self, state: State, token_mask: Tensor) -> Tensor:
        """Mean BCE of the auxiliary router against top-k selection, over the
        (step, token) pairs where the token was running and is not padding."""
        if not state["aux_logits"]:  # inference or forced depths: nothing was routed by top-k
            return token_mask.new_zeros((), dtype=torch.float32)
        logits = torch.stack(state["aux_logits"])  # (S, b, p)
        targets = torch.stack(state["targets"])
        mask = (torch.stack(state["eligible"]) & token_mask.bool()[None]).float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (bce * mask).sum() / mask.sum().clamp_min(1.0)

    def loss(self, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor, *,
             targets=None) -> LossTerms:
        ce = masked_next_token_ce(out.logits, tokens, loss_mask)
        reg = self.aux_weight * self.aux_loss(out.state, token_mask)
        return LossTerms(total=ce + reg, ce=ce, regularizer=reg)


@hookimpl
def register_halting_policies(register):
    register(MoRExpertChoice)
