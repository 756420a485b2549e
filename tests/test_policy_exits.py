"""Training-free exits (exit-kl, exit-latent, exit-entropy): criteria by hand,
threshold behaviour, engine invariants, fast path, causality, patching, and
swapping onto the trained fixed checkpoint."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import anira
from anira import AniraError, build_model, build_registry, preset_config
from anira.halting import LoopContext
from anira.plugins.policies.exit_criteria import (
    EntropyExit,
    KLExit,
    LatentExit,
    entropy,
    kl_divergence,
    relative_change,
    with_policy,
)
from conftest import make_model
from test_fast_path import _assert_same, _both
from test_hooks import _expected, _shape

torch.set_num_threads(1)

EXITS = ["exit-kl", "exit-latent", "exit-entropy"]
SIGNAL = {"exit-kl": "kl", "exit-latent": "rel_change", "exit-entropy": "entropy_delta"}
# thresholds that give a mix of exit depths on checkpoints/brevo-fixed
MIXED = {"exit-kl": 0.1, "exit-latent": 0.5, "exit-entropy": 0.1}
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "brevo-fixed"


def _emit(name, value):
    return value


def _ctx(readout=None, D=4, stochastic=False):
    return LoopContext(max_iters=D, stochastic=stochastic, readout=readout or (lambda h: h))


def _policy(cls, D=4, **options):
    return cls(preset_config("test", vocab_size=24, max_iters=D), **options)


@pytest.fixture(scope="module")
def brevo():
    """The trained fixed model and a batch of BREVO test instances (with padding)."""
    model, task = anira.load(CHECKPOINT)
    rng = np.random.default_rng(0)
    examples = [task.sample(k, rng, "test") for k in (3, 4, 5) for _ in range(8)]
    width = max(len(e.tokens) for e in examples)
    tokens = torch.full((len(examples), width), task.tokenizer.pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        tokens[i, : len(e.tokens)] = torch.as_tensor(e.tokens)
    real = tokens != task.tokenizer.pad_id
    with torch.no_grad():
        full = model(tokens)
    return model, tokens, real, full


# -- the criteria by hand -----------------------------------------------------------------


def test_kl_direction_by_hand():
    p, q = torch.tensor([0.9, 0.1]).log(), torch.tensor([0.5, 0.5]).log()
    # KL(p || q) = .9 ln(.9/.5) + .1 ln(.1/.5); the reverse is .5 ln(.5/.9) + .5 ln(.5/.1)
    assert kl_divergence(p, q).item() == pytest.approx(0.3680642, abs=1e-6)
    assert kl_divergence(q, p).item() == pytest.approx(0.5108256, abs=1e-6)
    # the policy: p_0 = softmax(readout(h0)) = (.5, .5), p_1 = (.9, .1); the value is KL(p_1 || p_0)
    policy = _policy(KLExit, threshold=0.4)
    ctx = _ctx()
    h0, h1 = q.view(1, 1, 2), p.view(1, 1, 2)  # readout = identity: the state is the logits
    seen = {}

    def emit(name, value):
        seen[name] = value
        return value

    state = policy.begin(h0, ctx, emit)
    state, keep = policy.step(state, h1, 0, ctx, emit)
    assert seen["kl"].item() == pytest.approx(0.3680642, abs=1e-6)
    assert keep.item() == 0  # 0.368 < 0.4 stops; the reverse direction (0.511) would not
    assert _policy(KLExit, threshold=0.3).step(policy.begin(h0, ctx, _emit), h1, 0, ctx, _emit)[1].item() == 1


def test_kl_handles_zero_probabilities():
    log_p = torch.tensor([0.0, -math.inf])  # p = (1, 0)
    log_q = torch.tensor([math.log(0.5), -math.inf])
    assert kl_divergence(log_p, log_q).item() == pytest.approx(math.log(2))
    assert entropy(log_p).item() == 0


def test_relative_change_by_hand():
    h0, h1 = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[3.3, 4.4]]])
    # ||h1 - h0|| = 0.5, ||h0|| = 5 -> 0.1 (dividing by ||h1|| would give 0.0909)
    assert relative_change(h1, h0).item() == pytest.approx(0.1, abs=1e-6)
    policy = _policy(LatentExit, threshold=0.095)
    seen = {}
    state = policy.begin(h0, _ctx(), lambda n, v: seen.setdefault(n, v))
    _, keep = policy.step(state, h1, 0, _ctx(), lambda n, v: seen.setdefault(n, v))
    assert seen["rel_change"].item() == pytest.approx(0.1, abs=1e-6)
    assert keep.item() == 1  # 0.1 >= 0.095: continue
    _, keep = _policy(LatentExit, threshold=0.105).step(state, h1, 0, _ctx(), _emit)
    assert keep.item() == 0


def test_entropy_difference_by_hand():
    h0 = torch.tensor([0.2, 0.8]).log().view(1, 1, 2)
    h1 = torch.tensor([0.9, 0.1]).log().view(1, 1, 2)
    # H(.2,.8) = 0.5004024, H(.9,.1) = 0.3250830, difference 0.1753195
    assert entropy(h0).item() == pytest.approx(0.5004024, abs=1e-6)
    policy = _policy(EntropyExit, threshold=0.18)
    seen = {}
    state = policy.begin(h0, _ctx(), _emit)
    _, keep = policy.step(state, h1, 0, _ctx(), lambda n, v: seen.setdefault(n, v))
    assert seen["entropy_delta"].item() == pytest.approx(0.1753195, abs=1e-6)
    assert keep.item() == 0
    assert _policy(EntropyExit, threshold=0.17).step(state, h1, 0, _ctx(), _emit)[1].item() == 1


@pytest.mark.parametrize("min_iters", [1, 3])
def test_min_iters_last_depth_and_one_hot_q(min_iters):
    D = 4
    policy = _policy(LatentExit, D=D, threshold=1e9, min_iters=min_iters)
    h = torch.randn(2, 3, 5)
    state, ctx = policy.begin(h, _ctx(D=D), _emit), _ctx(D=D)
    keeps = []
    for t in range(D):
        h = h + 1
        state, keep = policy.step(state, h, t, ctx, _emit)
        keeps.append(keep)
    assert [k.max().item() for k in keeps] == [1.0] * (min_iters - 1) + [0.0] * (D - min_iters + 1)
    q = policy.finish(state, ctx, h)
    assert torch.equal(q.argmax(-1) + 1, torch.full((2, 3), min_iters)) and torch.equal(q.sum(-1), torch.ones(2, 3))
    # a tiny threshold: never stops before D, and depth D always ends the loop
    tiny = _policy(LatentExit, D=D, threshold=1e-30)
    state = tiny.begin(h, ctx, _emit)
    for t in range(D):
        h = h + 1
        state, keep = tiny.step(state, h, t, ctx, _emit)
        assert keep.min().item() == (1.0 if t < D - 1 else 0.0) and keep.max().item() == keep.min().item()


@pytest.mark.parametrize("cls", [KLExit, LatentExit, EntropyExit])
def test_options_are_validated(cls):
    assert cls.option_names() == ["threshold", "min_iters"]
    assert cls.timing == "training-free"
    assert _policy(cls).threshold == cls.default_threshold
    for bad in (0, -1.0, float("nan"), True, "0.1"):
        with pytest.raises(AniraError, match="threshold"):
            _policy(cls, threshold=bad)
    for bad in (0, 5, 1.5, True):
        with pytest.raises(AniraError, match="min_iters"):
            _policy(cls, D=4, min_iters=bad)
    with pytest.raises(AniraError, match="unknown option"):
        build_model(preset_config("test", vocab_size=24), cls.name, rule="mode")


def test_registered():
    rows = {r.name: r for r in build_registry(load_entry_points=False).rows() if r.kind == "policy"}
    for name in EXITS:
        assert rows[name].plugin == "anira.plugins.policies.exit_criteria"
        assert rows[name].obj.timing == "training-free"


# -- in the model ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", EXITS)
def test_hook_catalogue_matches_model(policy):
    cfg = preset_config("test", vocab_size=24)
    model = make_model(cfg, policy)
    model.stop_when_all_exited = False
    expected = _expected(cfg, policy)
    assert f"loop.0.halt.hook_{SIGNAL[policy]}" in expected
    _, cache = model.run_with_cache(torch.randint(1, 24, (2, 7)))
    assert set(cache.keys()) == set(expected) == set(model.hook_dict)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == _shape(shape, cfg, 2, 7), name


@pytest.mark.parametrize("policy", EXITS)
def test_threshold_extremes(policy, brevo):
    fixed, tokens, real, full = brevo
    with torch.no_grad():
        huge = with_policy(fixed, policy, threshold=1e9)(tokens)
        assert (huge.exit_depth == 1).all() and huge.iterations_run == 1
        assert (with_policy(fixed, policy, threshold=1e9, min_iters=3)(tokens).exit_depth == 3).all()
        tiny = with_policy(fixed, policy, threshold=1e-30)(tokens)
    D = fixed.cfg.max_iters
    assert (tiny.exit_depth == D).all()
    assert torch.allclose(tiny.logits, full.logits, atol=1e-5)  # full depth: the fixed model's output
    agree = (huge.logits.argmax(-1) == full.logits.argmax(-1))[real].float().mean()
    assert agree < 1


@pytest.mark.parametrize("policy", EXITS)
def test_engine_invariants(policy, brevo):
    fixed, tokens, _, _ = brevo
    model = with_policy(fixed, policy, threshold=MIXED[policy])
    with torch.no_grad():
        out = model(tokens)
    D = fixed.cfg.max_iters
    assert len(out.exit_depth.unique()) >= 3  # really mixed
    assert out.exit_depth.min() >= 1 and out.exit_depth.max() <= D
    running = out.running
    assert running[0].all()  # every token runs iteration 1
    assert not (running[1:] & ~running[:-1]).any()  # no restarts
    assert torch.equal(running.sum(0), out.exit_depth)
    assert out.iterations_run == int(out.exit_depth.max())
    assert torch.equal(out.q.argmax(-1) + 1, out.exit_depth)  # q is one-hot at the exit depth
    assert torch.equal(out.q.sum(-1), torch.ones_like(out.q[..., 0]))
    assert torch.allclose(out.expected_depth, out.exit_depth.float())


@pytest.mark.parametrize("policy", EXITS)
def test_fast_path_equals_masked_path(policy, brevo):
    fixed, tokens, _, _ = brevo
    model = with_policy(fixed, policy, threshold=MIXED[policy])
    with torch.no_grad():
        fast, masked = _both(model, tokens)
    _assert_same(fast, masked)
    assert len(fast.exit_depth.unique()) >= 3


@pytest.mark.parametrize("policy", EXITS)
def test_fast_path_equals_masked_path_random_model(policy):
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, policy, seed=8, threshold={"exit-kl": 1e-4, "exit-latent": 0.3, "exit-entropy": 1e-3}[policy])
    tokens = torch.randint(1, 24, (4, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _assert_same(*_both(model, tokens))


@pytest.mark.parametrize("policy", EXITS)
def test_causal_at_inference(policy, brevo):
    fixed, tokens, _, _ = brevo
    model = with_policy(fixed, policy, threshold=MIXED[policy])
    k = 7
    changed = tokens.clone()
    changed[:, k + 1 :] = torch.randint(1, fixed.cfg.vocab_size, changed[:, k + 1 :].shape,
                                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a.exit_depth[:, : k + 1], b.exit_depth[:, : k + 1])
    assert torch.allclose(a.logits[:, : k + 1], b.logits[:, : k + 1], atol=1e-5)
    assert not torch.equal(a.exit_depth, b.exit_depth)  # the later positions did change


@pytest.mark.parametrize("policy", EXITS)
def test_patching_the_signal_changes_exits(policy, brevo):
    fixed, tokens, _, _ = brevo
    model = with_policy(fixed, policy, threshold=MIXED[policy])
    name = SIGNAL[policy]
    with torch.no_grad():
        base = model(tokens)
        assert (base.exit_depth > 1).any()
        stop = model.run_with_hooks(tokens, fwd_hooks=[(f"loop.0.halt.hook_{name}", lambda v, hook: torch.zeros_like(v))])
        assert (stop.exit_depth == 1).all()
        never = [(f"loop.{t}.halt.hook_{name}", lambda v, hook: torch.full_like(v, 1e9)) for t in range(6)]
        go_on = model.run_with_hooks(tokens, fwd_hooks=never)
    assert (go_on.exit_depth == fixed.cfg.max_iters).all()


@pytest.mark.parametrize("policy", EXITS)
def test_training_mode_is_fixed_depth(policy):
    cfg = preset_config("test", vocab_size=24)
    tokens = torch.randint(1, 24, (2, 9), generator=torch.Generator().manual_seed(2))
    fixed = build_model(cfg, "fixed", seed=4).train()
    model = with_policy(fixed, policy, threshold=1e9)
    assert model.training
    out, cache = model.run_with_cache(tokens)
    ref = fixed(tokens)
    assert (out.exit_depth == cfg.max_iters).all()
    assert torch.equal(out.q, ref.q)
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)
    assert f"loop.{cfg.max_iters - 1}.halt.hook_{SIGNAL[policy]}" in cache  # signals still observable
    out.logits.sum().backward()  # trains like fixed
    assert all(p.grad is not None for p in model.core_blocks.parameters())


# -- swapping onto a trained fixed checkpoint ----------------------------------------------------


@pytest.mark.parametrize("policy", EXITS)
def test_swap_onto_fixed_checkpoint(policy, brevo):
    fixed, tokens, real, full = brevo
    D = fixed.cfg.max_iters
    thresholds = {"exit-kl": [1e-4, 1e-2, 1e-1, 1.0], "exit-latent": [0.1, 0.4, 0.7, 1.0],
                  "exit-entropy": [1e-4, 1e-2, 1e-1, 1.0]}[policy]
    means, agreement = [], []
    for threshold in thresholds:
        with torch.no_grad():
            out = with_policy(fixed, policy, threshold=threshold)(tokens)
        assert out.exit_depth.max() <= D and out.exit_depth.min() >= 1
        means.append(out.exit_depth[real].float().mean().item())
        agreement.append((out.logits.argmax(-1) == full.logits.argmax(-1))[real].float().mean().item())
    assert all(a > b for a, b in zip(means, means[1:])), means  # more threshold, less compute
    assert agreement[0] > agreement[-1], agreement  # ... and less agreement with full depth


def test_with_policy_equals_build_and_load_state_dict(brevo):
    fixed, tokens, _, _ = brevo
    rng = torch.get_rng_state()
    swapped = with_policy(fixed, "exit-kl", threshold=0.05)
    assert torch.equal(torch.get_rng_state(), rng)  # building did not consume the global RNG
    assert not swapped.training and type(swapped.policy).name == "exit-kl"
    by_hand = build_model(fixed.cfg, "exit-kl", threshold=0.05)
    by_hand.load_state_dict(fixed.state_dict())  # the documented recipe: no new parameters
    by_hand.eval()
    with torch.no_grad():
        a, b = swapped(tokens), by_hand(tokens)
    assert torch.equal(a.exit_depth, b.exit_depth) and torch.equal(a.logits, b.logits)
    assert type(fixed.policy).name == "fixed"  # the original is untouched


def test_with_policy_refuses_policies_with_parameters(brevo):
    fixed = brevo[0]
    with pytest.raises(AniraError, match="parameters"):
        with_policy(fixed, "anira-o")
    with pytest.raises(AniraError, match="unknown policy"):
        with_policy(fixed, "exit-nope")
    with pytest.raises(AniraError, match="RecurrentTransformer"):
        with_policy(object(), "exit-kl")
    # a trained adaptive model can be swapped too: its decider is dropped
    anira_o = build_model(fixed.cfg, "anira-o", seed=0)
    assert type(with_policy(anira_o, "exit-latent").policy).name == "exit-latent"
