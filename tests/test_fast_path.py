"""The inference fast path (only running tokens compute) equals the masked path."""

import pytest
import torch

from anira import preset_config
from anira.fast import InferenceLoop
from conftest import make_model

POLICIES = ["fixed", "anira-e", "anira-o", "pattern"]


def _both(model, tokens, **kwargs):
    model.fast_inference = True
    fast = model(tokens, **kwargs)
    model.fast_inference = False
    masked = model(tokens, **kwargs)
    model.fast_inference = True
    return fast, masked


def _assert_same(fast, masked):
    assert torch.equal(fast.exit_depth, masked.exit_depth)
    assert torch.allclose(fast.logits, masked.logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast.q, masked.q, atol=1e-6)
    assert torch.equal(fast.running, masked.running)


@pytest.fixture
def counting(monkeypatch):
    calls = {"rows": 0}
    original = InferenceLoop.iterate_rows

    def wrapped(self, *args, **kwargs):
        calls["rows"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InferenceLoop, "iterate_rows", wrapped)
    return calls


@pytest.fixture
def count_reads(monkeypatch):
    """How often row counts are read from the device (anira.fast._extremes)."""
    import anira.fast as engine

    calls = {"n": 0}
    real = engine._extremes

    def counting(counts):
        calls["n"] += 1
        return real(counts)

    monkeypatch.setattr(engine, "_extremes", counting)
    return calls


@pytest.mark.parametrize("policy", POLICIES)
def test_fast_equals_masked(policy, counting):
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    options = {"depths": [1, 6, 3, 2, 5, 4]} if policy == "pattern" else {}
    model = make_model(cfg, policy, seed=8, **options)
    tokens = torch.randint(1, 24, (4, 20), generator=torch.Generator().manual_seed(3))
    fast, masked = _both(model, tokens)
    _assert_same(fast, masked)
    assert counting["rows"] > 0  # the fast path really ran


def test_batches_with_padding():
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "anira-e", seed=2)
    tokens = torch.randint(1, 24, (3, 16), generator=torch.Generator().manual_seed(0))
    tokens[0, 9:] = 0
    tokens[2, 4:] = 0
    _assert_same(*_both(model, tokens))


@pytest.mark.parametrize("depth", [1, 6])
def test_all_tokens_exit_at_one_or_at_D(depth):
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "pattern", depths=[depth])
    tokens = torch.randint(1, 24, (2, 10))
    fast, masked = _both(model, tokens)
    _assert_same(fast, masked)
    assert (fast.exit_depth == depth).all() and fast.iterations_run == depth


def test_forced_depths_use_the_fast_path_too(counting):
    cfg = preset_config("test", vocab_size=24, max_iters=5)
    model = make_model(cfg, "anira-o", seed=1)
    tokens = torch.randint(1, 24, (2, 9))
    depths = torch.randint(1, 6, tokens.shape, generator=torch.Generator().manual_seed(5))
    fast, masked = _both(model, tokens, exit_depths=depths)
    _assert_same(fast, masked)
    assert torch.equal(fast.exit_depth, depths)
    assert counting["rows"] > 0


def test_fast_path_is_differentiable():
    cfg = preset_config("test", vocab_size=24)
    model = make_model(cfg, "anira-e", seed=1)
    tokens = torch.randint(1, 24, (2, 9))
    out = model(tokens)
    out.logits.sum().backward()
    assert model.core_blocks[0].mlp.W_gate_up.weight.grad.abs().sum() > 0


def test_hooks_stay_truthful_on_the_fast_path(counting):
    """Iteration-level sites fire with every token on the fast path; observing the
    core's internals switches that forward to the masked path (same function)."""
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "pattern", depths=[2, 5, 1, 6])
    tokens = torch.randint(1, 24, (2, 12))
    sites = ("hook_resid_pre", "hook_resid_post", "hook_running")
    wanted = {f"loop.{t}.{site}" for t in range(cfg.max_iters) for site in sites}
    names = wanted.__contains__
    out_fast, cache_fast = model.run_with_cache(tokens, names_filter=names)
    assert counting["rows"] > 0
    model.fast_inference = False
    out_masked, cache_masked = model.run_with_cache(tokens, names_filter=names)
    model.fast_inference = True
    assert cache_fast.keys() == cache_masked.keys()
    for key in cache_fast.keys():
        assert torch.allclose(cache_fast[key].float(), cache_masked[key].float(), atol=1e-5), key
    before = counting["rows"]
    _, cache = model.run_with_cache(tokens)  # caches core internals
    assert counting["rows"] == before  # masked path
    assert cache["loop.3.core.0.attn.hook_q"].shape[1] == tokens.shape[1]


def test_several_core_layers_use_the_masked_path(counting):
    cfg = preset_config("test", vocab_size=24, n_core=2)
    model = make_model(cfg, "anira-e")
    model(torch.randint(1, 24, (1, 5)))
    assert counting["rows"] == 0


