"""Forward + backward time of the attention kernels a training step could use, at the
paper's training shapes, in bf16 on a GPU: causal SDPA (each backend torch offers), SDPA
with an explicit boolean mask (the only way SDPA takes a packed row's per-example mask),
and FlexAttention (compiled) with a causal and a per-example (document) block mask.
Medians of CUDA-event timings. Usage (GPU): python scripts/attention_kernels.py
"""
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

SHAPES = {  # name: (batch rows, heads, sequence, head width)
    "mano (512 x 64, 8 heads of 32)": (512, 8, 64, 32),
    "mano packed (208 x 64)": (208, 8, 64, 32),
    "brevo (64 x 256, 8 heads of 64)": (64, 8, 256, 64),
    "brevo packed (24 x 256)": (24, 8, 256, 64),
}


def timed(fn, repeats=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def segments_for(b, n, mean_len, device):
    """Random per-example ids along each row (lengths uniform around mean_len)."""
    g = torch.Generator().manual_seed(0)
    seg = torch.empty(b, n, dtype=torch.int32)
    for r in range(b):
        pos, s = 0, 0
        while pos < n:
            k = int(torch.randint(mean_len // 2, 3 * mean_len // 2 + 1, (1,), generator=g))
            seg[r, pos:pos + k] = s
            pos, s = pos + k, s + 1
    return seg.to(device)


flex = torch.compile(flex_attention)
for name, (b, h, n, e) in SHAPES.items():
    q, k, v = (torch.randn(b, h, n, e, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    seg = segments_for(b, n, 24 if n == 64 else 86, "cuda")
    causal = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
    doc = (seg[:, None, :, None] == seg[:, None, None, :]) & causal

    def run(f):
        def go():
            out = f()
            out.backward(grad)
        return go

    results = {}
    variants = (("causal", {"is_causal": True}, (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)),
                ("per-example mask", {"attn_mask": doc}, (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                                          SDPBackend.MATH)))
    for label, kwargs, backends in variants:
        for backend in backends:
            def sdpa(backend=backend, kwargs=kwargs):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, **kwargs)
            try:
                results[f"sdpa {label} {backend.name}"] = timed(run(sdpa))
            except RuntimeError as err:
                results[f"sdpa {label} {backend.name}"] = f"unavailable ({str(err).splitlines()[0][:60]})"
    causal_bm = create_block_mask(lambda b_, h_, i, j: j <= i, None, None, n, n, device="cuda")
    doc_bm = create_block_mask(lambda b_, h_, i, j: (j <= i) & (seg[b_, i] == seg[b_, j]), b, None, n, n, device="cuda")
    results["flex causal"] = timed(run(lambda: flex(q, k, v, block_mask=causal_bm)))
    results["flex per-example"] = timed(run(lambda: flex(q, k, v, block_mask=doc_bm)))
    print(name)
    for key, value in results.items():
        print(f"  {key:40s} {value if isinstance(value, str) else f'{value * 1e3:8.1f} us'}")
