"""The halting-policy interface and the math the built-in policies share.

A policy decides, per token, how many iterations of the shared core it runs.
The engine (:mod:`anira.model`) never looks at a policy's name; it calls:

* ``begin(h0, ctx, emit)`` once, on the Prelude output. Early policies decide here.
* ``step(state, h, t, ctx, emit)`` after iteration ``t`` (0-based, so depth
  ``t + 1``) has run and freezing has been applied. It returns the new state
  and the *continue weight* for iteration ``t + 1``: a float tensor (b, p)
  whose values are 0 or 1, and which may carry a straight-through gradient.
* ``finish(state, ctx)`` returns the exit-depth distribution ``q`` (b, p, D).
* ``token_regularizer(out)`` gives the policy's per-token loss term (b, p);
  ``loss(...)`` combines it with the task's cross-entropy (override for
  policies such as PonderNet whose task loss differs). ``loss`` also receives
  ``targets`` (per-token supervision from the task, e.g. ``"complexity"``), and
  ``teacher_exit_depths`` may force training exits (the ``oracle`` uses both).

All per-call state is in the ``state`` dict that passes through these calls;
nothing per-call is stored on the policy object. Every signal the policy
computes goes through ``emit(name, tensor)``, which runs it through the hook
point ``halt.hook_<name>`` (in ``begin``) or ``loop.<t>.halt.hook_<name>`` (in
``step``) and returns the possibly patched tensor, so patching a halting signal
changes the decision that follows.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anira.aligned import AlignedLinear
from anira.config import ModelConfig
from anira.errors import AniraError

State = dict[str, Any]
Emit = Callable[[str, Tensor], Tensor]
Timing = Literal["early", "online", "fixed", "training-free"]


@dataclass(frozen=True)
class LoopContext:
    """What the engine tells a policy about the current forward pass."""

    max_iters: int  # D
    stochastic: bool  # training: sample exits; inference: deterministic rule
    readout: Callable[[Tensor], Tensor]  # state (b, p, d) -> logits (b, p, V), hooks bypassed
    positions: Tensor | None = None  # (b, p) positions of the tokens; None: 0 .. p-1
    tokens: Tensor | None = None  # (b, p) long: the input token ids (None where a caller has none)
    #: per-token inputs the caller passed (``model(tokens, features={...})``), name -> (b, p):
    #: e.g. a task's per-token features, for policies whose rule reads the input
    features: dict[str, Tensor] = field(default_factory=dict)
    #: False where nothing will call ``finish`` (the decoders): a policy may then leave out
    #: what only ``finish`` reads (e.g. a list of per-depth values), keeping its state's
    #: structure fixed from one iteration to the next (which skipping on the device needs)
    history: bool = True


class HaltingPolicy(nn.Module):
    """Base class of every halting policy (see the module docstring)."""

    name: ClassVar[str]
    timing: ClassVar[Timing]
    description: ClassVar[str] = ""
    #: signals emitted in ``begin``: name -> shape, for the hook catalogue
    begin_signals: ClassVar[dict[str, str]] = {}
    #: signals emitted in each ``step``: name -> shape
    step_signals: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_iters = cfg.max_iters

    # -- the loop ----------------------------------------------------------------------
    def begin(self, h0: Tensor, ctx: LoopContext, emit: Emit) -> State:
        return {}

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit: Emit) -> tuple[State, Tensor]:
        raise NotImplementedError

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        """The exit-depth distribution q, shape (b, p, D)."""
        raise NotImplementedError

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor | None:
        """Exit depths (b, p) in 1..D already fixed once ``begin`` has run (early and
        fixed-depth policies at inference), or None (the default) when the decisions
        are made during the loop. With a plan the engine lays out the whole fast loop
        with one device synchronisation. It must agree with what ``step`` returns."""
        return None

    def readout_state(self, state: State, h: Tensor) -> Tensor:
        """The state the Coda reads; by default each token's (frozen) exit state."""
        return h

    # -- inference with full-distribution rules ---------------------------------------------
    def needs_full_distribution(self) -> bool:
        """True when the inference rule needs q over all depths before choosing
        (e.g. the mode of an online policy); the engine then runs a scouting pass."""
        return False

    def depths_from_distribution(self, q: Tensor) -> Tensor:
        """Exit depths (b, p) in 1..D chosen from a full distribution q."""
        raise NotImplementedError

    # -- objective ----------------------------------------------------------------------
    def token_regularizer(self, q: Tensor) -> Tensor:
        """Per-token regulariser (b, p), already weighted; zero by default."""
        return q.new_zeros(q.shape[:-1])

    def loss(self, out: Any, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor, *,
             targets: dict[str, Tensor] | None = None) -> Any:
        """The training objective for one batch (see :mod:`anira.objective`).

        ``targets`` carries per-token supervision the trainer collates from the task
        (``"complexity"``: (b, p) float, NaN where undefined); most policies ignore it."""
        from anira.objective import standard_loss

        return standard_loss(self, out, tokens, loss_mask, token_mask)

    def teacher_exit_depths(self, model: nn.Module, tokens: Tensor,
                            targets: dict[str, Tensor] | None) -> Tensor | None:
        """Exit depths (b, p) in 1..D to force in a training forward (teacher forcing),
        or None (the default): the policy decides in ``begin``/``step`` as usual."""
        return None

    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n not in ("self", "cfg") and p.kind == p.KEYWORD_ONLY]


