"""The training path is a static graph: torch.compile of a training step works on CPU."""

import pytest
import torch

from anira import build_model, preset_config
from anira.objective import compute_loss


@pytest.mark.slow
def test_compiled_training_step_on_cpu():
    cfg = preset_config("test", vocab_size=24)
    model = build_model(cfg, "anira-o", seed=0).train()
    compiled = torch.compile(model, fullgraph=False)
    tokens = torch.randint(1, 24, (2, 9), generator=torch.Generator().manual_seed(0))
    out = compiled(tokens)
    assert out.running.shape[0] == cfg.max_iters  # static graph: every iteration ran
    assert ((out.exit_depth >= 1) & (out.exit_depth <= cfg.max_iters)).all()
    loss = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert torch.isfinite(loss.total)
    loss.total.backward()
    decider_grad = sum(float(p.grad.abs().sum()) for p in model.policy.parameters())
    assert decider_grad > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
