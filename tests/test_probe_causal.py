"""The causal check on a tiny model whose halting reads one planted direction."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anira import build_model, preset_config
from anira.probes.causal import (
    CausalBatch,
    CausalConfig,
    ablation_hooks,
    causal_check,
    compare_to_control,
    run_outcome,
)

VOCAB = 128  # more token types than d_model: token identity cannot fake a linear code



def _unit_zero_mean(rng, d, against=()):
    """A unit vector with zero mean (LayerNorm's centring leaves its reading intact),
    orthogonal to ``against``."""
    v = rng.normal(size=d)
    basis = [np.ones(d) / np.sqrt(d), *against]
    for b in basis:
        v -= (v @ b) * b
    return v / np.linalg.norm(v)


def planted_model(seed=0):
    """anira-o model (D=4) whose decider reads exactly one direction u.

    Token embeddings are a random part orthogonal to u and v (std 1 per
    coordinate) plus c_tok·u, c_tok in {2, 4} (the planted feature is
    c_tok == 4), plus a second feature e_tok·v, e_tok in {-2, 2}, that the
    decider never reads. The decider is LayerNorm -> one hidden unit reading u
    -> logit = -2 + 2·silu(.): with u present every token halts after one
    iteration (logit >= 1.5); with u projected out the unit reads ~0, the
    logit is ~-2 and tokens run to D.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = preset_config("test", vocab_size=VOCAB)
    model = build_model(cfg, "anira-o", seed=seed).eval()
    d = cfg.d_model
    u = _unit_zero_mean(rng, d)
    v = _unit_zero_mean(rng, d, against=(u,))
    c_u = rng.choice([2.0, 4.0], size=VOCAB)
    c_v = rng.choice([-2.0, 2.0], size=VOCAB)
    R = rng.normal(size=(VOCAB, d))
    R -= np.outer(R @ u, u) + np.outer(R @ v, v)
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor(R + np.outer(c_u, u) + np.outer(c_v, v), dtype=torch.float32))
        dec = model.policy.decider
        dec.norm.weight.fill_(1.0)
        dec.norm.bias.zero_()
        dec.fc_in.weight.zero_()
        dec.fc_in.weight[0] = torch.tensor(u, dtype=torch.float32)
        dec.fc_out.weight.zero_()
        dec.fc_out.weight[0, 0] = 2.0
        dec.fc_out.bias.fill_(-2.0)
    return model, u, v, c_u, c_v


