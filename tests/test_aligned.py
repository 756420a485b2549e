"""anira.aligned: the unembedding and the deciders' output layers compute what
nn.Linear computes (forward and backward, same parameters and state_dict), while
every matrix product of a training step keeps its dimensions multiples of 8."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from anira import build_model, preset_config
from anira.aligned import ALIGN, AlignedLinear, set_aligned_gemms, single_output
from anira.objective import compute_loss

VOCAB = 30  # MANO's vocabulary: not a multiple of 8


def _pair(n: int, bias: bool, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Linear, AlignedLinear]:
    torch.manual_seed(seed)
    plain = nn.Linear(24, n, bias=bias, dtype=dtype)
    aligned = AlignedLinear(24, n, bias=bias, dtype=dtype)
    aligned.load_state_dict(plain.state_dict())
    return plain, aligned


def _forward_backward(layer: nn.Module, x: Tensor, upstream: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * upstream).sum().backward()
    grads = {"x": x.grad, **{name.removeprefix("_orig_mod."): p.grad for name, p in layer.named_parameters()}}
    return y.detach(), grads



@pytest.mark.parametrize("n", [1, 3, 8, VOCAB])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_and_backward_match_nn_linear(n, bias, dtype, tol):
    plain, aligned = _pair(n, bias, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 24, generator=g, dtype=dtype)
    upstream = torch.randn(3, 5, n, generator=g, dtype=dtype)
    y0, g0 = _forward_backward(plain, x, upstream)
    y1, g1 = _forward_backward(aligned, x, upstream)
    assert y1.shape == (3, 5, n) and y1.dtype == y0.dtype  # exactly n columns, never the padding
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    assert g1.keys() == g0.keys()
    for name in g0:  # the real rows' gradients are the unpadded product's
        assert g1[name].shape == g0[name].shape, name
        torch.testing.assert_close(g1[name], g0[name], rtol=tol, atol=tol, msg=name)


def test_unaligned_is_exactly_nn_linear():
    plain, aligned = _pair(VOCAB, True, torch.float32)
    aligned.aligned = False
    x, upstream = torch.randn(7, 24), torch.randn(7, VOCAB)
    y0, g0 = _forward_backward(plain, x, upstream)
    y1, g1 = _forward_backward(aligned, x, upstream)
    assert torch.equal(y0, y1) and all(torch.equal(g0[k], g1[k]) for k in g0)


def test_the_padding_is_computed_not_stored():
    plain, aligned = _pair(VOCAB, True, torch.float32)
    assert list(aligned.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert [p.shape for p in aligned.parameters()] == [p.shape for p in plain.parameters()]
    assert list(aligned.buffers()) == []
    with torch.no_grad():  # an in-place update of the parameter is seen by the next product
        aligned.weight[3].fill_(1.0)
        plain.weight[3].fill_(1.0)
    x = torch.randn(4, 24)
    torch.testing.assert_close(aligned(x), plain(x))


@pytest.mark.parametrize("n", [1, VOCAB])
def test_autocast_gives_nn_linears_dtype(n):
    plain, aligned = _pair(n, True, torch.float32)
    x = torch.randn(6, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, y1 = plain(x), aligned(x)
    assert y1.dtype == y0.dtype == torch.bfloat16 and y1.shape == y0.shape
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)


# -- the model ------------------------------------------------------------------------------

class MatmulShapes(TorchDispatchMode):
    """Records the operand shapes of every matrix product dispatched (forward and backward)."""

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm"}

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[tuple[int, ...], ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.PRODUCTS:
            mats = args[1:] if name in ("addmm", "baddbmm") else args
            self.shapes.append((name, tuple(tuple(m.shape) for m in mats[:2])))
        return func(*args, **(kwargs or {}))

    def unaligned(self) -> list:
        # the last two dimensions of each operand: M x K and K x N
        return [(name, shapes) for name, shapes in self.shapes
                if any(dim % ALIGN for shape in shapes for dim in shape[-2:])]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("bias", [True, False])
def test_single_output_reduction_matches_nn_linear(dtype, tol, bias):
    plain, _ = _pair(1, bias, dtype)
    x, upstream = torch.randn(3, 5, 24, dtype=dtype), torch.randn(3, 5, 1, dtype=dtype)
    y0, g0 = _forward_backward(plain, x, upstream)
    plain.zero_grad()
    x = x.clone().requires_grad_(True)
    y1 = single_output(x, plain.weight, plain.bias)
    (y1 * upstream).sum().backward()
    g1 = {"x": x.grad, **{name: p.grad for name, p in plain.named_parameters()}}
    y1 = y1.detach()
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=tol, atol=tol, msg=name)


def _products(graphs) -> list[tuple[tuple[int, ...], ...]]:
    """Operand shapes of the matrix products in traced aten graphs."""
    found = []
    for graph in graphs:
        for node in graph.graph.nodes:
            packet = getattr(node.target, "overloadpacket", None)
            if packet is not None and packet.__name__ in MatmulShapes.PRODUCTS:
                mats = node.args[1:] if packet.__name__ in ("addmm", "baddbmm") else node.args
                found.append(tuple(tuple(m.meta["val"].shape) for m in mats[:2]))
    return found


@pytest.mark.parametrize("n, products", [(1, 0), (VOCAB, 3)])  # VOCAB: forward, dX, dW
def test_compiled_one_output_is_a_reduction_and_the_rest_aligned(n, products):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    _, aligned = _pair(n, True, torch.float32)
    compiled = torch.compile(aligned, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
    _forward_backward(compiled, torch.randn(16, 24), torch.randn(16, n))
    assert len(graphs) == 2  # forward and backward
    shapes = _products(graphs)
    assert len(shapes) == products
    assert all(dim % ALIGN == 0 for mats in shapes for shape in mats for dim in shape)


@pytest.mark.parametrize("n", [1, VOCAB])
def test_eager_calls_are_the_plain_product(n):
    # eagerly the padding would cost more than the unaligned kernel it avoids (module docstring):
    # the aligned layer dispatches exactly nn.Linear's products and gives its values bit for bit
    plain, aligned = _pair(n, True, torch.float32)
    g = torch.Generator().manual_seed(2)
    x, upstream = torch.randn(16, 24, generator=g), torch.randn(16, n, generator=g)
    seen = {}
    for name, layer in (("plain", plain), ("aligned", aligned)):
        with MatmulShapes() as rec:  # forward, dX and dW
            seen[name] = _forward_backward(layer, x, upstream)
        seen[name + "_shapes"] = rec.shapes
    assert seen["aligned_shapes"] == seen["plain_shapes"] and len(seen["plain_shapes"]) == 3
    y0, g0 = seen["plain"]
    y1, g1 = seen["aligned"]
    assert torch.equal(y0, y1) and all(torch.equal(g0[k], g1[k]) for k in g0)


def _training_step(forward, tokens: Tensor, model=None) -> tuple:
    torch.manual_seed(3)  # the policy's exit samples: the same draw for every model
    out = forward(tokens)
    loss = compute_loss(model if model is not None else forward, out, tokens,
                        torch.ones_like(tokens, dtype=torch.bool))
    loss.total.backward()
    return out, loss.total


def _model(policy: str):
    cfg = preset_config("test", vocab_size=VOCAB)  # d_model 32, d_ff 64, decider 128, D 4
    return build_model(cfg, policy, seed=0).train()


TOKENS = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))  # 16 rows: aligned


def _compiled_training_step(model) -> tuple:
    """One training step of ``model`` compiled (AOT autograd, eager kernels): its output,
    loss, and the operand shapes of every matrix product in the traced forward and
    backward graphs (the aligned forms apply only under compilation)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    out, loss = _training_step(compiled, TOKENS, model)
    return out, loss, _products(graphs)


