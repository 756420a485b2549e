"""Iterations as CUDA graphs (anira/graphs.py): same function as the eager loop.

On a CPU the ``static`` mode runs the graphs' bodies on their static buffers
without recording: buffers, row buckets, copies in and out and the cache reset
are all exercised. The ``gpu`` tests record and replay real graphs.
"""

import copy

import pytest
import torch

from anira import preset_config
from anira.errors import AniraError
from anira.fast import InferenceLoop
from anira.graphs import row_bucket
from conftest import make_model

POLICIES = ["fixed", "anira-e", "anira-o", "pattern"]
# 40 positions: packed row counts above 16 get rounded up to a bucket (padding rows)
PATTERN = [6, 1, 3, 2, 5, 4, 2, 1, 1, 3, 6, 2, 4, 1, 5, 1, 2, 3, 1, 1]


def _run(model, tokens, mode, **kwargs):
    model.loop_graphs = mode
    with torch.no_grad():
        return model(tokens, **kwargs)


def _same(a, b, atol=1e-5):
    assert torch.equal(a.exit_depth, b.exit_depth)
    assert torch.equal(a.running, b.running)
    assert torch.allclose(a.logits, b.logits, atol=atol, rtol=atol)


def _model(policy, seed=3, max_iters=6):
    cfg = preset_config("test", vocab_size=24, max_iters=max_iters, max_len=64)
    options = {"depths": PATTERN} if policy == "pattern" else {}
    model = make_model(cfg, policy, seed=seed, **options)
    model.fast_path_min_tokens = {}  # these tiny batches must take the fast path on a GPU too
    return model


def test_row_buckets():
    assert [row_bucket(m, 256) for m in (1, 7, 16, 17, 24, 25, 250, 256)] == [1, 7, 16, 24, 24, 32, 256, 256]
    assert row_bucket(19, 20) == 20  # never more rows than tokens
    assert all(m <= row_bucket(m, 300) <= m + 7 for m in range(1, 301))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fast", [True, False])
def test_static_buffers_equal_the_eager_loop(policy, fast):
    model = _model(policy)
    model.fast_inference = fast
    tokens = torch.randint(1, 24, (3, 40), generator=torch.Generator().manual_seed(1))
    tokens[1, 25:] = 0  # padding
    _same(_run(model, tokens, "static"), _run(model, tokens, "off"))
    assert model.graphs.set_keys  # the static path really ran


def test_static_buffers_start_clean_on_every_forward():
    """A forward must not see keys and values left in the buffers by an earlier one:
    fill them with NaN, then hold tokens back at t = 0 (so the first iteration does
    not overwrite the whole cache) and compare with the eager loop."""
    model = _model("pattern")
    a = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(4))
    _run(model, a, "static")
    sets = model.graphs.set_keys
    for key in sets:
        for name, buffer in model.graphs.buffers(key, dict).items():
            if buffer.is_floating_point():
                buffer.fill_(float("nan"))

    def hold_back(running, hook):
        held = running.clone()
        held[:, 1::3] = False
        return held

    b = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(5))
    with model.hooks(fwd_hooks=[("loop.0.hook_running", hold_back)]):
        again = _run(model, b, "static")
        eager = _run(model, b, "off")
    assert model.graphs.set_keys == sets  # the same buffers were reused
    assert torch.isfinite(again.logits).all()
    _same(again, eager)


def test_graphs_are_recorded_on_the_second_sighting_then_replayed():
    model = _model("pattern")
    tokens = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(6))
    _run(model, tokens, "static")
    graphs = model.graphs
    assert graphs.recorded == 0  # a layout seen once runs eagerly
    _run(model, tokens, "static")
    recorded = graphs.recorded
    assert recorded == model.cfg.max_iters  # one per iteration's layout
    _run(model, tokens, "static")
    assert graphs.recorded == recorded and graphs.replayed == recorded


def test_new_weights_or_a_move_never_reuse_old_graphs():
    model = _model("pattern")
    tokens = torch.randint(1, 24, (2, 40))
    _run(model, tokens, "static")
    before = model.graphs.set_keys
    block = model.core_blocks[0]
    block.mlp.W_gate_up.weight = torch.nn.Parameter(block.mlp.W_gate_up.weight.detach() * 1.5)
    _same(_run(model, tokens, "static"), _run(model, tokens, "off"))
    assert set(model.graphs.set_keys) - set(before)  # a new set for the new weights
    model.to(torch.float32)  # any move or cast drops every recording
    assert model._graph_store is None
    model.loop_graphs = "static"
    _run(model, tokens, "static")
    copied = copy.deepcopy(model)  # CUDA graphs do not travel with a copy
    assert copied._graph_store is None
    model.train()
    assert model._graph_store is None  # training gives the memory back


