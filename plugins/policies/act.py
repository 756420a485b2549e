"""``act``: Adaptive Computation Time per token, with Universal-Transformer state mixing.

After depth n the decider gives each token a halting unit p_n = sigmoid(logit(h_n)).
The token halts at N = min{n : Σ_{m≤n} p_m ≥ 1 − ε}, or at D if the sum never
gets there; its remainder is R = 1 − Σ_{n<N} p_n. The Coda reads the mixture
Σ_n w_n h_n with w_n = p_n for n < N and w_N = R (the weights sum to 1), and the
ponder cost N + R, weighted by τ, is added to the loss. q(n) = w_n. The rule is
deterministic, so training and inference halt the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import Decider, HaltingPolicy, LoopContext, State
from anira.hookspecs import hookimpl


def act_weights(probs: Tensor, epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ACT for halting units ``probs`` (..., D), p_1 .. p_D.

    Returns the weights w (..., D) (w_n = p_n before N, R at N, 0 after), the
    halting step N (..., long, 1..D) and the remainder R (...). The policy
    computes the same thing step by step; this form is the reference the tests
    compare it with.
    """
    D = probs.shape[-1]
    cum = probs.cumsum(-1)
    reached = cum >= 1 - epsilon
    reached[..., -1] = True  # forced halt at D
    n_halt = reached.float().argmax(-1) + 1  # first n that reaches the threshold
    depth = torch.arange(1, D + 1, device=probs.device)
    before = depth < n_halt[..., None]
    remainder = 1 - (probs * before).sum(-1)
    at = depth == n_halt[..., None]
    weights = torch.where(before, probs, torch.where(at, remainder[..., None], torch.zeros_like(probs)))
    return weights, n_halt, remainder


def ponder_cost(q: Tensor) -> Tensor:
    """N + R per token from ACT's weights q (..., D).

    N is the last depth with a non-zero weight: every weight after N is exactly
    0 and w_N = R > ε > 0 (N was the first depth to reach 1 − ε, so the sum
    before it stayed below), so this is exact even when some p_n underflows to
    0. The gradient flows through R only, as in Graves (N is piecewise constant).
    """
    D = q.shape[-1]
    depth = torch.arange(1, D + 1, device=q.device)
    n_halt = torch.where(q > 0, depth, torch.zeros_like(depth)).amax(-1).clamp_min(1)
    remainder = q.gather(-1, (n_halt - 1)[..., None]).squeeze(-1)
    return n_halt.to(q.dtype) + remainder


class AdaptiveComputationTime(HaltingPolicy):
    """Graves' Adaptive Computation Time, per token, with UT-style state mixing.

    Reference: Alex Graves, "Adaptive Computation Time for Recurrent Neural
    Networks", 2016, arXiv:1603.08983; the per-position form and the mixed
    state are from Mostafa Dehghani, Stephan Gouws, Oriol Vinyals, Jakob
    Uszkoreit, Łukasz Kaiser, "Universal Transformers", 2018, arXiv:1807.03819.

    Mapping onto anira's interface:

    * ``step`` after depth n: halting unit p_n from the decider; the running
      halting sum, the step count, the remainder and the running mixture
      Σ w_m h_m are kept in the state dict. ``keep`` is hard (0/1): ACT's
      gradient reaches the decider through the mixture weights and the ponder
      cost, not through the exit decision.
    * ``readout_state``: the Coda reads the mixture (UT's ``new_state``). The
      core's attention still sees each token's own states, frozen after its
      exit by the engine (UT keeps transforming halted positions; anira freezes
      them so their keys and values stay those of the exit state).
    * ``finish``: q(n) = w_n, a distribution on 1..D whose last non-zero entry
      is the halting step.
    * ``token_regularizer``: τ·(N + R), read from q (see :func:`ponder_cost`).

    With forced exit depths (``model(tokens, exit_depths=...)``) the policy's
    own weights are kept and a token frozen at depth d stands in with h(d) for
    the depths it did not run.
    """

    name = "act"
    timing = "online"
    description = "Adaptive Computation Time: halt at cumulative p >= 1-eps, Coda reads the p-weighted state mix"
    step_signals = {
        "logit": "(batch, pos) halting logit after depth t+1",
        "prob": "(batch, pos) halting unit p(t+1) = sigmoid(logit)",
    }

    def __init__(self, cfg: ModelConfig, *, epsilon: float = 0.01, tau: float = 0.01) -> None:
        super().__init__(cfg)
        if not 0 < epsilon < 1:
            raise AniraError(f"act epsilon must be in (0, 1), got {epsilon}")
        if tau < 0:
            raise AniraError(f"act tau must be >= 0, got {tau}")
        self.epsilon = float(epsilon)
        self.tau = float(tau)
        self.decider = Decider(cfg.d_model, cfg.d_decider, 1)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        shape = h0.shape[:2]
        return {
            "running": torch.ones(shape, dtype=torch.bool, device=h0.device),
            "cum": torch.zeros(shape, device=h0.device),  # Σ p_m over the depths before the current one
            "steps": torch.zeros(shape, dtype=torch.long, device=h0.device),  # N once halted
            "remainder": torch.zeros(shape, device=h0.device),  # R once halted
            "mix": torch.zeros(h0.shape, device=h0.device),  # Σ w_m h_m, float32
            "weights": [],  # w_n per depth run
        }

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        # emitted at every depth, D included (where the halt is forced), so every
        # iteration has the same signals
        logit = emit("logit", self.decider(h).squeeze(-1).float())
        p = emit("prob", torch.sigmoid(logit))
        running, cum = state["running"], state["cum"]
        reaches = (cum + p >= 1 - self.epsilon) | (t == self.max_iters - 1)
        halt = running & reaches
        remainder = 1 - cum
        zero = torch.zeros_like(p)
        w = torch.where(halt, remainder, torch.where(running, p, zero))
        still = running & ~halt
        new_state = dict(
            state,
            running=still,
            cum=cum + torch.where(still, p, zero),
            steps=state["steps"] + running.long(),
            remainder=torch.where(halt, remainder, state["remainder"]),
            mix=state["mix"] + w[..., None] * h.float(),
            weights=state["weights"] + [w] if ctx.history else state["weights"],  # only finish reads them
        )
        return new_state, still.to(h.dtype)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        weights = list(state["weights"])
        # the loop stops only once every token halted: the missing depths weigh 0
        while len(weights) < self.max_iters:
            weights.append(torch.zeros_like(weights[0]))
        return torch.stack(weights, dim=-1)

    def readout_state(self, state: State, h: Tensor) -> Tensor:
        return state["mix"].to(h.dtype)

    def token_regularizer(self, q: Tensor) -> Tensor:
        return self.tau * ponder_cost(q)


@hookimpl
def register_halting_policies(register):
    register(AdaptiveComputationTime)
