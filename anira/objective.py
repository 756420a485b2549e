"""The training objective: CE on answer tokens + the policy's regulariser.

docs/paper.md §2: L = CE(answer tokens only) + gamma · mean over ALL tokens of
KL(q_i ‖ p). Here "all tokens" means every non-padding position; gamma and p
belong to the policy (``token_regularizer``), so other policies plug in their
own terms (ponder cost, balancing losses, ...) by overriding it or ``loss``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anira.errors import AniraError


@dataclass
class LossTerms:
    total: Tensor
    ce: Tensor
    regularizer: Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total), "ce": float(self.ce), "reg": float(self.regularizer)}


def masked_next_token_ce(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean cross-entropy of predicting token i+1 at positions i where loss_mask[i]."""
    pred = logits[:, :-1].float()  # (b, p-1, V)
    target = tokens[:, 1:]
    mask = loss_mask[:, :-1]
    if mask.device.type == "cpu":
        if not bool(mask.any()):
            raise AniraError("the batch has no position to train on (loss_mask is empty)")
    else:
        # on an accelerator a host-side check waits for the forward pass at every step: the
        # device then idles while the host queues the loss and the backward. The trainer
        # checks its batches on the host before they move (anira/training/data.py); here an
        # empty mask stops the step on the device instead of giving 0/0
        torch._assert_async(mask.any(), "the batch has no position to train on (loss_mask is empty)")
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    mask_f = mask.reshape(-1).float()
    return (ce * mask_f).sum() / mask_f.sum()


def standard_loss(policy, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor) -> LossTerms:
    """CE over ``loss_mask`` positions + mean over ``token_mask`` of the policy's
    per-token regulariser."""
    ce = masked_next_token_ce(out.logits, tokens, loss_mask)
    reg_tok = policy.token_regularizer(out.q)  # (b, p)
    mask_f = token_mask.float()
    reg = (reg_tok * mask_f).sum() / mask_f.sum().clamp_min(1.0)
    return LossTerms(total=ce + reg, ce=ce, regularizer=reg)


def _accepts_targets(loss_fn) -> bool:
    """True when a policy's ``loss`` takes a ``targets`` keyword (or **kwargs); a
    third-party policy written before ``targets`` existed keeps working."""
    params = inspect.signature(loss_fn).parameters.values()
    return any(p.name == "targets" or p.kind == p.VAR_KEYWORD for p in params)


def compute_loss(model, out, tokens: Tensor, loss_mask: Tensor, token_mask: Tensor | None = None, *,
                 targets: dict[str, Tensor] | None = None) -> LossTerms:
    """The model's objective on one batch; ``token_mask`` defaults to tokens != 0 (pad).

    ``targets`` (optional) is per-token supervision from the task, e.g.
    ``{"complexity": (b, p) float, NaN where undefined}``; it reaches the policy's
    ``loss`` only when that accepts a ``targets`` keyword."""
    if token_mask is None:
        token_mask = tokens != 0
    policy = model.policy
    if targets is not None and _accepts_targets(policy.loss):
        return policy.loss(out, tokens, loss_mask, token_mask, targets=targets)
    return policy.loss(out, tokens, loss_mask, token_mask)
