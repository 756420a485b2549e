"""``oracle``: a supervised upper bound on depth-complexity alignment.

Not a method to deploy: a calibration point for what "aligned" can look like.
The policy is an early decider (the anira-e architecture: a Decider FFN on the
Prelude output h0 gives D logits, q = softmax) trained by plain supervision to
predict each token's ground-truth complexity from the task (``Example.complexity``),
rescaled to a depth in 1..D. Its Spearman(depth, complexity) and accuracy show
how much alignment a decider reading h0 can reach when told the answer, and
what the loop does with the depths it is told to use; the unsupervised policies
(anira-e, anira-o, act, ...) are read against it.

Target depth (:func:`target_depths`). For a token with complexity c,
``depth = 1 + floor((clip(c, lo, hi) - lo) / (hi - lo) · (D - 1) + 1/2)``
(min-max onto 1..D, rounding halves up), and 1 for every token when hi == lo
(no spread to express). ``lo`` / ``hi`` are the options ``c_min`` / ``c_max``
when set (a fixed rule: the same token always gets the same target; use it for
comparisons, e.g. MANO ``c_min=0``, ``c_max`` = the largest training L); when
unset they are the min / max of the batch's defined complexities (per process:
under DDP each rank rescales its own slice, so set both options there).

Training. Exits are teacher-forced (:meth:`Oracle.teacher_exit_depths`, which
the trainer passes to the model as ``exit_depths``): a token runs its target
depth where its complexity is defined, and the decider's mode elsewhere (the
rule inference uses there too), so the Core and Coda learn to work at the
depths the oracle prescribes. The loss (:meth:`Oracle.loss`) is the task's
answer-token CE plus ``weight`` · the mean over non-padding tokens of
−log q(target), the term being zero where complexity is NaN; averaging over
every non-padding token (not only the defined ones) keeps the DDP weighting of
the trainer exact, and the decider is trained by this term alone (forced exits
carry no gradient), so Adam makes its scale unimportant for the decider.

Inference: the mode of q (the task's complexity is never read).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import Decider, HaltingPolicy, LoopContext, State, continue_from_depth_sample, depth_mode
from anira.hookspecs import hookimpl
from anira.objective import LossTerms, masked_next_token_ce


def target_depths(complexity: Tensor, max_iters: int, c_min: float | None = None,
                  c_max: float | None = None) -> tuple[Tensor, Tensor]:
    """Rescale complexity (..., NaN where undefined) to depths in 1..D (see the module
    docstring). Returns (depth long, defined bool); depth is 1 where undefined."""
    c = complexity.float()
    defined = ~torch.isnan(c)
    if not bool(defined.any()):
        return torch.ones_like(c, dtype=torch.long), defined
    values = c[defined]
    lo = float(values.min()) if c_min is None else float(c_min)
    hi = float(values.max()) if c_max is None else float(c_max)
    if hi <= lo:  # a single complexity value (or a bad fixed range, refused in __init__)
        return torch.ones_like(c, dtype=torch.long), defined
    x = (torch.nan_to_num(c, nan=lo).clamp(lo, hi) - lo) / (hi - lo) * (max_iters - 1)
    depth = 1 + torch.floor(x + 0.5).long()  # halves up, not torch.round's half-to-even
    return torch.where(defined, depth, torch.ones_like(depth)).clamp(1, max_iters), defined


def _finite(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise AniraError(f"oracle {name} must be a finite number or None, got {value!r}")
    return float(value)


class Oracle(HaltingPolicy):
    """Early decider supervised with the task's per-token complexity (module docstring)."""

    name = "oracle"
    timing = "early"
    description = "supervised upper bound: decider on h0 trained to the task's complexity rescaled to 1..D"
    begin_signals = {"logits": "(batch, pos, D) depth logits from h0", "q": "(batch, pos, D) softmax"}

    def __init__(self, cfg: ModelConfig, *, weight: float = 1.0, c_min: float | None = None,
                 c_max: float | None = None) -> None:
        super().__init__(cfg)
        w = _finite("weight", weight)
        if w is None or w < 0:
            raise AniraError(f"oracle weight must be a finite number >= 0, got {weight!r}")
        self.weight = w
        self.c_min, self.c_max = _finite("c_min", c_min), _finite("c_max", c_max)
        if self.c_min is not None and self.c_max is not None and self.c_max <= self.c_min:
            raise AniraError(f"oracle c_max ({self.c_max}) must be greater than c_min ({self.c_min})")
        self.decider = Decider(cfg.d_model, cfg.d_decider, cfg.max_iters)

    # -- the loop: the mode of q, in training too (training depths come from teacher forcing)
    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        logits = emit("logits", self.decider(h0).float())
        q = emit("q", logits.softmax(-1))
        return {"q": q, "depth": depth_mode(q)}

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        choice = F.one_hot(state["depth"] - 1, self.max_iters)
        return state, continue_from_depth_sample(choice, t).to(h.dtype)

    def planned_exit_depths(self, state: State, ctx: LoopContext, h0: Tensor) -> Tensor:
        return state["depth"]

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        return state["q"]

    # -- training -------------------------------------------------------------------------
    def targets_for(self, targets: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        if not targets or targets.get("complexity") is None:
            raise AniraError("the oracle policy trains on the task's per-token complexity, which this "
                             "caller did not pass (targets={'complexity': ...}); train it with `anira train`")
        return target_depths(targets["complexity"], self.max_iters, self.c_min, self.c_max)

    @torch.no_grad()
    def teacher_exit_depths(self, model, tokens: Tensor, targets: dict[str, Tensor] | None) -> Tensor:
        depth, defined = self.targets_for(targets)
        # the decider's mode where there is no target: one Prelude pass without hooks
        # (h0 is a deterministic function of the tokens, so this is the forward's own mode)
        enabled, model.hook_points_enabled = model.hook_points_enabled, False
        try:
            h0 = model.run_prelude(model.check_tokens(tokens))
        finally:
            model.hook_points_enabled = enabled
        mode = depth_mode(self.decider(h0).float())
        return torch.where(defined.to(mode.device), depth.to(mode.device), mode)

    def loss(self, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor, *,
             targets: dict[str, Tensor] | None = None) -> LossTerms:
        ce = masked_next_token_ce(out.logits, tokens, loss_mask)
        depth, defined = self.targets_for(targets)
        depth, defined = depth.to(out.q.device), defined.to(out.q.device)
        nll = -torch.log(out.q.float().clamp_min(1e-12)).gather(-1, (depth - 1)[..., None]).squeeze(-1)
        use = (defined & token_mask).float()  # no oracle loss where complexity is NaN or on padding
        reg = self.weight * (nll * use).sum() / token_mask.float().sum().clamp_min(1.0)
        return LossTerms(total=ce + reg, ce=ce, regularizer=reg)


@hookimpl
def register_halting_policies(register):
    register(Oracle)