def test_a_cache_whose_set_was_dropped_still_works():
    model = _model("pattern")
    model.loop_graphs = "static"
    model.graphs.max_sets = 1
    with torch.no_grad():
        h_a = model.run_prelude(torch.randint(1, 24, (1, 20)))
        loop_a = InferenceLoop(model, h_a, None, fast=True, planned=False)
        h_b = model.run_prelude(torch.randint(1, 24, (1, 21)))
        InferenceLoop(model, h_b, None, fast=True, planned=False)  # drops loop_a's set
        running = torch.ones(1, 20, dtype=torch.bool)
        out = loop_a.iterate(h_a, 0, running)
        model.loop_graphs = "off"
        assert torch.allclose(out, InferenceLoop(model, h_a, None, fast=True, planned=False).iterate(h_a, 0, running))


def test_no_graphs_with_gradients_or_in_training():
    model = _model("anira-e")
    model.loop_graphs = "static"
    tokens = torch.randint(1, 24, (2, 10))
    model(tokens).logits.sum().backward()  # gradients on: eager
    model.train()
    model(tokens)
    assert not model.graphs.set_keys


def test_buffer_sets_are_bounded_and_inference_mode_gets_its_own():
    model = _model("pattern")
    model.loop_graphs = "static"
    model.graphs.max_sets = 2
    with torch.no_grad():
        for length in (10, 11, 12):
            model(torch.randint(1, 24, (1, length)))
    assert sorted(key[1][:2] for key in model.graphs.set_keys) == [(1, 11), (1, 12)]  # oldest dropped
    tokens = torch.randint(1, 24, (2, 9))
    with torch.inference_mode():
        model(tokens)
    with torch.no_grad():  # buffers made under inference mode are not reused outside it
        _same(model(tokens), _run(model, tokens, "off"))


def test_bad_graph_store_limits_are_clear_errors():
    from anira.graphs import IterationGraphs

    with pytest.raises(AniraError, match="max_sets and max_graphs must be >= 1"):
        IterationGraphs(max_sets=0)


def test_unknown_graph_mode_is_a_clear_error():
    model = _model("fixed")
    with pytest.raises(AniraError, match="loop_graphs must be one of"):
        _run(model, torch.randint(1, 24, (1, 5)), "always")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fast", [True, False])
def test_cuda_graphs_equal_the_eager_loop(policy, fast):
    model = _model(policy).cuda()
    model.fast_inference = fast
    tokens = torch.randint(1, 24, (3, 40), generator=torch.Generator().manual_seed(1)).cuda()
    tokens[1, 25:] = 0
    eager = _run(model, tokens, "off")
    outs = [_run(model, tokens, "auto") for _ in range(3)]  # eager, recorded, replayed
    recorded = model.graphs.recorded
    assert recorded > 0 and model.graphs.replayed > 0 and model.graphs.failed == 0
    assert model.graphs.recorded == recorded
    for out in outs:
        _same(out, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_under_bf16_autocast():
    """Recorded inside one autocast region, replayed inside another after the
    weights changed in place: the graph must cast the current weights (autocast's
    cast cache is off while recording), not replay stale casts."""
    model = _model("pattern").cuda()
    tokens = torch.randint(1, 24, (2, 40)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            _run(model, tokens, "auto")  # eager, then recorded
    assert model.graphs.recorded > 0
    with torch.no_grad():
        model.core_blocks[0].attn.W_qkv.weight.mul_(1.5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graphed = _run(model, tokens, "auto")
        replayed = model.graphs.replayed  # read now: switching loop_graphs replaces the store
        eager = _run(model, tokens, "off")
    assert replayed > 0
    assert torch.equal(graphed.exit_depth, eager.exit_depth)
    assert torch.allclose(graphed.logits.float(), eager.logits.float(), atol=2e-2)


def test_a_state_changed_in_place_between_iterations_is_copied_in():
    """The static state buffer is reused without a copy only when the loop hands back
    the very tensor the last iteration returned, unchanged: a hook editing it in
    place (or under inference mode, where tensors keep no version) forces the copy."""
    model = _model("pattern")
    tokens = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(6))

    def nudge(value, hook):
        value[:, 5] += 1.0  # in place, returns nothing

    with model.hooks(fwd_hooks=[("loop.2.hook_resid_pre", nudge)]):
        graphed = _run(model, tokens, "static")
        eager = _run(model, tokens, "off")
    _same(graphed, eager)
    plain = _run(model, tokens, "static")
    assert not torch.allclose(plain.logits, graphed.logits)  # the nudge mattered
    with torch.inference_mode():
        model.loop_graphs = "static"
        under = model(tokens)
    _same(under, plain)
