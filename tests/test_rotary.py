"""Rotary position embedding (anira.layers.Rotary, half-split convention) against an
independent computation: each pair (x_j, x_{j+e/2}) is the complex number
x_j + i·x_{j+e/2}, turned by the angle position · base^(−2j/e)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from anira.layers import Rotary


def _by_complex_numbers(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    e = x.shape[-1]
    j = torch.arange(e // 2, dtype=torch.float64)
    angle = positions.double()[..., None, None] * base ** (-2 * j / e)  # (b, p, 1, e/2)
    z = torch.complex(x[..., : e // 2].double(), x[..., e // 2:].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], -1)


def test_a_hand_computed_rotation():
    rotary = Rotary(d_head=2, max_len=4, base=10000.0)
    x = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    out = rotary(x, torch.tensor([[3]]))  # one pair, frequency 1: turned by 3 radians
    assert torch.allclose(out.view(2), torch.tensor([math.cos(3.0), math.sin(3.0)]), atol=1e-6)
    assert torch.allclose(rotary(x).view(2), x.view(2))  # position 0 by default: unchanged


@pytest.mark.parametrize("given", [True, False])
def test_rotation_equals_complex_multiplication(given):
    torch.manual_seed(0)
    b, p, h, e, base = 2, 7, 3, 8, 500.0
    rotary = Rotary(d_head=e, max_len=16, base=base)
    x = torch.randn(b, p, h, e)
    positions = torch.randint(0, 16, (b, p)) if given else torch.arange(p).expand(b, p)
    out = rotary(x, positions if given else None)
    assert out.dtype == x.dtype
    assert torch.allclose(out.double(), _by_complex_numbers(x, positions, base), atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths


class _MixedProducts(TorchDispatchMode):
    """Records element-wise products whose operands differ in dtype."""

    def __init__(self):
        super().__init__()
        self.mixed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor):
            dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
            if len(dtypes) > 1:
                self.mixed.append((func, dtypes))
        return func(*args, **(kwargs or {}))


def test_a_bf16_model_rotates_in_float32_without_mixed_dtype_products():
    """A model cast to bf16 holds bf16 tables; the rotation widens them (exactly) so that
    no product mixes dtypes (on a GPU that is the slow, unvectorised kernel) and the
    result is the float32 rotation by the bf16 tables, rounded once."""
    torch.manual_seed(1)
    rotary = Rotary(d_head=8, max_len=16, base=10000.0).to(torch.bfloat16)
    assert rotary.cos.dtype == torch.bfloat16
    x = torch.randn(2, 5, 2, 8).to(torch.bfloat16)
    positions = torch.randint(0, 16, (2, 5))
    with _MixedProducts() as mode:
        out = rotary(x, positions)
    assert mode.mixed == []
    assert out.dtype == torch.bfloat16 and torch.equal(out, _on_the_halves(rotary, x, positions))


def _on_the_halves(rotary: Rotary, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The half-split rotation written on the halves, x1·cos − x2·sin and x1·sin + x2·cos, in
    float32 from the module's (possibly bf16) tables, rounded once to x's dtype."""
    half = x.shape[-1] // 2
    cos = rotary.cos[positions][..., :half].float()[:, :, None]
    sin = rotary.sin_signed[positions][..., half:].float()[:, :, None]
    x1, x2 = x.float().chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_width_tables_give_the_halves_formula_value_for_value(dtype):
    """The full-width form (x·cos + partner(x)·sin_signed) is the same IEEE arithmetic as the
    formula on the halves: a − b = a + (−b) and a + b = b + a hold exactly."""
    torch.manual_seed(2)
    rotary = Rotary(d_head=16, max_len=64, base=10000.0).to(dtype)
    x = (torch.randn(3, 9, 4, 16) * 10).to(dtype)
    positions = torch.randint(0, 64, (3, 9))
    assert torch.equal(rotary(x, positions), _on_the_halves(rotary, x, positions))
    assert torch.equal(rotary(x), _on_the_halves(rotary, x, torch.arange(9).expand(3, 9)))