def batches_and_states(model, n_batches=2, b=8, p=10, t=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    batches, states, toks = [], [], []
    for _ in range(n_batches):
        tokens = torch.randint(1, VOCAB, (b, p), generator=g)
        batches.append(CausalBatch(tokens=tokens, answer=np.ones((b, p), dtype=bool)))
        _, cache = model.run_with_cache(tokens, names_filter=[f"loop.{t}.hook_resid_post"])
        states.append(cache[f"loop.{t}.hook_resid_post"].reshape(-1, model.cfg.d_model).numpy())
        toks.append(tokens.reshape(-1).numpy())
    return batches, np.concatenate(states), np.concatenate(toks)


def everywhere(batches):
    return [np.ones(tuple(b.tokens.shape), dtype=bool) for b in batches]


def test_planted_model_halts_on_u():
    model, *_ = planted_model()
    batches, _, _ = batches_and_states(model)
    clean = run_outcome(model, batches, 0, None)
    assert np.all(clean.exit_depth == 1)


def test_ablating_the_read_direction_moves_depth_far_more_than_random():
    model, u, v, c_u, c_v = planted_model()
    batches, X, tok = batches_and_states(model)
    y = (c_u[tok] > 3).astype(int)  # the feature the decider's direction encodes
    result = causal_check(model, batches, everywhere(batches), 0, X, y)
    assert result["rank"] == 1 and result["n_target_tokens"] == 160
    assert result["probe_fit_score"] > 0.99
    test = result["tests"]["exit_depth_abs_change"]
    assert test["effect"] > 2.0  # tokens that halted at 1 now run (to D = 4)
    assert test["control_mean"] < 0.1
    assert test["p"] == pytest.approx(1 / 9)  # beats all 8 random directions
    assert result["probe"]["exit_depth_change"] > 0
    assert set(result["probe_depth_change_histogram"]) <= {"0", "1", "2", "3"}


def test_a_direction_the_decider_ignores_acts_like_random():
    model, u, v, c_u, c_v = planted_model()
    batches, X, tok = batches_and_states(model)
    y = c_v[tok]  # encoded along v, which the decider never reads (ridge: a continuous target)
    ridge = make_pipeline(StandardScaler(), RidgeCV())
    result = causal_check(model, batches, everywhere(batches), 0, X, y, estimator=ridge)
    assert result["probe_fit_score"] > 0.9
    assert result["probe"]["exit_depth_abs_change"] < 0.2
    assert result["tests"]["exit_depth_abs_change"]["p"] > 0.1


def test_h0_ablation_targets_the_prelude_output():
    model, u, v, c_u, c_v = planted_model()
    batches, _, tok = batches_and_states(model)
    _, cache = model.run_with_cache(batches[0].tokens, names_filter=["prelude.0.hook_resid_post"])
    X0 = cache["prelude.0.hook_resid_post"].reshape(-1, model.cfg.d_model).numpy()
    y0 = (c_u[batches[0].tokens.reshape(-1).numpy()] > 3).astype(int)
    result = causal_check(model, batches, everywhere(batches), -1, X0, y0)
    assert result["site"] == "prelude.0.hook_resid_post"
    assert result["tests"]["exit_depth_abs_change"]["effect"] > result["tests"]["exit_depth_abs_change"]["control_mean"]


def test_compare_to_control():
    out = compare_to_control(5.0, [0.0, 1.0, 2.0, 1.0])
    assert out["p"] == pytest.approx(1 / 5)
    assert out["z"] == pytest.approx((5.0 - 1.0) / np.std([0, 1, 2, 1], ddof=1))
    assert compare_to_control(0.0, [0.0, 0.0])["z"] is None
    assert compare_to_control(0.0, [0.0, 0.0])["p"] == 1.0


def test_only_running_tokens_at_targeted_positions_are_ablated():
    model, u, *_ = planted_model()
    batches, _, _ = batches_and_states(model, n_batches=1)
    tokens = batches[0].tokens
    where = np.zeros(tuple(tokens.shape), dtype=bool)
    where[:, :4] = True
    seen = {}

    def grab(value, hook):
        seen[hook.name] = value.detach().clone()
        return value

    _, clean = model.run_with_cache(tokens, names_filter=["loop.0.hook_resid_post"])
    record = {}
    U = torch.tensor(u[None], dtype=torch.float32)
    hooks = ablation_hooks(model, 0, U, torch.as_tensor(where), record)
    model.run_with_hooks(tokens, fwd_hooks=[*hooks, ("loop.0.hook_resid_post", grab)])
    after = seen["loop.0.hook_resid_post"].numpy()
    before = clean["loop.0.hook_resid_post"].numpy()
    assert np.allclose(after[:, 4:], before[:, 4:])  # untargeted positions untouched
    assert np.allclose(after[:, :4] @ u, 0.0, atol=1e-5)  # u removed where targeted
    assert np.allclose(record["removed_sq"].numpy()[:, :4], (before[:, :4] @ u) ** 2, rtol=1e-4)


def test_ablating_after_every_token_halted_changes_nothing():
    # every token of the planted model exits after iteration 0: nobody runs at t = 1
    model, u, v, c_u, c_v = planted_model()
    batches, X, tok = batches_and_states(model, t=1)
    y = (c_u[tok] > 3).astype(int)
    result = causal_check(model, batches, everywhere(batches), 1, X, y, config=CausalConfig(n_random=2))
    assert result["n_target_tokens"] == 0
    assert result["probe"]["exit_depth_abs_change"] == 0.0
    assert result["probe"]["accuracy_drop"] == 0.0 and result["probe"]["removed_norm_sq"] == 0.0
