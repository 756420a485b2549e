"""Mixture-of-Recursions routers: ``mor-token`` (token choice) and ``mor-expert`` (expert choice)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anira
from anira import AniraError, build_model, preset_config
from anira.cli import main
from anira.halting import LoopContext
from anira.objective import compute_loss
from anira.plugins.policies.mor_expert import capacity_counts, top_k_running
from anira.plugins.policies.mor_token import balance_loss
from conftest import make_model
from test_hooks import _expected, _shape

MOR = ["mor-token", "mor-expert"]


def _tokens(b=3, p=12, seed=1):
    return torch.randint(1, 24, (b, p), generator=torch.Generator().manual_seed(seed))


def _train_out(policy, seed=0, max_iters=5, tokens=None, **options):
    cfg = preset_config("test", vocab_size=24, max_iters=max_iters)
    model = build_model(cfg, policy, seed=seed, **options)
    model.train()
    tokens = _tokens() if tokens is None else tokens
    return model, tokens, model(tokens)


# -- mor-token: the balancing loss ----------------------------------------------------------


def test_balance_loss_hand_computed():
    q = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], [[0.5, 0.3, 0.2], [0.05, 0.05, 0.9]]])
    mask = torch.tensor([[True, True], [True, False]])  # the last token is padding
    # top-1 over the 3 real tokens: depths 1, 2, 1 -> f = (2/3, 1/3, 0)
    # P = mean q over them = (1.3/3, 1.1/3, 0.6/3); L = 3·(2/3·1.3/3 + 1/3·1.1/3) = 3.7/3
    assert balance_loss(q, mask).item() == pytest.approx(3.7 / 3, abs=1e-6)
    uniform = torch.full((2, 2, 4), 0.25)
    uniform[..., 0] += 1e-3  # every token picks depth 1 but P is uniform: L = 4·(1·P_1) ≈ 1
    assert balance_loss(uniform, torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(4 * 0.251, abs=1e-5)
    # the gradient flows through P only (f is a count)
    qq = q.clone().requires_grad_(True)
    balance_loss(qq, mask).backward()
    expected = 3 * torch.tensor([2 / 3, 1 / 3, 0.0]) / 3  # D·f_d / n on each real token
    assert torch.allclose(qq.grad[0, 0], expected) and torch.all(qq.grad[1, 1] == 0)


def test_token_loss_adds_weighted_balance_over_non_padding():
    model, tokens, out = _train_out("mor-token", balance_weight=0.5)
    tokens = tokens.clone()
    tokens[0, 8:] = 0
    token_mask = tokens != 0
    loss_mask = torch.ones_like(token_mask)
    terms = compute_loss(model, out, tokens, loss_mask, token_mask)
    assert terms.regularizer.item() == pytest.approx(0.5 * balance_loss(out.q, token_mask).item(), rel=1e-6)
    assert terms.total.item() == pytest.approx(terms.ce.item() + terms.regularizer.item(), rel=1e-6)


# -- mor-expert: top-k, capacity, the auxiliary router ---------------------------------------


def test_top_k_running_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.8, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]])
    running = torch.tensor([[False, True, True, True, True, True], [True] * 6])
    sel = top_k_running(scores, running, 0.5)
    # row 0: 5 running -> k = 3: 0.8, then the tie 0.5/0.5 -> both (positions 2, 3); 0.9 is not running
    assert sel[0].tolist() == [False, False, True, True, True, False]
    # row 1: 6 running -> k = 3; all tied -> the earliest three
    assert sel[1].tolist() == [True, True, True, False, False, False]
    assert capacity_counts(torch.ones(1, 10, dtype=torch.bool), 0.3).item() == 3  # not 4 from 3.0000000000000004
    assert capacity_counts(torch.zeros(1, 4, dtype=torch.bool), 0.5).item() == 0


@pytest.mark.parametrize("capacity, counts", [(0.5, [12, 6, 3, 2, 1]), (0.3, [12, 4, 2, 1, 1]), (1.0, [12] * 5)])
def test_top_k_counts_per_step(capacity, counts):
    _, _, out = _train_out("mor-expert", capacity=capacity)
    per_step = out.running.sum(-1)  # (D, b)
    assert per_step.tolist() == [[c] * 3 for c in counts]


def test_selection_is_top_k_of_emitted_scores_and_capacity_respected():
    cfg = preset_config("test", vocab_size=24, max_iters=5)
    model = build_model(cfg, "mor-expert", seed=3, capacity=0.4)
    model.train()
    out, cache = model.run_with_cache(_tokens(seed=4))
    for t in range(cfg.max_iters - 1):
        running, nxt = out.running[t], out.running[t + 1]
        assert torch.all(nxt.sum(-1) <= capacity_counts(running, 0.4))
        expected = top_k_running(cache[f"loop.{t}.halt.hook_prob"], running, 0.4)
        assert torch.equal(nxt, expected)


def test_aux_loss_hand_computed_and_trains_only_the_aux_router():
    model, tokens, out = _train_out("mor-expert", aux_weight=2.0)
    tokens = tokens.clone()
    tokens[1, 7:] = 0
    token_mask = tokens != 0
    terms = compute_loss(model, out, tokens, torch.ones_like(token_mask), token_mask)
    total, count = 0.0, 0
    for logit, target, eligible in zip(out.state["aux_logits"], out.state["targets"], out.state["eligible"]):
        p = torch.sigmoid(logit)
        bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
        m = eligible & token_mask
        total, count = total + bce[m].sum().item(), count + int(m.sum())
    assert len(out.state["aux_logits"]) == model.cfg.max_iters - 1
    assert terms.regularizer.item() == pytest.approx(2.0 * total / count, rel=1e-5)
    # targets are the top-k choices: the next step's running mask
    for t, target in enumerate(out.state["targets"]):
        assert torch.equal(target.bool(), out.running[t + 1])
    terms.regularizer.backward()  # the aux loss alone reaches the aux router and nothing else
    for name, param in model.named_parameters():
        touched = param.grad is not None and bool(param.grad.abs().sum() > 0)
        assert touched == name.startswith("policy.aux_router."), name


def test_aux_router_learns_the_selection():
    torch.manual_seed(0)
    model, tokens, _ = _train_out("mor-expert", seed=2)
    opt = torch.optim.Adam(model.policy.aux_router.parameters(), lr=1e-2)
    mask = tokens != 0
    losses = []
    for _ in range(25):
        out = model(tokens)
        loss = model.policy.aux_loss(out.state, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# -- both ------------------------------------------------------------------------------------


def test_gradients_reach_the_routers():
    model, tokens, out = _train_out("mor-token", balance_weight=0.0)
    compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool)).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.router.parameters())

    model, tokens, out = _train_out("mor-expert", aux_weight=0.0)
    terms = compute_loss(model, out, tokens, torch.ones_like(tokens, dtype=torch.bool))
    terms.ce.backward()  # the task loss alone trains the main router (through the gate)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.router.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.policy.aux_router.parameters())


@pytest.mark.parametrize("policy", MOR)
@pytest.mark.parametrize("train", [True, False])
def test_engine_invariants(policy, train):
    cfg = preset_config("test", vocab_size=24, max_iters=5)
    model = build_model(cfg, policy, seed=5)
    model.train(train)
    out = model(_tokens(4, 16, seed=2))
    running = out.running
    assert running[0].all()  # every token runs iteration 1
    assert torch.all(running[1:] <= running[:-1])  # nobody restarts
    assert torch.equal(out.exit_depth, running.sum(0)) and out.exit_depth.min() >= 1
    assert torch.allclose(out.q.sum(-1), torch.ones_like(out.expected_depth))
    if policy == "mor-token":
        assert torch.equal(out.exit_depth, out.q.argmax(-1) + 1)  # top-1 of the router
    else:
        assert torch.equal(out.q, F.one_hot(out.exit_depth - 1, cfg.max_iters).float())
    assert 1 < out.exit_depth.float().mean() < cfg.max_iters  # the routers really mix depths


@pytest.mark.parametrize("policy", MOR)
def test_fast_path_equals_masked_path(policy):
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, policy, seed=8)
    tokens = _tokens(4, 20, seed=3)
    tokens[0, 11:] = 0  # padding
    model.fast_inference = True
    assert model.uses_fast_path()
    fast = model(tokens)
    model.fast_inference = False
    masked = model(tokens)
    assert (fast.exit_depth > 1).any() and (fast.exit_depth == 1).any()  # the routers mix depths
    assert torch.equal(fast.exit_depth, masked.exit_depth) and torch.equal(fast.running, masked.running)
    assert torch.allclose(fast.logits, masked.logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast.q, masked.q, atol=1e-6)


@pytest.mark.parametrize("policy", MOR)
def test_inference_is_causal(policy):
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, policy, seed=6)
    tokens = _tokens(2, 16, seed=7)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] % 23) + 1  # different later tokens
    a, b = model(tokens), model(changed)
    assert torch.equal(a.exit_depth[:, :10], b.exit_depth[:, :10])
    assert torch.allclose(a.logits[:, :10], b.logits[:, :10], atol=1e-5)
    assert not torch.allclose(a.logits[:, 10:], b.logits[:, 10:])


class _FirstFeature(nn.Module):
    """A stand-in router whose logit is the state's first feature."""

    def forward(self, h):
        return h[..., :1]


