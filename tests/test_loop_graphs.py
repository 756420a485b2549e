"""Iterations as CUDA graphs (anira/graphs.py): same function as the eager loop.

On a CPU the ``static`` mode runs the graphs' bodies on their static buffers
without recording: buffers, row buckets, copies in and out and the cache reset
are all exercised. The ``gpu`` tests record and replay real graphs.
"""

import pytest
import torch

from anira import preset_config
from anira.errors import AniraError
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
    return make_model(cfg, policy, seed=seed, **options)


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
    """A second forward on other tokens of the same shape reuses the buffers and
    must not see the first one's keys and values."""
    model = _model("pattern")
    a = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(4))
    b = torch.randint(1, 24, (2, 40), generator=torch.Generator().manual_seed(5))
    _run(model, a, "static")
    sets = model.graphs.set_keys
    again = _run(model, b, "static")
    assert model.graphs.set_keys == sets
    _same(again, _run(model, b, "off"))


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
    first = _run(model, tokens, "auto")
    recorded = model.graphs.recorded
    second = _run(model, tokens, "auto")
    assert recorded > 0 and model.graphs.recorded == recorded  # the second forward only replays
    assert model.graphs.replayed > 0
    _same(first, eager)
    _same(second, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_under_bf16_autocast():
    model = _model("pattern").cuda()
    tokens = torch.randint(1, 24, (2, 40)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = _run(model, tokens, "off")
        for _ in range(2):
            graphed = _run(model, tokens, "auto")
    assert torch.equal(graphed.exit_depth, eager.exit_depth)
    assert torch.allclose(graphed.logits.float(), eager.logits.float(), atol=2e-2)
