"""Training-free exits: ``exit-kl``, ``exit-latent``, ``exit-entropy``.

Reference: Geiping et al., 2025, "Scaling up Test-Time Compute with Latent
Reasoning: A Recurrent Depth Approach" (arXiv 2502.05171), §"zero-shot adaptive
compute at test time". Huginn stops iterating the recurrent block for a token
once consecutive iterations barely change it; the paper's main criterion is the
KL divergence between successive next-token distributions, with the change of
the latent state and of the entropy as alternatives.

Here the criteria are applied per token, in anira's loop, to a model trained
with ``fixed`` (every token at depth D). They have no parameters: swap one onto a
trained fixed checkpoint with :func:`with_policy` (or build the model with the
new policy and ``load_state_dict`` the fixed weights). In training mode they
behave exactly like ``fixed`` (all D iterations, q a point mass at D), so
training with them trains a fixed-depth model.

Mapping onto the policy interface: ``begin`` stores the reference quantity of
h_0 (the Prelude output); ``step`` after iteration t+1 (1-based depth) computes
the criterion between depth t+1 and depth t, emits it as
``loop.{t}.halt.hook_<signal>``, and stops the token when the (possibly patched)
value is below ``threshold`` and the depth is at least ``min_iters``. Depth D
always ends the loop. q is one-hot at each token's exit depth.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import HaltingPolicy, LoopContext, State, build_policy
from anira.hookspecs import hookimpl

_TINY = 1e-12  # guards the relative change against a zero state


class ConsecutiveExit(HaltingPolicy):
    """Shared loop of the training-free exits: compare depth t+1 with depth t.

    Subclasses give ``signal`` (the emitted name), ``default_threshold`` and two
    functions: ``reference(h, ctx)`` (what is compared: the state, log-probs or
    an entropy) and ``criterion(current, previous)`` (b, p).
    """

    timing = "training-free"
    signal: ClassVar[str]
    default_threshold: ClassVar[float]

    def __init__(self, cfg: ModelConfig, *, threshold: float | None = None, min_iters: int = 1) -> None:
        super().__init__(cfg)
        if threshold is None:
            threshold = self.default_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise AniraError(f"{self.name} threshold must be a number > 0, got {threshold!r}")
        if isinstance(min_iters, bool) or not isinstance(min_iters, int) or not 1 <= min_iters <= cfg.max_iters:
            raise AniraError(f"{self.name} min_iters must be an integer in 1..{cfg.max_iters}, got {min_iters!r}")
        self.threshold = float(threshold)
        self.min_iters = min_iters

    # -- what a criterion compares -------------------------------------------------------
    def reference(self, h: Tensor, ctx: LoopContext) -> Tensor:
        raise NotImplementedError

    def criterion(self, current: Tensor, previous: Tensor) -> Tensor:
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------
    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        shape = h0.shape[:2]
        state: State = {
            # every token runs iteration 1; "exit" is the last depth it ran
            "alive": torch.ones(shape, dtype=torch.bool, device=h0.device),
            "exit": torch.ones(shape, dtype=torch.long, device=h0.device),
        }
        with torch.no_grad():  # the decision is a threshold: nothing to differentiate
            state["previous"] = self.reference(h0, ctx)
        return state

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        with torch.no_grad():
            current = self.reference(h, ctx)
            value = self.criterion(current, state["previous"])
        value = emit(self.signal, value)
        depth = t + 1
        alive = state["alive"]
        exit_depth = torch.where(alive, torch.full_like(state["exit"], depth), state["exit"])
        if ctx.stochastic or depth >= self.max_iters:
            # training runs every token to D (a fixed-depth model); depth D ends the loop
            stop = torch.zeros_like(alive) if depth < self.max_iters else torch.ones_like(alive)
        else:
            stop = (value < self.threshold) & (depth >= self.min_iters)
        alive = alive & ~stop
        new_state = dict(state, alive=alive, exit=exit_depth, previous=current)
        return new_state, alive.to(h.dtype)

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        # after an early stop every token already has its exit depth
        return F.one_hot(state["exit"] - 1, self.max_iters).float()


class KLExit(ConsecutiveExit):
    """``exit-kl``: stop when KL(p_t ‖ p_{t−1}) < threshold (Huginn's main criterion).

    p_t = softmax(ℓ_t), ℓ_t = ``ctx.readout(h_t)``: the next-token logits the
    Coda gives from the state after depth t (ℓ_0 from the Prelude output h_0).
    Direction: the *current* distribution is the first argument,
    KL(p_t ‖ p_{t−1}) = Σ_v p_t(v)·(log p_t(v) − log p_{t−1}(v)). Huginn's public
    code calls ``F.kl_div(log p_t, log p_{t−1}, log_target=True)``, which is the
    reverse, KL(p_{t−1} ‖ p_t); both agree to second order as the iterates
    converge, where the threshold acts. Default threshold 5e-4 (the paper's).
    Signal: ``loop.{t}.halt.hook_kl`` (b, p).
    """

    name = "exit-kl"
    description = "training-free: stop when KL(p_t || p_t-1) of next-token distributions < threshold"
    signal = "kl"
    default_threshold = 5e-4
    step_signals = {"kl": "(batch, pos) KL(p_t || p_t-1) after depth t+1"}

    def reference(self, h: Tensor, ctx: LoopContext) -> Tensor:
        return F.log_softmax(ctx.readout(h).float(), dim=-1)

    def criterion(self, current: Tensor, previous: Tensor) -> Tensor:
        return kl_divergence(current, previous)


class LatentExit(ConsecutiveExit):
    """``exit-latent``: stop when ‖h_t − h_{t−1}‖ / ‖h_{t−1}‖ < threshold.

    The relative change of the token's residual state over one iteration
    (h_0: the Prelude output); needs no Coda pass. Huginn's code divides by
    ‖h_t‖ instead; the two agree as the change goes to zero. Default threshold
    0.03 (Huginn's "latent-diff" default). Signal: ``loop.{t}.halt.hook_rel_change``.
    """

    name = "exit-latent"
    description = "training-free: stop when the relative change of the state ||h_t - h_t-1|| / ||h_t-1|| < threshold"
    signal = "rel_change"
    default_threshold = 0.03
    step_signals = {"rel_change": "(batch, pos) ||h_t - h_t-1|| / ||h_t-1|| after depth t+1"}

    def reference(self, h: Tensor, ctx: LoopContext) -> Tensor:
        return h.detach().float().clone()  # a copy: the engine may reuse h's storage

    def criterion(self, current: Tensor, previous: Tensor) -> Tensor:
        return relative_change(current, previous)


class EntropyExit(ConsecutiveExit):
    """``exit-entropy``: stop when |H(p_t) − H(p_{t−1})| < threshold.

    H is the entropy (nats) of the Coda's next-token distribution from the state
    after depth t (t = 0: the Prelude output). Default threshold 1e-3 (Huginn's
    "entropy-diff" default). Signal: ``loop.{t}.halt.hook_entropy_delta``.
    """

    name = "exit-entropy"
    description = "training-free: stop when the change of next-token entropy |H(p_t) - H(p_t-1)| < threshold"
    signal = "entropy_delta"
    default_threshold = 1e-3
    step_signals = {"entropy_delta": "(batch, pos) |H(p_t) - H(p_t-1)| after depth t+1"}

    def reference(self, h: Tensor, ctx: LoopContext) -> Tensor:
        return entropy(F.log_softmax(ctx.readout(h).float(), dim=-1))

    def criterion(self, current: Tensor, previous: Tensor) -> Tensor:
        return (current - previous).abs()


# ---------------------------------------------------------------------------------------
# The math, separately testable
# ---------------------------------------------------------------------------------------


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ p·(log p − log q) over the last axis, from log-probabilities."""
    terms = log_p.exp() * (log_p - log_q)
    # 0·log 0 = 0 even where log q is -inf as well (a softmax underflow)
    return torch.where(log_p > -math.inf, terms, torch.zeros_like(terms)).sum(-1)


def entropy(log_p: Tensor) -> Tensor:
    """H(p) = −Σ p·log p over the last axis (nats), from log-probabilities."""
    terms = log_p.exp() * log_p
    return -torch.where(log_p > -math.inf, terms, torch.zeros_like(terms)).sum(-1)


def relative_change(current: Tensor, previous: Tensor) -> Tensor:
    """‖current − previous‖ / ‖previous‖ over the last axis."""
    return (current - previous).norm(dim=-1) / previous.norm(dim=-1).clamp_min(_TINY)


# ---------------------------------------------------------------------------------------
# Swapping the policy of a trained model
# ---------------------------------------------------------------------------------------


def with_policy(model: Any, name: str, *, registry: Any = None, **options: Any) -> Any:
    """A copy of ``model`` (a RecurrentTransformer) with the halting policy ``name``.

    Meant for the training-free exits: ``with_policy(anira.load(ck)[0], "exit-kl",
    threshold=1e-3)``. Every weight outside the policy is copied; the old policy's
    own parameters (e.g. a decider) are dropped. The new policy must have no
    parameters, since nothing could fill them. The copy keeps the model's device,
    dtype, train/eval mode and inference flags; the global RNG is untouched.
    """
    from anira.model import RecurrentTransformer
    from anira.registry import default_registry

    if not isinstance(model, RecurrentTransformer):
        raise AniraError(f"with_policy needs a RecurrentTransformer, got {type(model).__name__}")
    registry = registry or default_registry()
    with torch.random.fork_rng(devices=[]):  # building initialises weights we overwrite
        policy = build_policy(registry.policy(name), model.cfg, options)
        if policy.state_dict():
            raise AniraError(f"policy {name!r} has parameters of its own; train it instead of swapping it in")
        new = RecurrentTransformer(model.cfg, policy)
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("policy.")}
    new.load_state_dict(shared, strict=True)
    reference = next(model.parameters())
    new.to(device=reference.device, dtype=reference.dtype)
    new.train(model.training)
    new.hook_points_enabled = model.hook_points_enabled
    new.stop_when_all_exited = model.stop_when_all_exited
    new.fast_inference = model.fast_inference
    return new


@hookimpl
def register_halting_policies(register):
    for policy in (KLExit, LatentExit, EntropyExit):
        register(policy)
