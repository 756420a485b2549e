"""Where the fast path's time goes on a GPU: per-iteration GPU time of the
graphed fast loop against the dense one, and micro-benchmarks of the pieces whose
cost might not follow the row count (matrix products at the packed row counts,
separate vs fused projections; masked attention over the whole cache vs causal).

    python scripts/diagnose_inference.py [batch]     (on a CUDA machine)
Prints one JSON object.
"""

import json
import statistics
import sys

import torch
import torch.nn.functional as F

from anira.bench.inference import _core_dense, _core_fast, balanced_depths
from anira.config import ModelConfig
from anira.fast import InferenceLoop
from anira.model import build_model

B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
dev = torch.device("cuda")
seq, D, d = 256, 8, 512
depths_list = balanced_depths(seq, D, 0.5, 0)
cfg = ModelConfig(vocab_size=256, d_model=d, n_heads=8, d_ff=4 * d, max_iters=D, max_len=seq)
model = build_model(cfg, "pattern", seed=0, depths=depths_list).to(dev).eval()
tokens = torch.randint(1, 256, (B, seq)).to(dev)
depths = torch.tensor(depths_list, device=dev).expand(B, seq)
out: dict = {"batch": B, "counts": [int((torch.tensor(depths_list) > t).sum()) for t in range(D)]}


def gpu_ms(fn, repeats=10):
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


with torch.no_grad():
    h0 = model.run_prelude(tokens)
    for _ in range(3):
        _core_fast(model, h0, depths), _core_dense(model, h0)
    out["core_fast_ms"] = gpu_ms(lambda: _core_fast(model, h0, depths))
    out["core_dense_ms"] = gpu_ms(lambda: _core_dense(model, h0))

    # per-iteration GPU time inside the real fast loop (events between graph replays)
    def fast_with_events():
        loop = InferenceLoop(model, h0, depths, fast=True, planned=True)
        h = h0
        evs = [torch.cuda.Event(enable_timing=True) for _ in range(D + 1)]
        evs[0].record()
        for t in range(D):
            h = loop.iterate(h, t, t < depths)
            evs[t + 1].record()
        torch.cuda.synchronize()
        return [evs[t].elapsed_time(evs[t + 1]) for t in range(D)]

    per = [fast_with_events() for _ in range(7)]
    out["fast_iter_ms"] = [statistics.median(p[t] for p in per) for t in range(D)]
    dense = InferenceLoop(model, h0, None, fast=False, planned=False)
    everyone = torch.ones(B, seq, dtype=torch.bool, device=dev)
    out["dense_iter_ms"] = gpu_ms(lambda: dense.iterate(h0, 1, everyone))

    # graphs on: kernel time vs wall (is the GPU idle between replays?)
    from torch.profiler import ProfilerActivity, profile
    for name, fn in (("fast", lambda: _core_fast(model, h0, depths)), ("dense", lambda: _core_dense(model, h0))):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        out[f"{name}_kernel_ms_per_call_graphs_on"] = kernel_us / 3 / 1e3
        out[f"{name}_top_graphs_on"] = [
            (e.key[:60], round(e.self_device_time_total / 3e3, 3))
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:12]]

    # matrix products at the packed row counts: separate vs fused projections
    W = {n: torch.randn(n_out, d, device=dev) / d ** 0.5 for n, n_out in
         (("q", d), ("qkv", 3 * d), ("kv", 2 * d), ("gate", 4 * d), ("gu", 8 * d))}
    Wdown = torch.randn(d, 4 * d, device=dev) / (4 * d) ** 0.5
    gemm = []
    for m in out["counts"]:
        x = torch.randn(B * m, d, device=dev)
        hdn = torch.randn(B * m, 4 * d, device=dev)
        sep = gpu_ms(lambda: [F.linear(x, W["q"]) for _ in range(3)] + [F.linear(x, W["gate"]) for _ in range(2)]
                     + [F.linear(hdn, Wdown)])
        fused = gpu_ms(lambda: (F.linear(x, W["qkv"]), F.linear(x, W["gu"]), F.linear(hdn, Wdown)))
        gemm.append({"rows_per_seq": m, "separate_ms": sep, "fused_ms": fused})
    out["gemm"] = gemm

    # attention: packed queries over the whole cache (explicit mask) vs causal dense
    H, e = 8, 64
    k = torch.randn(B, H, seq, e, device=dev)
    v = torch.randn(B, H, seq, e, device=dev)
    qd = torch.randn(B, H, seq, e, device=dev)
    att = {"causal_dense_ms": gpu_ms(lambda: F.scaled_dot_product_attention(qd, k, v, is_causal=True))}
    rows = []
    for m in out["counts"][1:]:
        pos = torch.sort(torch.stack([torch.randperm(seq, device=dev)[:m] for _ in range(B)]), 1).values
        q = torch.randn(B, H, m, e, device=dev)
        allowed = (pos[:, :, None] >= torch.arange(seq, device=dev))[:, None]
        masked = gpu_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
        # two key halves, the second only for queries in the second half (upper bound of a
        # block-sparse kernel's saving at this block size)
        half = seq // 2
        m2 = int((pos >= half).sum(1).max())
        q2 = q[:, :, m - m2:]
        split = gpu_ms(lambda: (F.scaled_dot_product_attention(q, k[:, :, :half], v[:, :, :half],
                                                               attn_mask=allowed[..., :half]),
                                F.scaled_dot_product_attention(q2, k[:, :, half:], v[:, :, half:],
                                                               attn_mask=allowed[:, :, m - m2:, half:])))
        rows.append({"rows_per_seq": m, "masked_ms": masked, "split_upper_bound_ms": split})
    att["packed"] = rows
    out["attention"] = att

print(json.dumps(out, indent=1))
