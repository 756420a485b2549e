"""The ``pondernet`` policy: the halting distribution, the geometric prior, the KL
direction and the expected loss against hand-computed cases; q, gradients, the
engine's invariants and training."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from anira import AniraError, build_model, preset_config
from anira.cli import main
from anira.decode import teacher_forced
from anira.halting import LoopContext, depth_at_cdf_threshold
from anira.objective import compute_loss
from anira.plugins.policies.pondernet import PonderNet, geometric_prior_log, kl_halting_to_prior
from test_fast_path import _assert_same, _both
from test_hooks import _expected, _shape

torch.set_num_threads(1)


def _policy(D=4, **options):
    return PonderNet(preset_config("test", vocab_size=24, max_iters=D), **options)


def _drive(policy, lambdas, stochastic=False):
    """begin/step/finish with λ patched to ``lambdas`` (b, p, D), as a hook on
    ``loop.{t}.halt.hook_prob`` would; the state at depth n is n·1."""
    b, p, D = lambdas.shape
    d = policy.decider.norm.normalized_shape[0]
    ctx = LoopContext(max_iters=D, stochastic=stochastic, readout=lambda x: x[..., :3])
    state = policy.begin(torch.zeros(b, p, d), ctx, lambda name, v: v)
    keeps = []
    for t in range(D):
        def emit(name, value, t=t):
            return lambdas[..., t] if name == "prob" else value

        state, keep = policy.step(state, torch.full((b, p, d), float(t + 1)), t, ctx, emit)
        keeps.append(keep)
    return state, torch.stack(keeps, -1), policy.finish(state, ctx, torch.zeros(b, p, d))


# -- formulas ------------------------------------------------------------------------------

def test_hand_computed_halting_distribution_and_median():
    # λ = 0.2, 0.5, 0.4 (λ_4 is ignored: the last step is forced)
    # p_1 = 0.2, p_2 = 0.8·0.5 = 0.4, p_3 = 0.8·0.5·0.4 = 0.16, p_4 = 0.8·0.5·0.6 = 0.24
    state, keeps, q = _drive(_policy(), torch.tensor([[[0.2, 0.5, 0.4, 0.9]]]))
    assert q[0, 0].tolist() == pytest.approx([0.2, 0.4, 0.16, 0.24], abs=1e-6)
    # CDF 0.2, 0.6: the median is depth 2, so the token continues after depth 1 only
    assert keeps[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    # training keeps every token running and stores every step's prediction
    state, keeps, q = _drive(_policy(), torch.tensor([[[0.2, 0.5, 0.4, 0.9]]]), stochastic=True)
    assert keeps[0, 0].tolist() == [1.0, 1.0, 1.0, 0.0] and len(state["step_logits"]) == 4
    assert [s[0, 0, 0].item() for s in state["step_logits"]] == [1.0, 2.0, 3.0, 4.0]


def test_geometric_prior_is_truncated_and_renormalised():
    # λ_p = 0.5, D = 3: 0.5, 0.25, 0.125 over 0.875 = 4/7, 2/7, 1/7
    assert geometric_prior_log(3, 0.5).exp().tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-6)
    # λ_p = 0.2: 0.2, 0.16, 0.128 over 0.488
    assert geometric_prior_log(3, 0.2).exp().tolist() == pytest.approx([0.2 / 0.488, 0.16 / 0.488, 0.128 / 0.488])


def test_kl_direction_is_p_to_prior():
    p = torch.tensor([0.8, 0.15, 0.05])
    prior = torch.tensor([0.2, 0.16, 0.128]) / 0.488  # geometric(0.2) on 1..3
    # KL(p ‖ prior) = Σ p log(p / prior), by hand:
    # 0.8·ln(0.8·0.488/0.2) + 0.15·ln(0.15·0.488/0.16) + 0.05·ln(0.05·0.488/0.128)
    forward = (0.8 * math.log(0.8 * 0.488 / 0.2) + 0.15 * math.log(0.15 * 0.488 / 0.16)
               + 0.05 * math.log(0.05 * 0.488 / 0.128))
    assert forward == pytest.approx(0.334914, abs=1e-6)
    reverse = sum(g * math.log(g / a) for a, g in zip(p.tolist(), prior.tolist()))  # KL(prior ‖ p)
    assert reverse == pytest.approx(0.417006, abs=1e-6)
    policy = _policy(D=3, beta=1.0, lambda_p=0.2)
    assert policy.token_regularizer(p[None, None]).item() == pytest.approx(forward, abs=1e-5)
    assert kl_halting_to_prior(p, policy.log_prior).item() == pytest.approx(forward, abs=1e-5)
    # swapping the arguments gives a different number: the reverse KL, which is what
    # nn.KLDivLoss()(p.log(), prior) computes
    swapped = kl_halting_to_prior(prior, p.log())
    assert swapped.item() == pytest.approx(reverse, abs=1e-5) and abs(swapped.item() - forward) > 0.05
    assert F.kl_div(p.log(), prior, reduction="sum").item() == pytest.approx(reverse, abs=1e-5)
    half = _policy(D=3, beta=0.5, lambda_p=0.2).token_regularizer(p[None, None])
    assert half.item() == pytest.approx(forward / 2, abs=1e-5)


def test_hand_computed_expected_loss():
    policy = _policy(D=2, beta=0.0)
    tokens = torch.tensor([[1, 2]])  # position 0 predicts token 2
    step1 = torch.zeros(1, 2, 3)  # uniform: CE = ln 3
    step2 = torch.zeros(1, 2, 3)
    step2[0, 0, 2] = math.log(2.0)  # p(target) = 2/4: CE = ln 2
    q = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])
    out = SimpleNamespace(q=q, state={"step_logits": [step1, step2]}, logits=step2)
    mask = torch.tensor([[True, False]])
    terms = policy.loss(out, tokens, mask, torch.ones_like(mask))
    assert terms.ce.item() == pytest.approx(0.25 * math.log(3) + 0.75 * math.log(2), abs=1e-6)
    assert terms.regularizer.item() == 0.0
    # β·KL(p ‖ prior), mean over both tokens; prior for λ_p = 0.5, D = 2: 2/3, 1/3
    policy = _policy(D=2, beta=2.0, lambda_p=0.5)
    kl = [0.25 * math.log(0.25 * 1.5) + 0.75 * math.log(0.75 * 3), 0.5 * math.log(0.75) + 0.5 * math.log(1.5)]
    terms = policy.loss(out, tokens, mask, torch.ones_like(mask))
    assert terms.regularizer.item() == pytest.approx(2.0 * sum(kl) / 2, abs=1e-5)
    assert terms.total.item() == pytest.approx(terms.ce.item() + terms.regularizer.item())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda D: st.lists(st.floats(0, 1), min_size=D, max_size=D)))
def test_q_is_a_distribution(lambdas):
    D = len(lambdas)
    lam = torch.tensor([[lambdas]], dtype=torch.float32)
    _, keeps, q = _drive(_policy(D), lam)
    assert (q >= 0).all() and q.sum(-1).item() == pytest.approx(1.0, abs=1e-5)
    expected, survive = [], 1.0
    for n in range(D - 1):
        expected.append(survive * lambdas[n])
        survive *= 1 - lambdas[n]
    assert q[0, 0].tolist() == pytest.approx(expected + [survive], abs=1e-5)
    assert int(keeps.sum()) + 1 == depth_at_cdf_threshold(q, 0.5).item()  # the median


# -- the model -----------------------------------------------------------------------------

def _model(D=6, seed=8, bias=-1.0, **options):
    model = build_model(preset_config("test", vocab_size=24, max_iters=D), "pondernet", seed=seed, **options)
    with torch.no_grad():  # spread the exits over 1..D
        model.policy.decider.fc_out.bias.fill_(bias)
    return model.eval()


def _tokens(b=4, p=20, seed=3):
    return torch.randint(1, 24, (b, p), generator=torch.Generator().manual_seed(seed))


def test_inference_invariants_and_fast_path():
    model = _model()
    fast, masked = _both(model, _tokens())
    _assert_same(fast, masked)
    out = fast
    assert (out.exit_depth >= 1).all() and len(set(out.exit_depth.flatten().tolist())) > 1
    assert torch.equal(out.exit_depth, depth_at_cdf_threshold(out.q, 0.5))  # the median
    assert torch.equal(out.exit_depth, out.running.sum(0))
    assert out.iterations_run == int(out.exit_depth.max())
    assert torch.allclose(out.q.sum(-1), torch.ones(()), atol=1e-5) and (out.q >= 0).all()
    # after an early stop q is what the full-depth loop gives
    model.stop_when_all_exited = False
    assert torch.allclose(model(_tokens()).q, out.q, atol=1e-5)


def test_decoding_matches_the_full_forward():
    model = _model(seed=2)
    tokens = _tokens(2, 10, seed=4)
    out = model(tokens)
    logits, depths, _ = teacher_forced(model, tokens)
    assert torch.equal(depths, out.exit_depth)
    assert torch.allclose(logits, out.logits, atol=1e-4)


def test_training_runs_every_step_and_gradients_reach_the_decider():
    model = _model(D=4, bias=0.0)
    model.train()
    tokens = _tokens(2, 12)
    out = model(tokens)
    assert (out.exit_depth == 4).all() and len(out.state["step_logits"]) == 4
    assert torch.allclose(out.state["step_logits"][-1], out.logits, atol=1e-5)  # ŷ_D is the Coda on h(D)
    terms = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
    for part in (terms.ce, terms.regularizer):
        model.zero_grad()
        part.backward(retain_graph=True)
        grad = model.policy.decider.fc_out.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_loss_needs_a_training_pass():
    model = _model(D=3)
    tokens = _tokens(1, 6)
    with pytest.raises(AniraError, match="predictions of every step"):
        compute_loss(model, model(tokens), tokens, torch.ones_like(tokens, dtype=torch.bool))


def test_signals_are_catalogued_and_patching_them_halts():
    cfg = preset_config("test", vocab_size=24)
    model = build_model(cfg, "pondernet", seed=0).eval()
    model.stop_when_all_exited = False
    expected = _expected(cfg, "pondernet")
    assert {n for n in model.hook_dict if ".halt." in n} == {n for n in expected if ".halt." in n}
    _, cache = model.run_with_cache(torch.randint(1, 24, (2, 7)))
    assert set(cache.keys()) == set(expected)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == _shape(shape, cfg, 2, 7), name
    model.stop_when_all_exited = True
    out = model.run_with_hooks(_tokens(2, 7), fwd_hooks=[("loop.0.halt.hook_prob", lambda v, hook: torch.ones_like(v))])
    assert (out.exit_depth == 1).all() and torch.allclose(out.q[..., 0], torch.ones(()))


@pytest.mark.parametrize("options, message", [
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"lambda_p": 0.0}, "lambda_p must be in (0, 1)"),
    ({"lambda_p": 1.0}, "lambda_p must be in (0, 1)"),
    ({"gamma": 0.1}, "unknown option(s) gamma"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(AniraError) as err:
        build_model(preset_config("test", vocab_size=24), "pondernet", **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--task", "mano", "--policy", "pondernet", "--preset", "smoke", "--set", "model.max_iters=3",
            "--set", "policy.lambda_p=0.3", "--set", "task.train=1,2", "--set", "task.test_id=1,2",
            "--set", "task.test_ood=3,3", "--steps", "3", "--out", out, "--quiet", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "completed" and report["step"] == 3
    model, _ = __import__("anira").load(out)
    assert type(model.policy).name == "pondernet" and model.policy.lambda_p == 0.3
