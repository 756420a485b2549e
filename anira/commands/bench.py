"""``anira bench {hooks,tasks,train,inference}``: measured speed and memory.

Results print as a short table, or as JSON with ``--json``; docs/benchmarks.md
records the figures with the command and the machine that produced them.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from anira.commands.common import needs_subcommand
from anira.errors import AniraError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmarks: hooks, tasks, train, inference, compare")
    inner = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")

    hooks = inner.add_parser(
        "hooks", help="forward time with hook points present vs bypassed",
        description="Time a forward pass of a randomly initialised model (policy `fixed`) with every hook "
                    "point present but nothing attached, against the same weights with the hook points "
                    "bypassed; the two run back to back, --repeats times, after 3 warm-up pairs.")
    hooks.add_argument("--d-model", type=int, default=256, help="model width (default 256)")
    hooks.add_argument("--batch", type=int, default=32, help="sequences per forward pass (default 32)")
    hooks.add_argument("--seq", type=int, default=64, help="tokens per sequence (default 64)")
    hooks.add_argument("--iters", type=int, default=8, help="D, the loop depth (default 8)")
    hooks.add_argument("--repeats", type=int, default=30, help="timed pairs of forward passes (default 30)")
    hooks.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    hooks.add_argument("--json", action="store_true", help="print the result as JSON")
    hooks.set_defaults(func=run_hooks)

    tasks = inner.add_parser("tasks", help="generator throughput per CPU core for each task")
    tasks.add_argument("--repeats", type=int, default=3)
    tasks.add_argument("--seconds", type=float, default=0.5, help="time per repeat")
    tasks.add_argument("--steps-per-second", type=float, default=None,
                       help="training step rate to judge against (from `anira bench train`)")
    tasks.add_argument("--workers", type=int, default=8, help="data-loader workers available")
    tasks.add_argument("--json", action="store_true")
    tasks.set_defaults(func=run_tasks)

    for name, module in (("train", "anira.commands.bench_train"), ("inference", "anira.commands.bench_inference"),
                         ("compare", "anira.commands.bench_compare")):
        try:
            importlib.import_module(module).add_parser(inner)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    parser.set_defaults(func=needs_subcommand(parser))


def emit(result: dict[str, Any], as_json: bool, lines: list[str]) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))
    return 0


def run_hooks(args: argparse.Namespace) -> int:
    from anira.bench.hooks import bench_hooks
    from anira.commands.common import progress_bar, resolve_device

    if min(args.repeats, args.d_model, args.batch, args.seq, args.iters) < 1:
        raise AniraError("--repeats, --d-model, --batch, --seq and --iters must be >= 1")
    device = resolve_device(args.device)
    update, close = progress_bar("bench hooks", unit="pair")
    try:
        r = bench_hooks(d_model=args.d_model, batch=args.batch, seq=args.seq, max_iters=args.iters,
                        repeats=args.repeats, device=device, progress=update)
    finally:
        close()
    threads = r["machine"]["threads"]
    lines = [
        f"compared: one forward pass with all {r['n_hook_points']} hook points present (nothing attached) "
        f"against the same weights with them bypassed, {args.repeats} pairs run back to back",
        f"model: d_model {args.d_model}, batch {args.batch}, seq {args.seq}, D {args.iters}; "
        f"{device}, {threads} thread{'s' if threads != 1 else ''}",
        f"median forward with hook points: {r['median_s_with_hooks'] * 1e3:.2f} ms",
        f"median forward bypassed:         {r['median_s_bypassed'] * 1e3:.2f} ms  "
        f"(ratio of the medians {r['ratio_of_medians']:.3f})",
        f"median ratio: {r['median_ratio']:.3f} = the median over the {args.repeats} pairs of "
        f"(with hook points / bypassed); target <= {r['target_ratio']}",
    ]
    return emit(r, args.json, lines)


def run_tasks(args: argparse.Namespace) -> int:
    from anira.bench.tasks import bench_tasks

    if args.repeats < 1 or args.workers < 1 or args.seconds <= 0:
        raise AniraError("--repeats and --workers must be >= 1 and --seconds > 0")
    r = bench_tasks(repeats=args.repeats, seconds=args.seconds, steps_per_second=args.steps_per_second,
                    workers=args.workers)
    lines = [f"{'task':<8} {'difficulty':>10} {'examples/s/core':>16} {'keeps up':>9}"]
    for name, entry in r.get("tasks", r).items():
        if not isinstance(entry, dict) or "examples_per_s_per_core" not in entry:
            continue
        keeps = entry.get("keeps_up")
        lines.append(f"{name:<8} {entry['difficulty']:>10} {entry['examples_per_s_per_core']:>16.0f} "
                     f"{'n/a' if keeps is None else ('yes' if keeps else 'NO'):>9}")
    return emit(r, args.json, lines)
