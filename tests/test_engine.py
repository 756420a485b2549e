"""Invariants of the looped engine: freezing, exits, unrolling, causality."""

import pytest
import torch

from anira import AniraError, ModelConfig, build_model, preset_config
from anira.layers import Block
from conftest import POLICIES, make_model


def test_fixed_exits_every_token_at_D(cfg, tokens):
    model = make_model(cfg, "fixed")
    for mode in (model.eval, model.train):
        mode()
        out = model(tokens)
        assert (out.exit_depth == cfg.max_iters).all()
        assert out.running.all()
        assert torch.allclose(out.q[..., -1], torch.ones(()))


@pytest.mark.parametrize("policy", POLICIES)
def test_every_token_runs_at_least_one_iteration(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=3)
    for mode in (model.eval, model.train):
        mode()
        out = model(tokens)
        assert out.exit_depth.min() >= 1
        assert out.exit_depth.max() <= cfg.max_iters
        assert out.running[0].all()
        # running masks are monotone: once a token stops it never restarts
        assert (out.running[1:] <= out.running[:-1]).all()
        assert torch.equal(out.exit_depth, out.running.sum(0))


def test_forced_exit_freezes_state_and_keeps_token_visible(cfg, tokens):
    model = make_model(cfg, "anira-o")
    depths = torch.full(tokens.shape, cfg.max_iters)
    k, pos = 1, 2
    depths[:, pos] = k
    out, cache = model.run_with_cache(tokens, exit_depths=depths)
    frozen = cache[f"loop.{k - 1}.hook_resid_post"][:, pos]
    for t in range(k, cfg.max_iters):
        assert torch.equal(cache[f"loop.{t}.hook_resid_post"][:, pos], frozen)
        assert not cache[f"loop.{t}.hook_running"][:, pos].any()
        # later tokens still attend to the frozen token
        pattern = cache[f"loop.{t}.core.0.attn.hook_pattern"]  # (b, h, q, k)
        assert (pattern[:, :, pos + 1 :, pos] > 0).all()
    assert torch.equal(cache["coda.hook_exit_state"][:, pos], frozen)
    assert (out.exit_depth[:, pos] == k).all()
    # the frozen token's key/value matter: changing its depth changes later tokens
    depths2 = depths.clone()
    depths2[:, pos] = cfg.max_iters
    out2 = model(tokens, exit_depths=depths2)
    assert torch.allclose(out.logits[:, :pos], out2.logits[:, :pos], atol=1e-6)
    assert not torch.allclose(out.logits[:, pos + 1 :], out2.logits[:, pos + 1 :])


def _explicit_unroll(model, tokens, depths):
    """The paper's equations written out by hand with the model's weights."""
    x = model.embed(tokens)
    for block in model.prelude_blocks:
        x = block(x, model.rotary, None)
    h = x
    for t in range(model.cfg.max_iters):
        cand = h
        for block in model.core_blocks:
            cand = block(cand, model.rotary, None)
        a = (t + 1 <= depths).float()[..., None]  # a_i(d) = 1[d <= d_i]
        h = a * cand + (1 - a) * h
    for block in model.coda_blocks:
        h = block(h, model.rotary, None)
    return model.unembed(model.ln_final(h))


@pytest.mark.parametrize("policy", POLICIES)
def test_loop_equals_explicit_unroll(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=5)
    out = model(tokens)  # the policy's own deterministic exits
    expected = _explicit_unroll(model, tokens, out.exit_depth)
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("policy", POLICIES)
def test_causality(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=7)
    changed = tokens.clone()
    changed[:, -3:] = (changed[:, -3:] + 5) % cfg.vocab_size
    a, b = model(tokens), model(changed)
    assert torch.allclose(a.logits[:, :-3], b.logits[:, :-3], atol=1e-5)
    assert torch.equal(a.exit_depth[:, :-3], b.exit_depth[:, :-3])
    assert torch.allclose(a.q[:, :-3], b.q[:, :-3], atol=1e-6)


@pytest.mark.parametrize("policy", ["anira-e", "anira-o"])
def test_early_stop_matches_full_masked_loop(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=11)
    fast = model(tokens)
    model.stop_when_all_exited = False
    full = model(tokens)
    assert torch.equal(fast.exit_depth, full.exit_depth)
    assert torch.allclose(fast.logits, full.logits, atol=1e-6)
    assert torch.allclose(fast.q, full.q, atol=1e-6)
    assert fast.iterations_run == int(fast.exit_depth.max())


