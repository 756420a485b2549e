"""Fused projections and the layout plan.

One matrix product computes the queries, keys and values (one parameter ``W_qkv``)
and one the SwiGLU gate and up projections (``W_gate_up``). They are the
parameters themselves, so no derived copy of a weight exists that could go stale
(the old design cached concatenations keyed on version counters, which fused
AdamW and ``.data`` edits do not bump). Checkpoints of the old layout still load.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from anira import preset_config
from anira.errors import AniraError
from anira.fast import LayoutPlan, mask_layouts
from anira.layers import LEGACY_PARTS, merge_legacy_projections
from conftest import make_model


def _block(seed=0):
    model = make_model(preset_config("test", vocab_size=24), "fixed", seed=seed)
    return model, model.core_blocks[0]


def test_fused_projections_are_the_stacked_maps():
    _, block = _block()
    d = block.attn.W_o.in_features
    x = torch.randn(2, 7, d)
    q, k, v = block.attn.project(x)
    W = block.attn.W_qkv.weight
    for i, got in enumerate((q, k, v)):  # rows 0..d-1 queries, then keys, then values
        assert torch.allclose(got.reshape(2, 7, -1), F.linear(x, W[i * d:(i + 1) * d]), atol=1e-6)
        assert got.shape[2] == block.attn.n_heads
    mlp = block.mlp
    d_ff = mlp.W_down.in_features
    gate, up = mlp.W_gate_up.weight[:d_ff], mlp.W_gate_up.weight[d_ff:]
    assert torch.allclose(mlp(x), mlp.W_down(F.silu(F.linear(x, gate)) * F.linear(x, up)), atol=1e-6)


def _perturb_in_place(model, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(scale * torch.randn(p.shape, generator=g))


def test_data_edits_are_seen_by_the_next_forward():
    # the case: edits through .data bump no version counter
    model = make_model(preset_config("tiny", vocab_size=32), "fixed", seed=0)
    x = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        _perturb_in_place(model)
        assert torch.equal(model(x).logits, copy.deepcopy(model)(x).logits)


@pytest.mark.parametrize("policy", ["fixed", "anira-o"])
def test_fused_adamw_steps_then_eval_equals_a_fresh_copy(policy):
    # fused AdamW updates parameters in place without bumping their versions
    model = make_model(preset_config("tiny", vocab_size=32), policy, seed=0)
    x = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for _ in range(3):
        model.train()
        loss = model(x).logits.float().logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            got = model(x)
            fresh = copy.deepcopy(model)(x)
        assert torch.equal(got.logits, fresh.logits)
        assert torch.equal(got.exit_depth, fresh.exit_depth)


def test_static_graph_buffers_see_in_place_weight_updates():
    model, block = _block()
    model.loop_graphs = "static"
    model.fast_path_min_tokens = {}
    tokens = torch.randint(1, 24, (2, 9))
    with torch.no_grad():
        model(tokens)
        sets = set(model.graphs.set_keys)
        block.mlp.W_gate_up.weight.data.mul_(0.5)  # no version bump
        graphed = model(tokens)
        assert set(model.graphs.set_keys) == sets  # same addresses: the same recordings serve
        model.loop_graphs = "off"
        assert torch.allclose(graphed.logits, model(tokens).logits, atol=1e-6)


def test_gradients_reach_every_part():
    _, block = _block()
    block.train()
    d = block.attn.W_o.in_features
    x = torch.randn(2, 5, d)
    q, k, v = block.attn.project(x)
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()
    grad = block.attn.W_qkv.weight.grad
    rows = x.reshape(-1, d).sum(0)  # d(sum of outputs)/dW = sum over positions of x, per output unit
    for i, factor in enumerate((1, 2, 3)):
        assert torch.allclose(grad[i * d:(i + 1) * d], factor * rows.expand(d, d), atol=1e-5)


def test_old_layout_state_dicts_load():
    model, _ = _block()
    fused = model.state_dict()
    old = {}
    for key, value in fused.items():  # the layout of checkpoints written before 2026-12-03
        for name, parts in LEGACY_PARTS.items():
            if key.endswith(name):
                for part, chunk in zip(parts, value.chunk(len(parts))):
                    old[key[: -len(name)] + part] = chunk.clone()
                break
        else:
            old[key] = value.clone()
    assert "core_blocks.0.attn.W_k.weight" in old and "core_blocks.0.attn.W_qkv.weight" not in old
    assert merge_legacy_projections(old).keys() == fused.keys()
    twin, _ = _block(seed=1)
    twin.load_state_dict(old)  # torch's own loading, strict
    for key, value in twin.state_dict().items():
        assert torch.equal(value, fused[key]), key


def test_layout_plan_matches_direct_counts():
    depths = torch.randint(1, 5, (3, 11), generator=torch.Generator().manual_seed(4))
    plan = LayoutPlan(depths, 4, "fixed")
    assert len(plan) == 4
    assert plan[0] == (mask_layouts([depths > 0])[0], None)
    for t in range(1, 4):
        run, ref = plan[t]
        assert run == mask_layouts([depths > t])[0]
        assert ref == mask_layouts([depths == t])[0]


def test_a_plan_below_depth_one_is_a_clear_error():
    depths = torch.full((2, 5), 2)
    depths[1, 3] = 0
    with pytest.raises(AniraError, match="exit depth below 1"):
        LayoutPlan(depths, 4, "fixed")[1]
