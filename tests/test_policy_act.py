"""The ``act`` policy: ACT's halting sums, remainders, ponder cost and state mixture
against hand-computed cases, q, gradients, the engine's invariants and training."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anira import AniraError, build_model, preset_config
from anira.cli import main
from anira.decode import teacher_forced
from anira.halting import LoopContext
from anira.objective import compute_loss
from anira.plugins.policies.act import AdaptiveComputationTime, act_weights, ponder_cost
from test_fast_path import _assert_same, _both
from test_hooks import _expected, _shape

torch.set_num_threads(1)


def _drive(policy, probs, states=None):
    """Run the policy's begin/step/finish with the halting units patched to ``probs``
    (b, p, D), the way a hook on ``loop.{t}.halt.hook_prob`` would. The state at
    depth n is n·1 unless ``states`` (D, b, p, d) is given."""
    b, p, D = probs.shape
    d = policy.decider.norm.normalized_shape[0]
    if states is None:
        states = torch.arange(1, D + 1, dtype=torch.float32)[:, None, None, None].expand(D, b, p, d)
    ctx = LoopContext(max_iters=D, stochastic=False, readout=lambda x: x)
    state = policy.begin(torch.zeros(b, p, d), ctx, lambda name, v: v)
    keeps = []
    for t in range(D):
        def emit(name, value, t=t):
            return probs[..., t] if name == "prob" else value

        state, keep = policy.step(state, states[t], t, ctx, emit)
        keeps.append(keep)
    q = policy.finish(state, ctx, states[0])
    return state, torch.stack(keeps, -1), q


def _policy(D=4, **options):
    return AdaptiveComputationTime(preset_config("test", vocab_size=24, max_iters=D), **options)


# -- formulas ------------------------------------------------------------------------------

# (halting units p_1..p_4, N, R, weights, mixture of h_n = n)
HAND = [
    ([0.3, 0.5, 0.4, 0.9], 3, 0.2, [0.3, 0.5, 0.2, 0.0], 0.3 * 1 + 0.5 * 2 + 0.2 * 3),
    ([0.1, 0.1, 0.1, 0.1], 4, 0.7, [0.1, 0.1, 0.1, 0.7], 0.1 * 1 + 0.1 * 2 + 0.1 * 3 + 0.7 * 4),  # forced at D
    ([0.995, 0.2, 0.2, 0.2], 1, 1.0, [1.0, 0.0, 0.0, 0.0], 1.0),  # halts at once: R = 1
]


def test_hand_computed_halting_sums_remainders_and_mixture():
    probs = torch.tensor([[case[0] for case in HAND]])  # (1, 3, 4)
    state, keeps, q = _drive(_policy(), probs)
    for i, (_, n, r, w, mix) in enumerate(HAND):
        assert state["steps"][0, i].item() == n
        assert state["remainder"][0, i].item() == pytest.approx(r, abs=1e-6)
        assert q[0, i].tolist() == pytest.approx(w, abs=1e-6)
        assert state["mix"][0, i].tolist() == pytest.approx([mix] * state["mix"].shape[-1], abs=1e-5)
        # ponder cost N + R
        assert ponder_cost(q)[0, i].item() == pytest.approx(n + r, abs=1e-6)
        # keep after depth n is 1 exactly while n < N
        assert keeps[0, i].tolist() == [float(k < n) for k in range(1, 5)]
    assert _policy(tau=0.5).token_regularizer(q)[0].tolist() == pytest.approx([1.6, 2.35, 1.0], abs=1e-6)


def test_epsilon_moves_the_threshold():
    probs = torch.tensor([[[0.5, 0.45, 0.3, 0.3]]])  # sum 0.95 after two steps
    state, _, q = _drive(_policy(epsilon=0.1), probs)  # 0.95 >= 0.9: N = 2, R = 0.5
    assert state["steps"].item() == 2 and q[0, 0].tolist() == pytest.approx([0.5, 0.5, 0, 0])
    state, _, q = _drive(_policy(epsilon=0.01), probs)  # 0.95 < 0.99; 1.25 >= 0.99: N = 3, R = 0.05
    assert state["steps"].item() == 3 and q[0, 0].tolist() == pytest.approx([0.5, 0.45, 0.05, 0])
    assert ponder_cost(q).item() == pytest.approx(3.05)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(lambda D: st.lists(st.floats(0, 1), min_size=D, max_size=D)),
    st.floats(1e-3, 0.5),
)
def test_q_is_a_distribution_and_matches_the_closed_form(probs, epsilon):
    D = len(probs)
    p = torch.tensor([[probs]], dtype=torch.float32)
    state, keeps, q = _drive(_policy(D, epsilon=epsilon), p)
    assert (q >= 0).all()
    assert q.sum(-1).item() == pytest.approx(1.0, abs=1e-5)
    w, n, r = act_weights(p, epsilon)
    assert torch.allclose(q, w, atol=1e-6)
    assert state["steps"].item() == n.item() == int(keeps.sum().item()) + 1
    assert ponder_cost(q).item() == pytest.approx(n.item() + r.item(), abs=1e-5)
    # the mixture's weights are q: with h_n = n the mixed state is Σ_n n·w_n
    mixed = sum((i + 1) * v for i, v in enumerate(q[0, 0].tolist()))
    assert state["mix"][0, 0, 0].item() == pytest.approx(mixed, abs=1e-4)


# -- the model -----------------------------------------------------------------------------

def _model(D=6, seed=8, bias=-1.0, **options):
    model = build_model(preset_config("test", vocab_size=24, max_iters=D), "act", seed=seed, **options)
    with torch.no_grad():  # spread the halting steps over 1..D
        model.policy.decider.fc_out.bias.fill_(bias)
    return model.eval()


def _tokens(b=4, p=20, seed=3):
    return torch.randint(1, 24, (b, p), generator=torch.Generator().manual_seed(seed))


def test_engine_invariants_and_fast_path():
    model = _model()
    tokens = _tokens()
    fast, masked = _both(model, tokens)
    _assert_same(fast, masked)
    out = fast
    assert (out.exit_depth >= 1).all() and len(set(out.exit_depth.flatten().tolist())) > 1
    assert torch.equal(out.exit_depth, out.state["steps"])  # exit depth = the halting step N
    assert torch.equal(out.exit_depth, out.running.sum(0))
    assert out.iterations_run == int(out.exit_depth.max())
    assert torch.allclose(out.q.sum(-1), torch.ones(()), atol=1e-5) and (out.q >= 0).all()
    # N is the last depth with weight, and the Coda read the mixture, not the exit state
    depth = torch.arange(1, 7)
    assert torch.equal(torch.where(out.q > 0, depth, 0).amax(-1), out.exit_depth)
    assert torch.allclose(out.logits, model.readout(out.state["mix"]), atol=1e-5)


def test_training_and_inference_halt_the_same_way():
    model = _model()
    tokens = _tokens(2, 12)
    inference = model(tokens)
    model.train()
    training = model(tokens)
    assert torch.equal(training.exit_depth, inference.exit_depth)
    assert torch.allclose(training.logits, inference.logits, atol=1e-5)
    assert torch.allclose(training.q, inference.q, atol=1e-6)


def test_decoding_matches_the_full_forward():
    model = _model(seed=2)
    tokens = _tokens(2, 10, seed=4)
    out = model(tokens)
    logits, depths, _ = teacher_forced(model, tokens)
    assert torch.equal(depths, out.exit_depth)
    assert torch.allclose(logits, out.logits, atol=1e-4)


@pytest.mark.parametrize("part", ["ce", "ponder"])
def test_gradients_reach_the_decider(part):
    model = _model(bias=0.0, tau=0.01 if part == "ponder" else 0.0)
    model.train()
    tokens = _tokens(2, 12)
    out = model(tokens)
    terms = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
    (terms.ce if part == "ce" else terms.regularizer).backward()
    grad = model.policy.decider.fc_out.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    if part == "ponder":
        assert terms.regularizer.item() == pytest.approx(0.01 * ponder_cost(out.q).mean().item(), rel=1e-5)


def test_signals_are_catalogued_and_patching_them_halts():
    cfg = preset_config("test", vocab_size=24)
    model = build_model(cfg, "act", seed=0).eval()
    model.stop_when_all_exited = False
    expected = _expected(cfg, "act")
    assert {n for n in model.hook_dict if ".halt." in n} == {n for n in expected if ".halt." in n}
    _, cache = model.run_with_cache(torch.randint(1, 24, (2, 7)))
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == _shape(shape, cfg, 2, 7), name
    model.stop_when_all_exited = True
    out = model.run_with_hooks(_tokens(2, 7), fwd_hooks=[("loop.0.halt.hook_prob", lambda v, hook: torch.ones_like(v))])
    assert (out.exit_depth == 1).all() and out.iterations_run == 1


@pytest.mark.parametrize("options, message", [
    ({"epsilon": 0.0}, "epsilon must be in (0, 1)"),
    ({"epsilon": 1.0}, "epsilon must be in (0, 1)"),
    ({"tau": -0.1}, "tau must be >= 0"),
    ({"gamma": 0.1}, "unknown option(s) gamma"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(AniraError) as err:
        build_model(preset_config("test", vocab_size=24), "act", **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--task", "mano", "--policy", "act", "--preset", "smoke", "--set", "model.max_iters=3",
            "--set", "policy.tau=0.05", "--set", "task.train=1,2", "--set", "task.test_id=1,2",
            "--set", "task.test_ood=3,3", "--steps", "3", "--out", out, "--quiet", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "completed" and report["step"] == 3
    model, _ = __import__("anira").load(out)
    assert type(model.policy).name == "act" and model.policy.tau == 0.05