def test_training_top_k_may_depend_on_later_tokens():
    """Documented non-causality: in training a later token's score can push an earlier one out."""
    cfg = preset_config("test", vocab_size=24, max_iters=3)
    policy = build_model(cfg, "mor-expert", seed=0, capacity=0.5).policy
    policy.router = _FirstFeature()
    ctx = LoopContext(max_iters=3, stochastic=True, readout=lambda h: h)
    h = torch.zeros(1, 2, cfg.d_model)
    h[0, 0, 0] = 1.0  # earlier token scores sigmoid(1)
    h_low, h_high = h.clone(), h.clone()
    h_low[0, 1, 0], h_high[0, 1, 0] = -1.0, 3.0  # only the later token differs
    emit = lambda name, value: value  # noqa: E731
    _, keep_low = policy.step(policy.begin(h, ctx, emit), h_low, 0, ctx, emit)
    _, keep_high = policy.step(policy.begin(h, ctx, emit), h_high, 0, ctx, emit)
    assert keep_low.tolist() == [[1.0, 0.0]] and keep_high.tolist() == [[0.0, 1.0]]


def test_patched_signals_change_the_decision():
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    tokens = _tokens()
    token = make_model(cfg, "mor-token", seed=1)
    q3 = F.one_hot(torch.full(tokens.shape, 2), 4).float()
    out = token.run_with_hooks(tokens, fwd_hooks=[("halt.hook_q", lambda v, hook: q3)])
    assert (out.exit_depth == 3).all()
    expert = make_model(cfg, "mor-expert", seed=1)
    hooks = [(f"loop.{t}.halt.hook_aux_prob", lambda v, hook: torch.ones_like(v)) for t in range(4)]
    assert (expert.run_with_hooks(tokens, fwd_hooks=hooks).exit_depth == 4).all()
    hooks = [(f"loop.{t}.halt.hook_prob", lambda v, hook: torch.ones_like(v)) for t in range(4)]
    # the main router's score decides nothing at inference
    assert not (expert.run_with_hooks(tokens, fwd_hooks=hooks).exit_depth == 4).all()


