"""``anira bench inference``: wall-clock ratio adaptive / fixed depth."""

from __future__ import annotations

import argparse
import sys

from anira.errors import AniraError


def add_parser(inner: argparse._SubParsersAction) -> None:
    p = inner.add_parser("inference", help="time(adaptive)/time(fixed D) for the forward and the core, vs d̄/D")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--iters", type=int, default=8, help="D")
    p.add_argument("--mean-fraction", type=float, default=0.5, help="target d̄/D of the depth pattern")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--decode-len", type=int, default=64, help="tokens to decode for the KV-cache comparison (0: skip)")
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--graphs", default="auto", choices=["auto", "off"],
                   help="run each loop iteration as a CUDA graph on a GPU (both sides alike; default auto)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anira.bench.inference import bench_inference
    from anira.commands.bench import emit
    from anira.commands.common import resolve_device

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        raise AniraError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    if not 0 < args.mean_fraction <= 1 or args.repeats < 1 or min(batches) < 1:
        raise AniraError("--mean-fraction must be in (0, 1], --repeats and batches >= 1")
    r = bench_inference(batches=batches, seq=args.seq, d_model=args.d_model, max_iters=args.iters,
                        mean_fraction=args.mean_fraction, repeats=args.repeats, device=resolve_device(args.device),
                        dtype=args.dtype, decode_len=args.decode_len, decode_batch=args.decode_batch,
                        loop_graphs=args.graphs,
                        progress=lambda m: print(f"... {m}", file=sys.stderr))
    lines = [f"{'batch':>5} {'d̄/D':>6} {'whole ratio':>12} {'core ratio':>11} {'core/ideal':>11}"]
    for row in r["results"]:
        lines.append(f"{row['batch']:>5} {row['ideal_ratio']:>6.3f} {row['whole']['median_ratio']:>12.3f} "
                     f"{row['core']['median_ratio']:>11.3f} {row['core_ratio_over_ideal']:>11.3f}")
    for row in r["results"]:
        sc = row["row_scaling"]
        lines.append(f"batch {row['batch']}: one iteration, dense {sc['dense_s'] * 1e3:.2f} ms; fast with all running "
                     f"(dense layer filling the cache), 1/2, 1/4, 1/8 of the rows: "
                     + ", ".join(f"{sc[f'rows_{f:g}_s'] * 1e3:.2f}" for f in (1, .5, .25, .125)) + " ms")
    if r["decode"]:
        dec = r["decode"]
        lines.append(f"decode {dec['tokens']} tokens x batch {dec['batch']}: allocation-aware "
                     f"{dec['aware']['tokens_per_s']:.1f} tok/s, {dec['aware']['core_kv_bytes'] / 1e6:.2f} MB core KV; "
                     f"full {dec['full']['tokens_per_s']:.1f} tok/s, {dec['full']['core_kv_bytes'] / 1e6:.2f} MB "
                     f"(bytes ratio {dec['bytes_ratio']:.3f})")
        st = dec["static"]
        kind = "static cache, CUDA graph" if st["graphed"] else "static cache, eager"
        lines.append(f"decode {dec['tokens']} tokens x batch {dec['batch']} ({kind}, buffers for {st['max_len']} "
                     f"tokens): allocation-aware {st['aware']['tokens_per_s']:.1f} tok/s, "
                     f"{st['aware']['core_kv_bytes'] / 1e6:.2f} MB core KV in use "
                     f"({st['aware']['core_kv_bytes_allocated'] / 1e6:.2f} MB allocated); full "
                     f"{st['full']['tokens_per_s']:.1f} tok/s, {st['full']['core_kv_bytes'] / 1e6:.2f} MB in use "
                     f"({st['full']['core_kv_bytes_allocated'] / 1e6:.2f} MB allocated); aware/full speed "
                     f"{st['speed_ratio']:.3f}, aware over the reference decoder x{st['speedup_over_reference']:.2f}"
                     + _depth_mismatch(st, "aware", "full"))
        lines.append(f"decode {dec['tokens']} tokens x batch {dec['batch']} ({kind}), skipping the iterations no "
                     f"token runs (mean exit depth {dec['mean_depth']:.2f} of {r['config']['max_iters']}): "
                     f"allocation-aware {st['aware_skip']['tokens_per_s']:.1f} tok/s, full "
                     f"{st['full_skip']['tokens_per_s']:.1f} tok/s, "
                     f"{st['aware_skip']['iterations_per_step']:.2f} iterations per step (all D: "
                     f"{st['aware']['iterations_per_step']:.2f}); aware skipping / full all D speed "
                     f"{st['skip_speed_ratio']:.3f}"
                     + _depth_mismatch(st, "aware_skip", "full_skip"))
        if st["conditional_nodes"]:
            lines.append(_layouts_line(dec, kind, "skipping on the device (conditional graph nodes)", "_skip_device",
                                       "aware skipping / full all D speed", "device_skip_speed_ratio"))
        if st["compiled"]:
            lines.append(_layouts_line(dec, kind, "all D through torch.compile", "_compiled", "aware/full speed",
                                       "compiled_speed_ratio"))
    return emit(r, args.json, lines)


def _layouts_line(dec: dict, kind: str, mode: str, suffix: str, ratio_name: str, ratio_key: str) -> str:
    """One line for a pair of static decoders (allocation-aware and full) run in one mode."""
    st = dec["static"]
    aware, full = f"aware{suffix}", f"full{suffix}"
    return (f"decode {dec['tokens']} tokens x batch {dec['batch']} ({kind}), {mode}: allocation-aware "
            f"{st[aware]['tokens_per_s']:.1f} tok/s, full {st[full]['tokens_per_s']:.1f} tok/s; {ratio_name} "
            f"{st[ratio_key]:.3f}" + _depth_mismatch(st, aware, full))


def _depth_mismatch(static: dict, *decoders: str) -> str:
    """A warning to append when a static decoder's exit depths differ from the reference's."""
    if all(static[name]["depths_match"] for name in decoders):
        return ""
    return "; EXIT DEPTHS DIFFER FROM THE REFERENCE DECODER"
