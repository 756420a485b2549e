"""``anira run``: the main job.

With no arguments it takes the bundled reference checkpoints (``checkpoints/``),
evaluates each, runs the probe suites on each, writes one offline HTML report
(evaluation and probes side by side) and prints a summary. ``--trace`` instead
builds a small untrained model and shows, iteration by iteration, which tokens
were still computing and where each exited.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import as_completed
from pathlib import Path

from anira.commands.common import check_out_dir, progress_bar
from anira.errors import AniraError

DEFAULT_SUITES = "attribution,decision"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="the main job: evaluate and probe the bundled checkpoints, write the report",
        description="Evaluate and probe checkpoints (default: the bundled ones) and write one HTML report.",
    )
    parser.add_argument("checkpoints", nargs="*", help="checkpoint directories (default: checkpoints/*)")
    parser.add_argument("--out", default="anira-report", help="report directory (default: anira-report)")
    parser.add_argument("--n", type=int, default=128, help="evaluation instances per difficulty (default: 128)")
    parser.add_argument("--probe-n", type=int, default=1000, help="instances for the probe suites (default: 1000)")
    parser.add_argument("--suites", default=DEFAULT_SUITES,
                        help=f"probe suites, comma-separated, or 'none' (default: {DEFAULT_SUITES})")
    parser.add_argument("--option", action="append", default=[], metavar="SUITE.KEY=VALUE",
                        help="a probe suite option, as in `anira probe`, e.g. '*.null_permutations=5' "
                             "(repeatable; options: docs/probes.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0, metavar="N",
                        help="checkpoints evaluated and probed at once, each in its own process "
                             "(default 0: one per available CPU core, at most one per checkpoint)")
    parser.add_argument("--trace", action="store_true",
                        help="instead: trace one example through a small untrained model, iteration by iteration")
    parser.add_argument("--task", default="mano", help="--trace: task (default: mano)")
    parser.add_argument("--policy", default="anira-o", help="--trace: halting policy (default: anira-o)")
    parser.add_argument("--difficulty", type=int, default=3, help="--trace: task difficulty (default: 3)")
    parser.set_defaults(func=run)


def trace_lines(task_name: str, policy: str, difficulty: int, seed: int) -> list[str]:
    import numpy as np
    import torch

    from anira.cache import names_filter_for, stack_iterations
    from anira.config import preset_config
    from anira.model import build_model
    from anira.registry import default_registry

    task = default_registry().task(task_name)()
    example = task.sample(difficulty, np.random.default_rng(seed), split="test")
    cfg = preset_config("tiny", vocab_size=task.vocab_size, max_len=max(64, len(example)))
    model = build_model(cfg, policy, seed=seed).eval()
    D = cfg.max_iters
    out, cache = model.run_with_cache(
        torch.as_tensor(example.tokens)[None],
        names_filter=names_filter_for("hook_resid_pre", "hook_resid_post", max_iters=D),
    )
    before, _ = stack_iterations(cache, "hook_resid_pre")
    after, running = stack_iterations(cache, "hook_resid_post")
    moved = (after - before).norm(dim=-1)[:, 0]  # (iter, pos): how far each state moved
    words = [task.tokenizer.vocab[i] for i in example.tokens.tolist()]
    width = max(5, max(len(w) for w in words))
    lines = [
        f"task {task.name} (difficulty {difficulty}), policy {policy}, untrained {cfg.d_model}-wide model, D = {D}",
        f"text: {task.decode(example.tokens)}",
        "",
        "iteration " + " ".join(w.rjust(width) for w in words),
    ]
    for t in range(D):
        cells = ["run".rjust(width) if r else ".".rjust(width) for r in running[t, 0].tolist()]
        lines.append(f"{t:>9} " + " ".join(cells)
                     + f"   ({int(running[t, 0].sum())} running, largest state change {float(moved[t].max()):.3f})")
    lines.append("exit depth " + " ".join(str(d).rjust(width) for d in out.exit_depth[0].tolist()))
    lines.append("E[depth]   " + " ".join(f"{d:.2f}".rjust(width) for d in out.expected_depth[0].tolist()))
    cost = int(out.execution_cost[0])
    lines.append("")
    lines.append(
        f"loop ran {out.iterations_run} of {D} iterations; execution cost Σ_d |A_d| = {cost} "
        f"token-iterations = {cost / (D * len(words)):.2f} of fixed depth"
    )
    return lines


def main_job(args: argparse.Namespace) -> int:
    from anira.probes.report import probe_intro, probe_sections, verdict_card
    from anira.probes.run import discover_checkpoints
    from anira.registry import default_registry
    from anira.report import write_report

    paths = [Path(p) for p in args.checkpoints] or discover_checkpoints()
    if not paths:
        raise AniraError("no checkpoints given and none bundled under checkpoints/; try `anira run --trace`")
    if args.n < 1 or args.probe_n < 1:
        raise AniraError("--n and --probe-n must be >= 1")
    check_out_dir(args.out)
    from anira.checkpoint import read_config

    # a missing or corrupt checkpoint fails before any work
    policies = {path: (read_config(path).get("policy") or {}).get("name") for path in paths}
    suites = [] if args.suites.strip() == "none" else [s.strip() for s in args.suites.split(",") if s.strip()]
    options: dict = {}
    if suites:
        from anira.commands.probe import parse_options
        from anira.probes.run import parse_suite_names

        # unknown suite names and bad options fail before any work
        options = parse_options(args.option, parse_suite_names(suites), default_registry())
    elif args.option:
        raise AniraError("--option sets a probe suite option, but --suites is 'none'")
    if args.jobs < 0:
        raise AniraError(f"--jobs must be >= 0 (0: one per CPU core), got {args.jobs}")
    jobs = min(args.jobs or available_cores(), len(paths))
    start = time.perf_counter()
    if jobs > 1:
        # adaptive checkpoints first: their probe suites fit every model, a fixed-depth
        # checkpoint's decision is constant and skipped, so the long jobs start early and
        # the short ones fill in at the end (results keep the order of `paths`)
        start_order = sorted(paths, key=lambda p: policies[p] == "fixed")
        evals, probes = _check_in_parallel(paths, start_order, suites, options, args, jobs)
    else:
        evals, probes = [], []
        for path in paths:
            ev, pr = check_one(path, suites, args.n, args.probe_n, args.seed, options=options, progress=True)
            evals.append(ev)
            probes.extend(pr)
    report = write_report(evals, args.out, title="anira: reference checkpoints",
                          extra_sections=probe_sections(probes) if probes else (),
                          intro=probe_intro(probes, Path(args.out)),
                          card_extras={p.label: verdict_card(p) for p in probes})
    print(f"{'checkpoint':<16} {'acc ID':>7} {'acc OOD':>8} {'depth ID':>9} {'cost/D':>7} {'ρ(depth,cx)':>12}  probe verdict")
    verdicts = {p.label: _verdict(p) for p in probes}
    for r in evals:
        m_id = r.in_distribution.metrics if r.in_distribution else None
        m_ood = r.ood.metrics if r.ood else None
        print(f"{r.label:<16} {_f(m_id, 'accuracy'):>7} {_f(m_ood, 'accuracy'):>8} {_f(m_id, 'mean_exit_depth', 2):>9} "
              f"{_f(m_id, 'cost_ratio'):>7} {_f(m_id, 'spearman_exit_depth'):>12}  {verdicts.get(r.label, '-')}")
    why = [f"  {p.label}: {_verdict(p)}: {_reason(p)}" for p in probes if _reason(p)]
    if why:
        print("\nwhy each verdict:")
        print("\n".join(why))
    print(f"\nreport: {report}  ({time.perf_counter() - start:.0f} s)")
    return 0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_one(path: Path, suites: list[str], n: int, probe_n: int, seed: int, options: dict | None = None,
              progress: bool = False):
    """Evaluate one checkpoint and run the probe suites on it (``options``: resolved suite
    options, as ``anira probe --option`` gives them): (evaluation, [probe result])."""
    from anira.evaluate import evaluate_checkpoint
    from anira.probes.run import probe_checkpoint

    def bar(desc: str):
        return progress_bar(desc, unit="instance") if progress else (None, lambda: None)

    update, close = bar(f"eval {path.name}")
    try:
        ev = evaluate_checkpoint(path, n_per_difficulty=n, seed=seed, progress=update)
    finally:
        close()
    if not suites:
        return ev, []
    update, close = bar(f"probe {path.name}")
    try:
        return ev, [probe_checkpoint(path, suites=suites, options=options, n=probe_n, seed=seed, progress=update)]
    finally:
        close()


def _check_in_parallel(paths: list[Path], start_order: list[Path], suites: list[str], options: dict,
                       args: argparse.Namespace, jobs: int):
    """check_one on every checkpoint in ``jobs`` fresh processes, started in ``start_order``;
    results in the order of ``paths``. Each checkpoint's work is seeded on its own, so the results equal the
    sequential run's. Workers are spawned (not forked: torch's thread pools do not survive
    a fork) and inherit the thread settings through the environment (configure_threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    update, close = progress_bar(f"{len(paths)} checkpoints, {jobs} at a time", unit="checkpoint")
    results = {}
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(check_one, p, suites, args.n, args.probe_n, args.seed, options): p
                       for p in start_order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                update(len(results), len(paths))
    finally:
        close()
    evals = [results[p][0] for p in paths]
    probes = [r for p in paths for r in results[p][1]]
    return evals, probes


def _f(metrics, key: str, digits: int = 3) -> str:
    value = None if metrics is None else getattr(metrics, key, None)
    if value is None or value != value:  # None or NaN (e.g. Spearman of a constant depth)
        return "-"
    return f"{value:.{digits}f}"


def _verdict(result) -> str:
    """The decision-probe verdict, or why there is none."""
    suites = result.suites if isinstance(result.suites, dict) else {s.name: s for s in result.suites}
    decision = suites.get("decision")
    if decision is None:
        return "-"
    verdict = (decision.data or {}).get("verdict") if decision.status == "ok" else None
    if isinstance(verdict, dict):
        return str(verdict.get("label", "-"))
    return f"{decision.status}: {decision.reason}"[:60]


def _reason(result) -> str:
    """The decision verdict's explanation ("" when the suite did not conclude)."""
    decision = result.suite("decision")
    if decision is None or decision.status != "ok":
        return ""
    verdict = (decision.data or {}).get("verdict")
    return str(verdict.get("reason", "")) if isinstance(verdict, dict) else ""


def run(args: argparse.Namespace) -> int:
    if args.trace:
        for line in trace_lines(args.task, args.policy, args.difficulty, args.seed):
            print(line)
        return 0
    return main_job(args)
