"""The engine's contract, checked for every built-in halting policy (found through
the registry, so a new built-in is covered without editing this file): exits in
1..D, monotone running masks, exit depth = iterations run, q a distribution,
causality at inference, and an early-stopped loop equal to the full masked loop."""

import pytest
import torch

from anira import build_registry, preset_config
from conftest import make_model

ALL_POLICIES = build_registry(load_entry_points=False).names("policy")

@pytest.fixture
def cfg():
    return preset_config("test", vocab_size=24)

@pytest.fixture
def tokens():
    return torch.randint(1, 24, (3, 12), generator=torch.Generator().manual_seed(1))

@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_exit_invariants(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=3)
    for mode in (model.eval, model.train):
        mode()
        out = model(tokens)
        assert out.exit_depth.min() >= 1 and out.exit_depth.max() <= cfg.max_iters
        assert out.running[0].all()
        assert (out.running[1:] <= out.running[:-1]).all()
        assert torch.equal(out.exit_depth, out.running.sum(0))
        assert torch.allclose(out.q.sum(-1), torch.ones(()), atol=1e-5) and (out.q >= 0).all()

@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_causality_at_inference(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=7)
    changed = tokens.clone(); changed[:, -3:] = (changed[:, -3:] + 5) % cfg.vocab_size
    a, b = model(tokens), model(changed)
    assert torch.allclose(a.logits[:, :-3], b.logits[:, :-3], atol=1e-5)
    assert torch.equal(a.exit_depth[:, :-3], b.exit_depth[:, :-3])

@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_early_stop_matches_full(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=11)
    fast = model(tokens)
    model.stop_when_all_exited = False
    model.fast_inference = False
    full = model(tokens)
    assert torch.equal(fast.exit_depth, full.exit_depth)
    assert torch.allclose(fast.logits, full.logits, atol=1e-5)
    assert torch.allclose(fast.q, full.q, atol=1e-5)

@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_planned_depths_agree_with_the_loop(cfg, tokens, policy):
    """A policy that plans its exits after ``begin`` (early / fixed policies) must plan
    what its ``step`` calls would give: the planned forward equals the unplanned one."""
    model = make_model(cfg, policy, seed=13)
    planned = model(tokens)
    model.use_planned_depths = False
    unplanned = model(tokens)
    assert torch.equal(planned.exit_depth, unplanned.exit_depth)
    assert torch.allclose(planned.logits, unplanned.logits, atol=1e-5)
    assert torch.allclose(planned.q, unplanned.q, atol=1e-6)
