"""``pondernet``: PonderNet's halting distribution and expected loss, per token.

After depth n the decider gives λ_n = sigmoid(logit(h_n)); the halting
distribution is p_n = λ_n Π_{j<n}(1 − λ_j) for n < D and p_D = Π_{j<D}(1 − λ_j)
(the last step is forced). Training runs all D iterations and minimises
Σ_n p_n·CE(y, ŷ_n) + β·KL(p ‖ geometric(λ_p)), ŷ_n being the Coda's prediction
from h_n. Inference halts at the median of p.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.halting import Decider, HaltingPolicy, LoopContext, State, kl_to_prior, online_distribution
from anira.hookspecs import hookimpl
from anira.objective import LossTerms

_TOL = 1e-6  # CDF values within this of 0.5 count as reaching it (as in anira-o)


def geometric_prior_log(max_iters: int, lambda_p: float, device=None) -> Tensor:
    """log p_G(n) for the geometric prior λ_p (1 − λ_p)^(n−1), truncated to
    n = 1..D and renormalised."""
    if not 0 < lambda_p < 1:
        raise AniraError(f"pondernet lambda_p must be in (0, 1), got {lambda_p}")
    n = torch.arange(1, max_iters + 1, dtype=torch.float32, device=device)
    log_p = math.log(lambda_p) + (n - 1) * math.log1p(-lambda_p)
    return log_p - torch.logsumexp(log_p, dim=0)


def kl_halting_to_prior(p: Tensor, log_prior: Tensor) -> Tensor:
    """KL(p ‖ prior) = Σ_n p_n (log p_n − log prior_n) per token, p (..., D).

    This is the direction the paper states. ``nn.KLDivLoss()(p.log(), prior)``,
    as a widely copied implementation writes it, computes KL(prior ‖ p) instead.
    """
    return kl_to_prior(p, log_prior)


def per_step_ce(step_logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy of every step's prediction: step_logits
    (D, b, p, V) -> (D, b, p-1), position i predicting token i+1."""
    pred = step_logits[:, :, :-1].float()
    target = tokens[:, 1:].expand(pred.shape[0], -1, -1)
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    return ce.view(target.shape)


class PonderNet(HaltingPolicy):
    """PonderNet's halting distribution, expected per-step loss and KL to a geometric prior.

    Reference: Andrea Banino, Jan Balaguer, Charles Blundell, "PonderNet:
    Learning to Ponder", 2021, arXiv:2107.05407.

    Mapping onto anira's interface:

    * ``step`` after depth n: λ_n from the decider (emitted at every depth; λ_D
      is not used, the last step is forced). In training (``ctx.stochastic``)
      every token runs all D iterations (``keep`` = 1) and the step stores the
      Coda's prediction ``ctx.readout(h_n)``: the loss needs ŷ_n at every n, and
      a token that exited early would only offer its frozen exit state. The
      paper also unrolls all steps in training.
    * ``finish``: q = p, the halting distribution (as anira-o's q).
    * ``loss``: Σ_n p_n·CE(y, ŷ_n) on the answer tokens (reported as ``ce``) +
      β·mean over every non-padding token of KL(p ‖ p_G), p_G the geometric
      prior with parameter λ_p on 1..D, renormalised (reported as ``reg``).
    * Inference: halts at the median, the first n with Σ_{m≤n} p_m ≥ 0.5 (the
      paper samples halting from Bernoulli(λ_n) at evaluation; anira's
      inference rules are deterministic, like anira-o's median).
    """

    name = "pondernet"
    timing = "online"
    description = "PonderNet: loss = sum_n p_n CE(step n) + beta KL(p||geometric); median exit at inference"
    step_signals = {
        "logit": "(batch, pos) halting logit after depth t+1",
        "prob": "(batch, pos) halting probability lambda(t+1) = sigmoid(logit)",
    }

    def __init__(self, cfg: ModelConfig, *, beta: float = 0.01, lambda_p: float = 0.2) -> None:
        super().__init__(cfg)
        if beta < 0:
            raise AniraError(f"pondernet beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.lambda_p = float(lambda_p)
        self.register_buffer("log_prior", geometric_prior_log(cfg.max_iters, lambda_p), persistent=False)
        self.decider = Decider(cfg.d_model, cfg.d_decider, 1)

    def begin(self, h0: Tensor, ctx: LoopContext, emit) -> State:
        return {"survive": torch.ones(h0.shape[:2], device=h0.device), "lambdas": [], "step_logits": []}

    def step(self, state: State, h: Tensor, t: int, ctx: LoopContext, emit) -> tuple[State, Tensor]:
        logit = emit("logit", self.decider(h).squeeze(-1).float())
        lam = emit("prob", torch.sigmoid(logit))
        last = t == self.max_iters - 1
        new_state = dict(state)
        if not last:
            new_state["survive"] = state["survive"] * (1 - lam)  # Π_{j≤n}(1 − λ_j) = 1 − CDF(n)
            new_state["lambdas"] = state["lambdas"] + [lam]
        if ctx.stochastic:
            new_state["step_logits"] = state["step_logits"] + [ctx.readout(h)]
            keep = torch.full(h.shape[:2], float(not last), dtype=h.dtype, device=h.device)
        elif last:
            keep = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        else:
            keep = ((1 - new_state["survive"]) < 0.5 - _TOL).to(h.dtype)
        return new_state, keep

    def finish(self, state: State, ctx: LoopContext, like: Tensor) -> Tensor:
        lambdas = list(state["lambdas"])
        if self.max_iters == 1:
            return torch.ones(*like.shape[:2], 1, device=like.device)
        # after an early stop every token is frozen, so the decider would read the
        # same state again: repeating the last λ is exact (as in anira-o)
        while len(lambdas) < self.max_iters - 1:
            lambdas.append(lambdas[-1])
        return online_distribution(torch.stack(lambdas, dim=-1))

    def token_regularizer(self, q: Tensor) -> Tensor:
        return self.beta * kl_halting_to_prior(q, self.log_prior.to(q.device))

    def loss(self, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor, *,
             targets=None) -> LossTerms:
        step_logits = out.state.get("step_logits") if isinstance(out.state, dict) else None
        if not step_logits or len(step_logits) != self.max_iters:
            raise AniraError(
                "pondernet's loss needs the predictions of every step: compute it on a training "
                "forward pass (model.train(), no forced exit depths)"
            )
        mask = loss_mask[:, :-1].float()
        if not bool(mask.any()):
            raise AniraError("the batch has no position to train on (loss_mask is empty)")
        ce_steps = per_step_ce(torch.stack(step_logits), tokens)  # (D, b, p-1)
        weights = out.q[:, :-1].float().movedim(-1, 0)  # p_n at the predicting position
        expected_ce = (weights * ce_steps).sum(0)  # (b, p-1)
        ce = (expected_ce * mask).sum() / mask.sum()
        reg_tok = self.token_regularizer(out.q)
        tok = token_mask.float()
        reg = (reg_tok * tok).sum() / tok.sum().clamp_min(1.0)
        return LossTerms(total=ce + reg, ce=ce, regularizer=reg)


@hookimpl
def register_halting_policies(register):
    register(PonderNet)
