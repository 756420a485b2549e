"""How well the straight-through surrogates estimate the gradient of the expected loss.

Training samples every token's exit depth and back-propagates a surrogate through
the hard decision (docs/paper.md §2: straight-through Gumbel-softmax for ANIRA-E,
straight-through inverse-CDF sampling for ANIRA-O). What training should follow is
the gradient of the *expected* loss over those samples, E_u[L(d(u))]. This module
estimates, for one parameter direction θ of the policy (e.g. the decider's output
bias), four things from the same seeds (common random numbers):

* ``st_running`` / ``st_all``: the straight-through gradient dL/dθ averaged over
  the seeds, with the engine's two surrogates (``RecurrentTransformer.straight_through``);
* ``finite_difference``: (E[L](θ+δ) - E[L](θ-δ)) / 2δ, the expected loss measured
  with the same seeds at both points;
* ``score_function``: E[(L - baseline) · d log P(exits)/dθ] with a leave-one-out
  baseline, the unbiased REINFORCE estimate (log P from :func:`exit_log_prob`).

The last two are unbiased references (up to the finite step and sampling noise);
the first two are what training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor

from anira.errors import AniraError
from anira.objective import compute_loss


def exit_log_prob(out, policy_name: str, token_mask: Tensor) -> Tensor:
    """log P of the sampled exits of one training forward pass (a scalar), summed
    over the tokens in ``token_mask``.

    ``anira-o``: the exits come from per-depth halting probabilities α(d) (read from
    ``out.state["alphas"]``, each (b, p)): a token exiting at d made d-1 "continue"
    decisions and, for d < D, one "halt": log P = Σ_{d' < d} log(1 - α(d')) + log α(d).
    ``anira-e``: the exit is a Gumbel-max sample of q (the temperature changes the
    surrogate, not the sample), so P(d) = q(d) (``out.q``).
    The states α reads depend on other tokens' exits, so this is the probability of
    the sequential decisions as they were taken: what REINFORCE needs."""
    depth = out.exit_depth  # (b, p), 1..D
    if policy_name == "anira-e":
        logq = torch.log(out.q.float().clamp_min(1e-30))
        per_token = logq.gather(-1, (depth - 1)[..., None])[..., 0]
    elif policy_name == "anira-o":
        alphas = torch.stack(out.state["alphas"], dim=-1).float()  # (b, p, D-1)
        D = alphas.shape[-1] + 1
        d = torch.arange(1, D, device=alphas.device)
        cont = (d < depth[..., None]).float()  # decisions to continue past d
        halt = (d == depth[..., None]).float()  # the decision to halt at d (none at D)
        per_token = (cont * torch.log1p(-alphas.clamp(max=1 - 1e-7)) + halt * torch.log(alphas.clamp_min(1e-30))).sum(-1)
    else:
        raise AniraError(f"exit_log_prob knows anira-e and anira-o, not {policy_name!r}")
    return (per_token * token_mask.float()).sum()


@dataclass
class GradientEstimates:
    """Estimates of dE[L]/dθ at one point, with the expected loss and exit depth there."""

    expected_loss: float
    mean_exit_depth: float
    st_running: float
    st_all: float
    finite_difference: float
    score_function: float
    score_function_se: float  # its standard error over seeds

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def estimate_gradients(model, tokens: Tensor, loss_mask: Tensor, param: Tensor, direction: Tensor,
                       theta: float, *, seeds: int = 24, delta: float = 0.25) -> GradientEstimates:
    """The four estimates of dE[L]/dθ at θ = ``theta``, where the policy's parameter
    ``param`` is set to θ·``direction`` (e.g. the decider's output bias, with
    direction 1 for ANIRA-O's single output, or a tilt over depths for ANIRA-E).
    The model must be in training mode; the policy's regulariser should be off
    (``gamma=0``) to compare the task loss alone."""
    token_mask = tokens != 0
    policy_name = model.policy.name
    saved_mode, saved_value = model.straight_through, param.detach().clone()

    def set_theta(x: float) -> None:
        with torch.no_grad():
            param.copy_(x * direction)

    def loss_at(seed: int, *, grad: bool, mode: str = "running") -> tuple[float, float, float, float]:
        model.straight_through = mode
        torch.manual_seed(seed)
        with torch.set_grad_enabled(grad):
            out = model(tokens)
            loss = compute_loss(model, out, tokens, loss_mask, token_mask).total
            g = s = 0.0
            if grad:
                logp = exit_log_prob(out, policy_name, token_mask)
                (d_loss,) = torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)
                (d_logp,) = torch.autograd.grad(logp, param, allow_unused=True)
                g = 0.0 if d_loss is None else float((d_loss * direction).sum())
                s = 0.0 if d_logp is None else float((d_logp * direction).sum())
            depth = float(out.exit_depth[token_mask].float().mean())
        return float(loss.detach()), g, s, depth

    try:
        set_theta(theta)
        running = [loss_at(seed, grad=True, mode="running") for seed in range(seeds)]
        all_tokens = [loss_at(seed, grad=True, mode="all")[1] for seed in range(seeds)]
        set_theta(theta + delta)
        up = [loss_at(seed, grad=False)[0] for seed in range(seeds)]
        set_theta(theta - delta)
        down = [loss_at(seed, grad=False)[0] for seed in range(seeds)]
    finally:
        with torch.no_grad():
            param.copy_(saved_value)
        model.straight_through = saved_mode
    losses = torch.tensor([r[0] for r in running], dtype=torch.float64)
    scores = torch.tensor([r[2] for r in running], dtype=torch.float64)
    baseline = (losses.sum() - losses) / (len(losses) - 1)  # leave-one-out: keeps it unbiased
    sf = (losses - baseline) * scores
    return GradientEstimates(
        expected_loss=float(losses.mean()),
        mean_exit_depth=sum(r[3] for r in running) / seeds,
        st_running=sum(r[1] for r in running) / seeds,
        st_all=sum(all_tokens) / seeds,
        finite_difference=(sum(up) - sum(down)) / (2 * delta * seeds),
        score_function=float(sf.mean()),
        score_function_se=float(sf.std(unbiased=True) / len(sf) ** 0.5),
    )