def test_loop_stops_when_every_token_exited(cfg, tokens):
    model = make_model(cfg, "anira-o", init_bias=10.0)  # alpha ~ 1: exit at depth 1
    out = model(tokens)
    assert (out.exit_depth == 1).all()
    assert out.iterations_run == 1
    model.train()
    assert model(tokens).running.shape[0] == cfg.max_iters  # training: static graph


def test_padding_on_the_right_does_not_change_real_tokens(cfg, tokens):
    model = make_model(cfg, "anira-o", seed=2)
    padded = torch.cat([tokens, torch.zeros(3, 5, dtype=tokens.dtype)], dim=1)
    a, b = model(tokens), model(padded)
    assert torch.allclose(a.logits, b.logits[:, : tokens.shape[1]], atol=1e-5)
    assert torch.equal(a.exit_depth, b.exit_depth[:, : tokens.shape[1]])


@pytest.mark.parametrize("policy", ["anira-e", "anira-o"])
def test_gradients_reach_the_decider_through_ce_and_kl(cfg, tokens, policy):
    from anira.objective import compute_loss

    for gamma in (0.0, 0.1):  # gamma = 0: only the straight-through path carries gradient
        model = build_model(cfg, policy, seed=0, gamma=gamma)
        model.train()
        torch.manual_seed(0)
        out = model(tokens)
        loss = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
        loss.total.backward()
        grads = [p.grad for p in model.policy.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_one_iteration_model(tokens):
    cfg = preset_config("test", vocab_size=24, max_iters=1)
    for policy in POLICIES:
        model = make_model(cfg, policy)
        out = model(tokens)
        assert (out.exit_depth == 1).all()
        assert torch.allclose(out.q.sum(-1), torch.ones(()))


def test_n_core_layers_per_iteration(tokens):
    cfg = preset_config("test", vocab_size=24, n_core=2)
    model = make_model(cfg, "fixed")
    out, cache = model.run_with_cache(tokens)
    assert "loop.0.core.1.attn.hook_q" in cache
    assert len(model.core_blocks) == 2 and isinstance(model.core_blocks[1], Block)
    assert torch.allclose(out.logits, _explicit_unroll(model, tokens, out.exit_depth), atol=1e-5)


# -- bad input ---------------------------------------------------------------------------

def test_rejects_tokens_outside_vocab(cfg):
    model = make_model(cfg, "fixed")
    with pytest.raises(AniraError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 24]]))
    with pytest.raises(AniraError, match="outside the vocabulary"):
        model(torch.tensor([[1, -1]]))


def test_rejects_too_long_sequences(cfg):
    model = make_model(cfg, "fixed")
    with pytest.raises(AniraError, match="exceeds max_len"):
        model(torch.ones(1, cfg.max_len + 1, dtype=torch.long))


def test_rejects_float_tokens(cfg):
    with pytest.raises(AniraError, match="integer"):
        make_model(cfg, "fixed")(torch.ones(1, 3))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(max_iters=0), "max_iters must be >= 1"),
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(d_model="64"), "must be an integer"),
    ],
)
def test_config_validation(fields, message):
    with pytest.raises(AniraError, match=message):
        ModelConfig(vocab_size=10, **fields)


def test_unknown_config_field():
    with pytest.raises(AniraError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"vocab_size": 10, "depth": 3})
    with pytest.raises(AniraError, match="unknown model preset"):
        preset_config("huge")


def test_unknown_policy_and_options(cfg):
    with pytest.raises(AniraError, match="unknown policy 'act-x'.*anira-e"):
        build_model(cfg, "act-x")
    with pytest.raises(AniraError, match="unknown option.*temperature.*anira-o"):
        build_model(cfg, "anira-o", temperature=0.5)
    with pytest.raises(AniraError, match="rule must be one of"):
        build_model(cfg, "anira-o", rule="mostly")


def test_rejects_bad_exit_depths(cfg, tokens):
    model = make_model(cfg, "fixed")
    with pytest.raises(AniraError, match="exit_depths must lie in"):
        model(tokens, exit_depths=torch.zeros_like(tokens))
    with pytest.raises(AniraError, match="shape"):
        model(tokens, exit_depths=torch.ones(2, 2))