def test_fast_path_under_bf16_autocast():
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "pattern", depths=[1, 6, 3])
    tokens = torch.randint(1, 24, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, masked = _both(model, tokens)
    assert torch.equal(fast.exit_depth, masked.exit_depth)
    assert torch.allclose(fast.logits.float(), masked.logits.float(), atol=0.1)


@pytest.mark.parametrize("policy, expected_reads", [("anira-e", 1), ("fixed", 1), ("anira-o", None)])
def test_planned_policies_read_row_counts_once(cfg, tokens, policy, expected_reads, count_reads):
    """With exits known after ``begin`` the fast loop reads row counts from the device
    once per forward; an online policy reads them once per iteration."""
    model = make_model(cfg, policy, seed=2)
    out = model(tokens)
    # online: once per iteration run, plus the iteration that found every token exited
    online = out.iterations_run + (out.iterations_run < cfg.max_iters)
    assert count_reads["n"] == (expected_reads if expected_reads is not None else online)


def test_both_attention_kernels_of_the_fast_path(monkeypatch):
    """At least half the tokens running: the causal kernel over every position;
    fewer: the masked kernel over the running rows. Both give the masked loop."""
    import torch.nn.functional as F

    routes = {"causal": 0, "masked": 0}
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        routes["masked" if attn_mask is not None else "causal"] += 1
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    cfg = preset_config("test", vocab_size=24, max_iters=3, n_prelude=0, n_coda=0)
    # 16 positions; iteration 2 runs 11 of them (causal), iteration 3 runs 5 (masked)
    model = make_model(cfg, "pattern", seed=5, depths=[3] * 5 + [2] * 6 + [1] * 5)
    tokens = torch.randint(1, 24, (2, 16), generator=torch.Generator().manual_seed(9))
    model.fast_inference = True
    fast = model(tokens)
    assert routes == {"causal": 2, "masked": 1}  # iteration 1 (all tokens), 2; then 3
    model.fast_inference = False
    _assert_same(fast, model(tokens))


def test_batches_below_the_device_minimum_take_the_masked_path(counting):
    """``fast_path_min_tokens`` sends small batches down the masked path: same result,
    no fast iteration; at or above the minimum the fast path runs."""
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "anira-e", seed=4)
    tokens = torch.randint(1, 24, (2, 10), generator=torch.Generator().manual_seed(5))
    fast = model(tokens)
    ran = counting["rows"]
    assert ran > 0
    model.fast_path_min_tokens = {"cpu": 21}  # 2 x 10 tokens: below
    small = model(tokens)
    assert counting["rows"] == ran
    _assert_same(fast, small)
    model.fast_path_min_tokens = {"cpu": 20}  # exactly the minimum: fast
    model(tokens)
    assert counting["rows"] > ran


def test_masked_path_with_planned_depths_reads_counts_once(count_reads):
    """The masked path learns when every token has exited from the plan too, instead
    of asking the device at every iteration."""
    cfg = preset_config("test", vocab_size=24, max_iters=6)
    model = make_model(cfg, "pattern", seed=4, depths=[1, 3, 2])
    model.fast_inference = False
    tokens = torch.randint(1, 24, (2, 9), generator=torch.Generator().manual_seed(5))
    out = model(tokens)
    assert out.iterations_run == 3  # stopped once every token had exited
    assert count_reads["n"] == 1


@pytest.mark.parametrize("policy", ["anira-e", "anira-o", "pattern"])
def test_tokens_held_back_from_the_first_iteration(policy):
    """A hook that keeps tokens from running at t = 0: they skip that iteration, but
    their keys and values (from the Prelude's output) are still attended to, as on
    the masked path (their cache rows are filled as refresh rows)."""
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    options = {"depths": [4, 2, 3, 1]} if policy == "pattern" else {}
    model = make_model(cfg, policy, seed=1, **options)
    tokens = torch.randint(1, 24, (2, 10), generator=torch.Generator().manual_seed(0))

    def hold_back(running, hook):
        held = running.clone()
        held[:, 3] = False
        held[1, 6] = False
        return held

    with model.hooks(fwd_hooks=[("loop.0.hook_running", hold_back)]):
        fast, masked = _both(model, tokens)
    assert not fast.running[0, :, 3].any() and not fast.running[0, 1, 6]
    _assert_same(fast, masked)


def test_planned_packing_with_uneven_sequences():
    """Forced depths take the planned packing (slices of the depth order): sequences
    whose running and exiting counts differ get padding rows, and the exiting rows'
    padding wraps round onto running tokens; the result is still the masked loop's."""
    import anira.fast as engine

    cfg = preset_config("test", vocab_size=24, max_iters=3)
    model = make_model(cfg, "anira-e", seed=6)
    depths = torch.tensor([[3, 3, 3, 3, 3, 3, 3, 2], [2, 2, 2, 2, 2, 2, 3, 1]])
    tokens = torch.randint(1, 24, (2, 8), generator=torch.Generator().manual_seed(2))
    fast, masked = _both(model, tokens, exit_depths=depths)
    _assert_same(fast, masked)
    assert torch.equal(fast.exit_depth, depths)
    order, counts = engine._depth_order(depths, 3)
    assert counts[2].tolist() == [[7, 1], [1, 6]]  # t = 2: running, exiting per sequence
    run = engine._slice_pack(order, counts[2][0], 7, False)
    ref = engine._slice_pack(order, counts[2][1], 6, False, offset=counts[2][0])
    for b in range(2):  # every row of a sequence is a distinct token, the valid ones the right ones
        assert len(set(run.pos[b].tolist())) == 7 and len(set(ref.pos[b].tolist())) == 6
        assert set(run.pos[b][run.valid[b]].tolist()) == set((depths[b] > 2).nonzero().flatten().tolist())
        assert set(ref.pos[b][ref.valid[b]].tolist()) == set((depths[b] == 2).nonzero().flatten().tolist())
