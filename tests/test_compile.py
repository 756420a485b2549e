"""The training path is a static graph: torch.compile of a training step works on CPU."""

import copy

import pytest
import torch

from anira import build_model, preset_config
from anira.objective import compute_loss


def _step(forward, model, tokens):
    torch.manual_seed(1)  # the exit samples: the same draw for the compiled and the eager step
    out = forward(tokens)
    loss = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
    loss.total.backward()
    return out, loss.total


@pytest.mark.slow
def test_compiled_training_step_on_cpu():
    # vocabulary 30 (MANO's): the unembedding's product is padded to 32 rows and sliced
    # back, and anira-o's single decider output is a reduction (anira/aligned.py)
    cfg = preset_config("test", vocab_size=30)
    model = build_model(cfg, "anira-o", seed=0).train()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=False)
    tokens = torch.randint(1, 30, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch._inductor.config.patch(fallback_random=True):  # inductor draws as eager does
        out, loss = _step(compiled, model, tokens)
    assert out.running.shape[0] == cfg.max_iters  # static graph: every iteration ran
    assert ((out.exit_depth >= 1) & (out.exit_depth <= cfg.max_iters)).all()
    assert out.logits.shape == (2, 9, 30)
    assert torch.isfinite(loss)
    decider_grad = sum(float(p.grad.abs().sum()) for p in model.policy.parameters())
    assert decider_grad > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the compiled step computes what the eager one does, gradients included
    out0, loss0 = _step(eager, eager, tokens)
    assert torch.equal(out.exit_depth, out0.exit_depth)
    torch.testing.assert_close(out.logits, out0.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, loss0, rtol=1e-4, atol=1e-5)
    grads0 = dict(eager.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads0[name].grad, rtol=1e-3, atol=1e-5, msg=name)
