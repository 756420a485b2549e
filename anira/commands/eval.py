"""``anira eval CKPT``: per-difficulty accuracy (exact match and per answer token), depth, cost and
alignment of one checkpoint.

Prints a table, or with ``--json`` the result in the schema documented in
docs/evaluation.md; ``--out DIR`` also writes the plots and ``eval.json``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

from anira.commands.common import check_out_dir, int_arg, progress_bar, resolve_device
from anira.errors import AniraError

EVAL_JSON = "eval.json"


# --- shared by `anira eval` and `anira report` -------------------------------------------


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", default="64", metavar="N", help="test instances per difficulty value (default 64)")
    parser.add_argument("--seed", default="0", metavar="S", help="seed of the test instances (default 0)")
    parser.add_argument("--batch-size", default="64", metavar="B", help="instances per forward pass (default 64)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (default auto: cuda if available, else cpu)")


def eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """Validated :func:`anira.evaluate.evaluate` keyword arguments from the CLI options."""
    return {
        "n_per_difficulty": int_arg("--n", args.n, 1),
        "seed": int_arg("--seed", args.seed, 0),
        "batch_size": int_arg("--batch-size", args.batch_size, 1),
        "device": resolve_device(args.device),
    }


def tqdm_progress(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress bar counting instances (none when stderr is not a terminal)."""
    return progress_bar(desc, unit="instance")


def check_checkpoint_path(raw: str) -> Path:
    path = Path(raw)
    if not path.exists():
        raise AniraError(f"{path}: no such checkpoint or run directory")
    return path


# --- the command -----------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint per difficulty: accuracy, exit depth, cost, Spearman with complexity",
        description="Evaluate a checkpoint (or a run directory's latest checkpoint) on fresh test "
        "instances of every in-distribution and out-of-distribution difficulty value. "
        "Metric definitions and the JSON schema: docs/evaluation.md.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory or training run directory")
    add_eval_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON (docs/evaluation.md)")
    parser.add_argument("--out", metavar="DIR", default=None, help="also write the plots (PNG) and eval.json here")
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from anira.evaluate import evaluate_checkpoint
    from anira.plots import atomic_write_bytes, write_plots

    options = eval_options(args)
    path = check_checkpoint_path(args.checkpoint)
    out = check_out_dir(args.out) if args.out else None
    progress, close = tqdm_progress(f"eval {path.name}")
    try:
        result = evaluate_checkpoint(path, progress=progress, **options)
    finally:
        close()
    if out is not None:
        metrics = Path(result.checkpoint) / "metrics.jsonl" if result.checkpoint else None
        write_plots(result, out, metrics_path=metrics)
        atomic_write_bytes(out / EVAL_JSON, result.to_json().encode("utf-8"))
    print(result.to_json() if args.json else format_result(result))
    return 0


# --- the readable table ----------------------------------------------------------------


def _f(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_result(result: Any) -> str:
    """The per-difficulty table and the ID / OOD summaries as plain text."""
    where = result.checkpoint or "in-memory model"
    if result.step is not None:
        where += f" (step {result.step})"
    lines = [
        f"{result.task} · policy {result.policy} · D = {result.max_iters} · {where}",
        f"{result.n_per_difficulty} test instances per difficulty ({result.knob}), seed {result.seed}; "
        "depths over answer positions; * = training range",
        "",
    ]
    header = f"{'k':>5}  {'n':>5}  {'acc':>6}  {'tok acc':>7}  {'exit d':>6}  {'E[d]':>6}  {'E[d] all':>8}  {'cost':>6}  {'ρ exit':>6}  {'ρ E[d]':>6}"
    lines.append(header)
    lines.append("-" * len(header))

    def row(label: str, m: Any) -> str:
        return (
            f"{label:>5}  {m.n:>5}  {_f(m.accuracy, 3):>6}  {_f(m.token_acc, 3):>7}  {_f(m.mean_exit_depth, 2):>6}  "
            f"{_f(m.mean_expected_depth, 2):>6}  {_f(m.mean_expected_depth_all, 2):>8}  {_f(m.cost_ratio, 3):>6}  "
            f"{_f(m.spearman_exit_depth, 3):>6}  {_f(m.spearman_expected_depth, 3):>6}"
        )

    for r in result.per_difficulty:
        lines.append(row(f"{r.difficulty}{'*' if r.in_train else ' '}", r.metrics))
    lines.append("-" * len(header))
    for name, summary, bounds in (("ID", result.in_distribution, result.ranges["test_id"]),
                                  ("OOD", result.ood, result.ranges["test_ood"])):
        if summary is not None:
            lines.append(row(name, summary.metrics) + f"   ({bounds[0]}..{bounds[1]})")
    for s in result.skipped:
        lines.append(f"skipped difficulty {s['difficulty']}: {s['reason']}")
    lines.append("acc = exact match (every answer token right); tok acc = answer tokens right / answer tokens")
    lines.append("cost = Σ_d |A_d| / (D × tokens); ρ = Spearman with the task's per-token complexity")
    return "\n".join(lines)