@pytest.mark.parametrize("policy", MOR)
def test_hook_catalogue_matches_model(policy):
    cfg = preset_config("test", vocab_size=24)
    model = make_model(cfg, policy)
    model.stop_when_all_exited = False  # every site fires
    expected = _expected(cfg, policy)
    assert set(model.hook_dict) == set(expected)
    _, cache = model.run_with_cache(_tokens(2, 7))
    assert set(cache.keys()) == set(expected)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == _shape(shape, cfg, 2, 7), name


@pytest.mark.parametrize("policy, options", [
    ("mor-token", {"balance_weight": -1.0}),
    ("mor-token", {"balance_weight": "big"}),
    ("mor-expert", {"capacity": 0.0}),
    ("mor-expert", {"capacity": 1.5}),
    ("mor-expert", {"threshold": 1.0}),
    ("mor-expert", {"aux_weight": float("nan")}),
    ("mor-expert", {"top_k": 2}),
])
def test_bad_options_are_one_line_errors(policy, options):
    with pytest.raises(AniraError) as err:
        build_model(preset_config("test", vocab_size=24), policy, **options)
    assert "\n" not in str(err.value) and policy in str(err.value)


@pytest.mark.parametrize("policy, option", [
    ("mor-token", "policy.balance_weight=0.05"),
    ("mor-expert", "policy.capacity=0.6"),
])
def test_train_cli_smoke(tmp_path, capsys, policy, option):
    out = str(tmp_path / "run")
    argv = ["train", "--task", "mano", "--policy", policy, "--preset", "smoke", "--set", "model.max_iters=3",
            "--set", "task.train=1,2", "--set", "task.test_id=1,2", "--set", "task.test_ood=3,3",
            "--set", option, "--steps", "3", "--out", out, "--quiet", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "completed" and report["step"] == 3
    model, task = anira.load(out)
    assert type(model.policy).name == policy
    key, value = option.split(".", 1)[1].split("=")
    assert getattr(model.policy, key) == float(value)
