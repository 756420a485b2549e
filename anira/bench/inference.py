"""Wall-clock savings of adaptive depth at inference.

A ``pattern`` policy fixes every token's exit depth, so the mean depth d̄ is
known; the same weights then run (a) with the fast path, where only running
tokens compute, and (b) at fixed depth D on the dense path. Ratios
time(adaptive) / time(fixed) are reported for the whole forward and for the
core loop alone, next to the ideal d̄ / D. Timings alternate A, B, A, B, ... and
the median is taken, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import platform
import statistics
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from anira.bench.hooks import time_call
from anira.config import ModelConfig
from anira.fast import InferenceLoop, mask_layouts
from anira.model import RecurrentTransformer, build_model
from anira import decode
from anira.static_decode import LAYOUTS, StaticDecoder, conditional_nodes_available
from anira.static_decode import teacher_forced as static_teacher_forced


def balanced_depths(seq: int, max_iters: int, mean_fraction: float, seed: int) -> list[int]:
    """Per-position depths in 1..D, shuffled, whose mean is as close as possible
    to mean_fraction·D (and which include D, so the loop runs to the end)."""
    rng = np.random.default_rng(seed)
    target = mean_fraction * max_iters
    depths = rng.integers(1, max_iters + 1, size=seq)
    depths[0] = max_iters
    # nudge single entries until the mean hits the target (keeps the spread)
    for _ in range(100 * seq):
        gap = target * seq - depths.sum()
        if abs(gap) < 1:
            break
        i = rng.integers(1, seq)
        depths[i] = np.clip(depths[i] + np.sign(gap), 1, max_iters)
    return depths.tolist()


def _core_dense(model: RecurrentTransformer, h0: torch.Tensor) -> torch.Tensor:
    # the masked path with every token running: fixed depth (as graphs where the fast path has them)
    loop = InferenceLoop(model, h0, None, fast=False, planned=False)
    running = torch.ones(h0.shape[:2], dtype=torch.bool, device=h0.device)
    h = h0
    for t in range(model.cfg.max_iters):
        h = loop.iterate(h, t, running)
    return h


def _core_fast(model: RecurrentTransformer, h0: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    # the depths are known: one device sync for the whole loop, and every iteration's
    # packing is read off their order
    loop = InferenceLoop(model, h0, depths, fast=True, planned=True)
    h = h0
    for t in range(model.cfg.max_iters):
        running = t < depths
        if not loop.runs_any(t, running):
            break
        h = loop.iterate(h, t, running)
    return h


def _row_scaling(model: RecurrentTransformer, h0: torch.Tensor, timer: Callable, repeats: int) -> dict[str, Any]:
    """Median time of one fast iteration with the first m·n tokens running, for
    m = 1, 1/2, 1/4, 1/8, next to one dense iteration: how the cost of an iteration
    follows the number of rows it computes on this machine. (m = 1 takes the fast
    path's all-running shortcut: the dense layer, also filling the cache.)"""
    b, n = h0.shape[:2]
    dense = InferenceLoop(model, h0, None, fast=False, planned=False)
    everyone = torch.ones(b, n, dtype=torch.bool, device=h0.device)
    out: dict[str, Any] = {"dense_s": statistics.median(timer(lambda: dense.iterate(h0, 1, everyone))
                                                        for _ in range(repeats))}
    for fraction in (1.0, 0.5, 0.25, 0.125):
        running = (torch.arange(n, device=h0.device) < max(1, int(n * fraction)))[None].expand(b, n)
        layouts = mask_layouts([running])[0], None
        loop = InferenceLoop(model, h0, None, fast=True, planned=False)

        def one() -> Any:
            return loop.iterate_rows(h0, 1, running, None, layouts)

        one()
        out[f"rows_{fraction:g}_s"] = statistics.median(timer(one) for _ in range(repeats))
    return out


def bench_inference(
    *,
    batches: tuple[int, ...] = (1, 64),
    seq: int = 256,
    d_model: int = 512,
    max_iters: int = 8,
    mean_fraction: float = 0.5,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    decode_len: int = 64,
    decode_batch: int = 1,
    loop_graphs: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    dev = torch.device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    depths_list = balanced_depths(seq, max_iters, mean_fraction, seed)
    cfg = ModelConfig(vocab_size=256, d_model=d_model, n_heads=max(1, d_model // 64), d_ff=4 * d_model,
                      max_iters=max_iters, max_len=seq)
    model = build_model(cfg, "pattern", seed=seed, depths=depths_list).to(dev, torch_dtype).eval()
    model.loop_graphs = loop_graphs  # both sides alike: CUDA graphs of each iteration on a GPU ("auto")
    timer = partial(time_call, device=dev)
    results = []
    for batch in batches:
        if progress:
            progress(f"batch {batch}")
        tokens = torch.randint(1, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(dev)
        depths = torch.tensor(depths_list, device=dev).expand(batch, seq)
        full = torch.full((batch, seq), max_iters, device=dev)

        def whole_adaptive() -> Any:
            model.fast_inference = True
            return model(tokens)

        def whole_fixed() -> Any:
            model.fast_inference = False
            return model(tokens, exit_depths=full)

        with torch.no_grad():
            h0 = model.run_prelude(tokens)
            pairs = {
                "whole": (whole_adaptive, whole_fixed),
                "core": (lambda: _core_fast(model, h0, depths), lambda: _core_dense(model, h0)),
            }
            check = whole_adaptive()
            mean_depth = float(check.exit_depth.float().mean())
            row: dict[str, Any] = {"batch": batch, "mean_depth": mean_depth, "ideal_ratio": mean_depth / max_iters}
            for name, (adaptive, fixed) in pairs.items():
                for _ in range(warmup):
                    adaptive(), fixed()
                a_times, f_times = [], []
                for _ in range(repeats):
                    a_times.append(timer(adaptive))
                    f_times.append(timer(fixed))
                ratios = [a / f for a, f in zip(a_times, f_times)]
                row[name] = {
                    "median_s_adaptive": statistics.median(a_times),
                    "median_s_fixed": statistics.median(f_times),
                    "median_ratio": statistics.median(ratios),
                }
            row["core_ratio_over_ideal"] = row["core"]["median_ratio"] / row["ideal_ratio"]
            row["row_scaling"] = _row_scaling(model, h0, timer, repeats)
        results.append(row)
    model.fast_inference = True
    decoding = bench_decode(model, seq=decode_len, batch=decode_batch, device=dev, repeats=max(1, repeats // 3),
                            seed=seed) if decode_len else None
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(dev)
    return {
        "benchmark": "inference",
        "config": {"seq": seq, "d_model": d_model, "max_iters": max_iters, "mean_fraction": mean_fraction,
                   "repeats": repeats, "device": device, "dtype": dtype, "loop_graphs": loop_graphs,
                   "graphs_recorded": model.graphs.recorded if model.loop_graphs == "auto" else 0,
                   # the whole forward of smaller batches takes the masked path; the core rows never
                   "fast_path_min_tokens": dict(model.fast_path_min_tokens)},
        "machine": machine,
        "target": "core ratio <= 1.25 x ideal at d̄/D ~ 0.5",
        "results": results,
        "decode": decoding,
    }


def bench_decode(model: RecurrentTransformer, *, seq: int, batch: int, device: torch.device, repeats: int,
                 seed: int, compiled: bool | None = None) -> dict[str, Any]:
    """Tokens/s of teacher-forced decoding and core KV-cache bytes, side by side on the
    same model and tokens: the reference decoder (anira/decode.py; allocation-aware cache
    against a full cache of D entries per token) and the static-cache decoder
    (anira/static_decode.py; recorded as CUDA graphs on a GPU), in both layouts, running
    all D iterations per step and skipping those no token runs (``skip_halted``: with a flag
    read by the host, and on a GPU whose torch build records conditional nodes, on the device),
    and ``compiled`` (default: on a GPU) the all-D step through torch.compile."""
    tokens = torch.randint(1, model.cfg.vocab_size, (batch, seq),
                           generator=torch.Generator().manual_seed(seed)).to(device)
    timer = partial(time_call, device=device)
    out: dict[str, Any] = {"batch": batch, "tokens": seq}
    # static buffers for the model's whole max_len (what a real decode would allocate);
    # skipping on the device (conditional graph nodes) where this torch build records them
    skips = {"": False, "_skip": True}
    on_device = device.type == "cuda" and conditional_nodes_available()
    if on_device:
        skips["_skip_device"] = "device"
    decoders = {f"{layout}{suffix}": StaticDecoder(model, batch, layout=layout, skip_halted=skip)
                for suffix, skip in skips.items() for layout in LAYOUTS}
    compiled = device.type == "cuda" if compiled is None else compiled
    if compiled:  # compiling takes tens of seconds per layout on a CPU: a GPU's default only
        decoders.update({f"{layout}_compiled": StaticDecoder(model, batch, layout=layout, compile=True)
                         for layout in LAYOUTS})
    runs: dict[str, Callable[[], Any]] = {
        "aware": lambda: decode.teacher_forced(model, tokens, full_cache=False),
        "full": lambda: decode.teacher_forced(model, tokens, full_cache=True),
        **{f"static_{name}": partial(static_teacher_forced, dec, tokens) for name, dec in decoders.items()},
    }
    results = {name: run() for name, run in runs.items()}  # warm-up; records the static steps' graphs
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
        for name, run in runs.items():
            holder: dict[str, Any] = {}
            times[name].append(timer(lambda: holder.update(r=run())))
            results[name] = holder["r"]
    for name in ("aware", "full"):
        state = results[name][2]
        out[name] = {"tokens_per_s": batch * seq / statistics.median(times[name]),
                     "core_kv_bytes": state.core.nbytes(), "core_kv_entries": state.core.entries()}
    out["bytes_ratio"] = out["aware"]["core_kv_bytes"] / out["full"]["core_kv_bytes"]
    out["speed_ratio"] = out["aware"]["tokens_per_s"] / out["full"]["tokens_per_s"]
    reference_depths = results["aware"][1]
    out["mean_depth"] = float(reference_depths.float().mean())  # of the decoded tokens
    static: dict[str, Any] = {"graphed": any(dec.recorded for dec in decoders.values()),
                              "max_len": decoders["aware"].max_len, "conditional_nodes": on_device,
                              "compiled": compiled}
    for name, dec in decoders.items():
        static[name] = {"tokens_per_s": batch * seq / statistics.median(times[f"static_{name}"]),
                        "core_kv_bytes": dec.nbytes_used(), "core_kv_bytes_allocated": dec.nbytes(),
                        "core_kv_entries": dec.entries(),
                        # core iterations a step ran (for the whole batch), mean over the steps
                        "iterations_per_step": dec.iterations_run / seq,
                        # the static step's exit depths are the reference decoder's (a check, not a timing)
                        "depths_match": bool(torch.equal(results[f"static_{name}"][1], reference_depths))}
    static["speed_ratio"] = static["aware"]["tokens_per_s"] / static["full"]["tokens_per_s"]
    static["skip_speed_ratio"] = static["aware_skip"]["tokens_per_s"] / static["full"]["tokens_per_s"]
    if on_device:  # the allocation-aware layout skipping inside one graph against the full one running all D
        static["device_skip_speed_ratio"] = (static["aware_skip_device"]["tokens_per_s"]
                                             / static["full"]["tokens_per_s"])
    if compiled:  # both layouts through torch.compile: the comparison of the layouts at their fastest
        static["compiled_speed_ratio"] = (static["aware_compiled"]["tokens_per_s"]
                                          / static["full_compiled"]["tokens_per_s"])
    static["speedup_over_reference"] = static["aware"]["tokens_per_s"] / out["aware"]["tokens_per_s"]
    out["static"] = static
    return out