@pytest.mark.parametrize("policy, unaligned_dims", [("anira-o", {VOCAB, 1}), ("anira-e", {VOCAB, 4})])
def test_compiled_training_step_is_aligned_and_computes_the_unaligned_one(policy, unaligned_dims):
    aligned = _model(policy)
    plain = copy.deepcopy(aligned)
    assert set_aligned_gemms(plain, False) == 2  # the unembedding and the decider's output layer
    widths = []
    aligned.hook_logits.add_hook(lambda x, hook: widths.append(x.shape[-1]))
    out1, loss1, shapes1 = _compiled_training_step(aligned)
    out0, loss0, shapes0 = _compiled_training_step(plain)
    # every product of the aligned step has its dimensions multiples of 8 ...
    assert shapes1 and all(dim % ALIGN == 0 for mats in shapes1 for shape in mats for dim in shape[-2:])
    # ... while the plain nn.Linear products (planted) have the vocabulary's and the decider's widths
    assert {dim for mats in shapes0 for shape in mats for dim in shape[-2:] if dim % ALIGN} == unaligned_dims
    # and both compute the same step: callers see exactly VOCAB columns, gradients included
    assert widths == [VOCAB] and out1.logits.shape == (*TOKENS.shape, VOCAB)
    torch.testing.assert_close(out1.logits, out0.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out1.q, out0.q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    grads0 = dict(plain.named_parameters())
    for name, p in aligned.named_parameters():
        torch.testing.assert_close(p.grad, grads0[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert aligned.readout(torch.randn(2, 8, 32)).shape == (2, 8, VOCAB)


def test_state_dict_is_unchanged():
    model = _model("anira-o")
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert keys["unembed.weight"] == (VOCAB, 32)
    assert keys["policy.decider.fc_out.weight"] == (1, 128) and keys["policy.decider.fc_out.bias"] == (1,)
    assert not any("pad" in k for k in keys)
    # an nn.Linear's state dict loads into it and back
    plain = nn.Linear(32, VOCAB, bias=False)
    model.unembed.load_state_dict(plain.state_dict())
    assert torch.equal(model.unembed.weight, plain.weight)


@pytest.mark.parametrize("n", [1, VOCAB])
def test_traces_as_one_graph_forward_and_backward(n):
    # dynamo + AOT autograd with no graph break (the inductor path is tests/test_compile.py)
    torch._dynamo.reset()
    plain, aligned = _pair(n, True, torch.float32)
    compiled = torch.compile(aligned, backend="aot_eager", fullgraph=True)
    x, upstream = torch.randn(2, 8, 24), torch.randn(2, 8, n)
    y0, g0 = _forward_backward(plain, x, upstream)
    y1, g1 = _forward_backward(compiled, x, upstream)
    torch.testing.assert_close(y1, y0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [1, VOCAB])
def test_inductor_compiled_layer_under_cuda_bf16_autocast_is_as_accurate_as_nn_linear(n):
    # the training step's path on the GPU: inductor kernels (the one-output reduction, the padded
    # product) under bf16 autocast. nn.Linear rounds its inputs to bf16 while the reduction
    # multiplies in float32, so the two differ by bf16 input rounding (~0.05 on a weight gradient
    # summed over 512 rows); each is compared with a float64 computation instead, and the aligned
    # layer must be no less accurate than nn.Linear under the same autocast
    plain, aligned = _pair(n, True, torch.float32)
    reference = copy.deepcopy(plain).double().cuda()
    plain, aligned = plain.cuda(), aligned.cuda()
    compiled = torch.compile(aligned, fullgraph=True)
    x, upstream = torch.randn(512, 24, device="cuda"), torch.randn(512, n, device="cuda")
    y_ref, g_ref = _forward_backward(reference, x.double(), upstream.double())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y0, g0 = _forward_backward(plain, x, upstream)
        y1, g1 = _forward_backward(compiled, x, upstream)
    assert y1.dtype == y0.dtype == torch.bfloat16 and y1.shape == (512, n)
    for name, ref, a, b in [("y", y_ref, y0, y1), *((k, g_ref[k], g0[k], g1[k]) for k in g_ref)]:
        err_plain = (a.double() - ref).abs().max().item()
        err_aligned = (b.double() - ref).abs().max().item()
        assert err_aligned <= 2 * err_plain + 1e-3, (name, err_aligned, err_plain)
