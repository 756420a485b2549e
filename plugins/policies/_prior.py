"""The ANIRA regulariser shared by anira-e and anira-o: γ · KL(q ‖ p), p(d) ∝ b^(-d)."""

from __future__ import annotations

from torch import Tensor

from anira.errors import AniraError
from anira.halting import geometric_log_prior, kl_to_prior


class GeometricPriorMixin:
    """Adds ``gamma`` and ``prior_base`` and the KL(q‖p) per-token regulariser."""

    def _init_prior(self, max_iters: int, gamma: float, prior_base: float) -> None:
        if gamma < 0:
            raise AniraError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.prior_base = float(prior_base)
        self.register_buffer("log_prior", geometric_log_prior(max_iters, prior_base), persistent=False)

    def token_regularizer(self, q: Tensor) -> Tensor:
        return self.gamma * kl_to_prior(q, self.log_prior.to(q.device))
