"""Linear layers whose matrix products keep every dimension a multiple of 8.

cuBLAS runs a bf16 GEMM on tensor-core kernels built for 16-byte aligned rows; a
dimension that is not a multiple of 8 sends it to an old, slow kernel (on the H200
a ``cutlass_75_..._align1`` GEMM, docs/benchmarks.md "Training throughput"). Such
dimensions: the unembedding's (vocabulary 30 for MANO: forward N = 30, backward
K = 30), an online decider's single output (``Linear(I, 1)``: its backward dX has
K = 1; the profiled one) and an early decider's D outputs (14 for MANO).

:class:`AlignedLinear` is an ``nn.Linear`` (same parameters, same state_dict keys,
so checkpoints are unchanged) that computes

* with an output count that is not a multiple of 8: the product with the weight
  padded by zero rows to the next multiple of 8, then the extra (zero) columns
  sliced off, so every caller sees exactly ``out_features`` columns. The padding
  is made from the parameter inside ``forward`` (never a cached copy that could go
  stale); the real rows' gradients are those of the unpadded product;
* with one output: y = Σ_i x_i·w_i + b, an element-wise product and a sum over the
  features, accumulated in float32 as a GEMM accumulates: no GEMM at all, and
  inductor fuses the reduction (and its backward, an outer product) with the
  neighbouring element-wise work.

Only under ``torch.compile`` (``torch.compiler.is_compiling()``): there the padding and
the slice fuse into the surrounding graph and the aligned forms pay (1.017× MANO,
1.026× BREVO training steps under CUDA graphs on the H200). Run eagerly, each call
would materialise a fresh padded weight and a sliced copy, which cost more than the
unaligned kernel they avoid (0.96× BREVO, 0.99× MANO eager steps on the H200,
docs/benchmarks.md "Training throughput"), and the one-output reduction would write
the (tokens × in) product to memory; so eager calls compute the plain ``nn.Linear``
product.

``aligned = False`` computes exactly what ``nn.Linear`` computes under compilation
too: the training benchmark sets it on its baseline model (:func:`set_aligned_gemms`)
to time both side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: bf16 tensor-core GEMMs want every dimension a multiple of 8 elements (16 bytes)
ALIGN = 8


def single_output(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for a weight of one row (1, in), as a reduction over
    the features: x (..., in) -> (..., 1). Accumulates in float32 (at least), like a
    GEMM; the result has the dtype ``F.linear`` would give (the autocast dtype under
    autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        out_dtype = torch.get_autocast_dtype(device)
    else:
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
    acc = torch.promote_types(out_dtype, torch.float32)
    y = (x.to(acc) * weight[0].to(acc)).sum(-1, keepdim=True)  # (..., 1)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(out_dtype)


class AlignedLinear(nn.Linear):
    """An ``nn.Linear`` whose matrix products have no dimension off a multiple of 8
    (see the module docstring). Parameters and state_dict keys are ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        #: False: compute exactly as nn.Linear does (the benchmark's unaligned baseline)
        self.aligned = True

    def forward(self, x: Tensor) -> Tensor:
        n = self.out_features
        if not self.aligned or n % ALIGN == 0 or not torch.compiler.is_compiling():
            return super().forward(x)  # eager: the plain product is the faster one (module docstring)
        if n == 1:
            return single_output(x, self.weight, self.bias)
        pad = -n % ALIGN
        weight = F.pad(self.weight, (0, 0, 0, pad))  # (n + pad, in): zero rows at the end
        bias = None if self.bias is None else F.pad(self.bias, (0, pad))
        return F.linear(x, weight, bias)[..., :n]  # (..., n): a view of the aligned output


def set_aligned_gemms(model: nn.Module, aligned: bool) -> int:
    """Set ``aligned`` on every :class:`AlignedLinear` in ``model``; returns how many
    layers it set. ``False`` gives the plain ``nn.Linear`` products (a baseline)."""
    layers = [m for m in model.modules() if isinstance(m, AlignedLinear)]
    for layer in layers:
        layer.aligned = bool(aligned)
    return len(layers)