class PolicyOutputChecks:
    """Checks what a policy hands the engine during one forward pass, so that a plugin
    bug is a one-line error naming the plugin and the method, never a broadcasting
    error deep in the engine or a silently wrong result.

    Shapes and dtypes are checked at once; values (continue weights 0 or 1, q a
    distribution, depths in 1..D) are gathered on the device and read together by
    :meth:`verify`, one synchronisation per forward pass (skipped while compiling)."""

    def __init__(self, policy: HaltingPolicy, shape: torch.Size) -> None:
        cls = type(policy)
        self.where = f"halting policy {policy.name!r} ({cls.__module__}.{cls.__qualname__})"
        self.shape = tuple(shape)  # (b, p)
        self.max_iters = policy.max_iters
        self._pending: list[tuple[str, Tensor]] = []

    def _fail(self, method: str, problem: str) -> AniraError:
        return AniraError(f"{self.where}: {method} {problem}")

    def _tensor(self, value: Any, method: str, what: str, shape: tuple[int, ...], kind: str) -> Tensor:
        if not isinstance(value, Tensor):
            raise self._fail(method, f"returned {what} of type {type(value).__name__}, expected a tensor")
        if tuple(value.shape) != shape:
            raise self._fail(method, f"returned {what} of shape {tuple(value.shape)}, expected {shape}")
        ok = value.is_floating_point() if kind == "float" else not (value.is_floating_point() or value.is_complex())
        if not ok:
            raise self._fail(method, f"returned {what} of dtype {value.dtype}, expected a {kind} tensor")
        return value

    def _later(self, problem: str, bad: Tensor) -> None:
        if not torch.compiler.is_compiling():
            self._pending.append((problem, bad.any()))

    def state(self, state: Any, method: str) -> dict:
        if not isinstance(state, dict):
            raise self._fail(method, f"returned a {type(state).__name__}, expected the state dict")
        return state

    def depths(self, depths: Any, method: str) -> Tensor | None:
        """Exit depths (b, p) in 1..D, or None (no plan)."""
        if depths is None:
            return None
        depths = self._tensor(depths, method, "exit depths", self.shape, "integer").long()
        self._later(f"{method} returned exit depths outside 1..{self.max_iters}",
                    (depths < 1) | (depths > self.max_iters))
        return depths

    def step(self, result: Any, *, decides: bool) -> tuple[dict, Tensor]:
        """``step``'s (state, continue weights (b, p) of 0 or 1); the weights' values
        are checked only where they decide (not under forced depths)."""
        if not (isinstance(result, tuple) and len(result) == 2):
            raise self._fail("step", f"returned {type(result).__name__}, expected (state, continue weights)")
        state, keep = result
        keep = self._tensor(keep, "step", "continue weights", self.shape, "float")
        if decides:
            self._later("step returned continue weights other than 0 or 1", (keep != 0) & (keep != 1))
        return self.state(state, "step"), keep

    def distribution(self, q: Any) -> Tensor:
        """``finish``'s q (b, p, D): non-negative, summing to 1 over depths."""
        q = self._tensor(q, "finish", "q", (*self.shape, self.max_iters), "float")
        tol = 1e-3 if q.element_size() >= 4 else 3e-2  # a 16-bit q (autocast) rounds to ~3 digits
        self._later("finish returned q that is not a distribution over depths (negative, NaN, or not summing to 1)",
                    ~(q >= 0).all(-1) | ((q.float().sum(-1) - 1).abs() > tol))
        return q

    def verify(self) -> None:
        """Raise the first problem gathered so far (one device synchronisation)."""
        if not self._pending:
            return
        found = torch.stack([bad for _, bad in self._pending]).tolist()
        problems = [problem for (problem, _), bad in zip(self._pending, found) if bad]
        self._pending.clear()
        if problems:
            raise AniraError(f"{self.where}: {problems[0]}")


