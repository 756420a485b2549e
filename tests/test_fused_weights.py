"""Fused projections (anira.layers.FusedWeights) and the asynchronous layout plan.

One matrix product computes the queries, keys and values (and one the SwiGLU gate
and up projections); the separate weights stay the parameters. Without gradients
the concatenation is cached and follows every change of the weights.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from anira import preset_config
from anira.errors import AniraError
from anira.model import mask_layouts
from conftest import make_model


def _block(seed=0):
    model = make_model(preset_config("test", vocab_size=24), "fixed", seed=seed)
    return model, model.core_blocks[0]


def test_fused_projections_equal_the_separate_maps():
    _, block = _block()
    x = torch.randn(2, 7, block.attn.W_q.in_features)
    q, k, v = block.attn.project(x)
    heads = block.attn.n_heads
    for got, W in ((q, block.attn.W_q), (k, block.attn.W_k), (v, block.attn.W_v)):
        assert torch.allclose(got.reshape(2, 7, -1), F.linear(x, W.weight), atol=1e-6)
        assert got.shape[2] == heads
    mlp = block.mlp
    separate = mlp.W_down(F.silu(mlp.W_gate(x)) * mlp.W_up(x))
    assert torch.allclose(mlp(x), separate, atol=1e-6)


def test_cache_follows_in_place_updates_and_stays_in_place():
    _, block = _block()
    with torch.no_grad():
        first = block.attn.qkv()
        assert block.attn.qkv() is first  # unchanged weights: no new concatenation
        block.attn.W_k.weight.mul_(2.0)
        again = block.attn.qkv()
        d = block.attn.W_q.out_features
        assert again.data_ptr() == first.data_ptr()  # rebuilt where it was (graphs keep reading it)
        assert torch.equal(again[d:2 * d], block.attn.W_k.weight)
        block.attn.W_v.weight = torch.nn.Parameter(torch.zeros_like(block.attn.W_v.weight))
        assert torch.equal(block.attn.qkv()[2 * d:], torch.zeros_like(block.attn.W_v.weight))


def test_gradients_reach_every_part():
    _, block = _block()
    block.train()
    x = torch.randn(2, 5, block.attn.W_q.in_features)
    q, k, v = block.attn.project(x)
    (q.sum() + 2 * k.sum() + 3 * v.sum() + block.mlp(x).sum()).backward()
    for linear in (block.attn.W_q, block.attn.W_k, block.attn.W_v, block.mlp.W_gate, block.mlp.W_up):
        assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    # d(sum q)/dW_q = sum over rows of x, for every output unit
    expected = x.reshape(-1, x.shape[-1]).sum(0).expand_as(block.attn.W_q.weight)
    assert torch.allclose(block.attn.W_q.weight.grad, expected, atol=1e-5)


def test_copies_own_their_fused_weights():
    model, _ = _block()
    tokens = torch.randint(1, 24, (2, 9))
    with torch.no_grad():
        before = model(tokens).logits
        twin = copy.deepcopy(model)
        twin.core_blocks[0].attn.W_q.weight.mul_(3.0)
        assert twin.core_blocks[0].attn.qkv._linears[0] is twin.core_blocks[0].attn.W_q
        assert torch.equal(model(tokens).logits, before)  # the original is untouched
        assert not torch.allclose(twin(tokens).logits, before)


def test_static_graph_buffers_see_in_place_weight_updates():
    model, block = _block()
    model.loop_graphs = "static"
    tokens = torch.randint(1, 24, (2, 9))
    with torch.no_grad():
        model(tokens)
        sets = set(model.graphs.set_keys)
        block.mlp.W_gate.weight.mul_(0.5)
        graphed = model(tokens)
        assert set(model.graphs.set_keys) == sets  # same addresses: the same recordings serve
        model.loop_graphs = "off"
        assert torch.allclose(graphed.logits, model(tokens).logits, atol=1e-6)


def test_layout_plan_matches_direct_counts():
    model, _ = _block()
    D = model.cfg.max_iters
    depths = torch.randint(1, D + 1, (3, 11), generator=torch.Generator().manual_seed(4))
    plan = model.plan_layouts(depths)
    assert len(plan) == D
    assert plan[0] == (mask_layouts([depths > 0])[0], None)
    for t in range(1, D):
        run, ref = plan[t]
        assert run == mask_layouts([depths > t])[0]
        assert ref == mask_layouts([depths == t])[0]


def test_a_plan_below_depth_one_is_a_clear_error():
    model, _ = _block()
    depths = torch.full((2, 5), 2)
    depths[1, 3] = 0
    with pytest.raises(AniraError, match="exit depth below 1"):
        model.plan_layouts(depths)[1]
