"""Cost of the hook points: forward time with every hook point present (none
attached) against the same weights with the hook points bypassed."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import torch

from anira.config import ModelConfig
from anira.model import build_model


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_hooks(
    *,
    d_model: int = 256,
    batch: int = 32,
    seq: int = 64,
    max_iters: int = 8,
    repeats: int = 30,
    warmup: int = 3,
    policy: str = "fixed",
    device: str = "cpu",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Median forward time with hook points vs bypassed, measured interleaved
    (A, B, A, B, ...) so drift on a shared machine hits both alike.

    ``median_ratio`` is the median over the repeats of each pair's ratio
    (with / bypassed, the two run back to back), robust to drift between pairs;
    ``ratio_of_medians`` divides the two medians. ``progress(done, total)``
    counts forward pairs, warm-up included.
    """
    dev = torch.device(device)
    cfg = ModelConfig(
        vocab_size=64, d_model=d_model, n_heads=max(1, d_model // 64), d_ff=4 * d_model,
        max_iters=max_iters, max_len=seq,
    )
    model = build_model(cfg, policy, seed=seed).to(dev).eval()
    tokens = torch.randint(1, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(dev)

    def forward(enabled: bool) -> Callable[[], Any]:
        def run() -> Any:
            model.hook_points_enabled = enabled
            with torch.no_grad():
                return model(tokens)

        return run

    with_hooks, bypassed = forward(True), forward(False)
    total = warmup + repeats
    for i in range(warmup):
        with_hooks()
        bypassed()
        if progress:
            progress(i + 1, total)
    times_with, times_without = [], []
    for i in range(repeats):
        times_with.append(time_call(with_hooks, dev))
        times_without.append(time_call(bypassed, dev))
        if progress:
            progress(warmup + i + 1, total)
    model.hook_points_enabled = True
    ratios = [a / b for a, b in zip(times_with, times_without)]
    return {
        "benchmark": "hooks",
        "config": {"d_model": d_model, "batch": batch, "seq": seq, "max_iters": max_iters,
                   "policy": policy, "repeats": repeats, "device": device},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "median_s_with_hooks": statistics.median(times_with),
        "median_s_bypassed": statistics.median(times_without),
        "median_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(times_with) / statistics.median(times_without),
        "target_ratio": 1.05,
        "n_hook_points": len(model.hook_dict),
    }