def build_policy(policy_cls: type[HaltingPolicy], cfg: ModelConfig, options: dict[str, Any]) -> HaltingPolicy:
    """Instantiate a policy, turning bad options into one-line errors."""
    known = policy_cls.option_names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise AniraError(
            f"unknown option(s) {', '.join(unknown)} for policy {policy_cls.name!r}; "
            f"known: {', '.join(known) or 'none'}"
        )
    return policy_cls(cfg, **options)


# ---------------------------------------------------------------------------------------
# Shared math
# ---------------------------------------------------------------------------------------


class Decider(nn.Module):
    """The paper's decider FFN: LayerNorm (affine) -> Linear(H->I, no bias) -> SiLU
    -> Linear(I->out, with bias). The output layer is an :class:`~anira.aligned.AlignedLinear`
    (nn.Linear's parameters): an output count off a multiple of 8 (D of an early
    decider) is padded to one, a single output (online deciders) is a reduction
    over I when compiled, so that no matrix product has a dimension of 1."""

    def __init__(self, d_model: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc_in = nn.Linear(d_model, d_hidden, bias=False)
        self.fc_out = AlignedLinear(d_hidden, d_out, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.silu(self.fc_in(self.norm(x))))


def geometric_log_prior(max_iters: int, base: float, device=None, dtype=torch.float32) -> Tensor:
    """log p(d) for the truncated geometric prior p(d) ∝ base^(-d) on d = 1..D."""
    if base <= 0:
        raise AniraError(f"prior base b must be > 0, got {base}")
    d = torch.arange(1, max_iters + 1, dtype=dtype, device=device)
    logits = -d * math.log(base)
    return logits - torch.logsumexp(logits, dim=0)


def kl_to_prior(q: Tensor, log_prior: Tensor) -> Tensor:
    """KL(q || p) per token, q (..., D) a distribution, log_prior (D,). 0·log 0 = 0."""
    qf = q if q.dtype == torch.float64 else q.float()  # never below float32
    log_q = torch.log(qf.clamp_min(1e-30))
    terms = qf * (log_q - log_prior.to(qf))
    return torch.where(qf > 0, terms, torch.zeros_like(qf)).sum(-1)


def online_distribution(alphas: Tensor) -> Tensor:
    """q from per-depth halting probabilities (ANIRA-O / PonderNet form).

    alphas (..., D-1): alpha(d) for d = 1..D-1. With r(0) = 1,
    q(d) = r(d-1)·alpha(d) for d < D, r(d) = r(d-1)(1 - alpha(d)), q(D) = r(D-1).
    Returns q (..., D).
    """
    ones = torch.ones_like(alphas[..., :1])
    survive = torch.cumprod(torch.cat([ones, 1 - alphas], dim=-1), dim=-1)  # r(0..D-1)
    halt = torch.cat([alphas, ones], dim=-1)  # alpha(1..D-1), and 1 at D
    return survive * halt


def expected_depth(q: Tensor) -> Tensor:
    """Σ_d d·q(d), d = 1..D; q (..., D) -> (...)."""
    d = torch.arange(1, q.shape[-1] + 1, dtype=q.dtype, device=q.device)
    return (q * d).sum(-1)


def depth_at_cdf_threshold(q: Tensor, threshold: float) -> Tensor:
    """First d with F(d) >= threshold, else D. q (..., D) -> long (...), values 1..D."""
    cdf = q.cumsum(-1)
    reached = cdf >= threshold - 1e-6  # tolerance: F(D) may round to 1 - ε
    reached[..., -1] = True
    return reached.float().argmax(-1) + 1


def depth_mode(q: Tensor) -> Tensor:
    return q.argmax(-1) + 1


def depth_mean(q: Tensor) -> Tensor:
    """The expected depth rounded to the nearest integer depth."""
    return expected_depth(q).round().clamp(1, q.shape[-1]).long()


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value ``hard``; gradient as if it were ``soft``."""
    return hard + (soft - soft.detach())


def continue_from_depth_sample(sample: Tensor, t: int) -> Tensor:
    """Continue weight for iteration t+1 given a (straight-through) one-hot over
    depths (..., D): 1 when the chosen depth is >= t + 2, i.e. Σ_{d ≥ t+2} sample(d)."""
    return sample[..., t + 1 :].sum(-1)
