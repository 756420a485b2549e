"""``anira bench compare``: every policy trained, evaluated and probed on the same runs."""

from __future__ import annotations

import argparse
import json
import sys

from anira.errors import AniraError


def add_parser(inner: argparse._SubParsersAction) -> None:
    p = inner.add_parser("compare", help="train, evaluate and probe each policy on each task; one table",
                         description="Train every policy on every task (the `anira train` code path), then "
                                     "`anira eval` and `anira probe` it; training-free policies are applied "
                                     "to the task's `fixed` run. Writes compare.json and compare.md to --out.")
    p.add_argument("--policies", default="all", help="comma-separated policies, or `all` (default)")
    p.add_argument("--tasks", default="mano,brevo", help="comma-separated tasks (default mano,brevo)")
    p.add_argument("--preset", default=None, help="training preset for every task (default tiny-<task>)")
    p.add_argument("--steps", default=None, help="optimizer steps per run (default: the preset's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="`anira train --set` override applied to every run (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", default="0", help="seed of training, evaluation and probes (default 0)")
    p.add_argument("--eval-n", default="256", help="evaluation instances per difficulty (default 256)")
    p.add_argument("--probe-n", default="2000", help="probe instances per run (default 2000)")
    p.add_argument("--suite", default="decision",
                   help="comma-separated probe suites, or `all` (default decision, which gives the verdict)")
    p.add_argument("--option", action="append", default=[], metavar="SUITE.KEY=VALUE",
                   help="probe suite option, as for `anira probe` (repeatable), e.g. decision.correct_only=false")
    p.add_argument("--trained", default=None, metavar="DIR",
                   help="evaluate and probe runs already trained elsewhere, DIR/<task>-<policy>, instead of training")
    p.add_argument("--out", default="runs/compare", help="directory for runs and results (default runs/compare)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the Markdown table")
    p.set_defaults(func=run)


def _names(raw: str, what: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        raise AniraError(f"no {what} given")
    return list(dict.fromkeys(names))


def _positive(raw: str, flag: str, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise AniraError(f"{flag}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise AniraError(f"{flag} must be >= {minimum}, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from anira.bench.compare import SCHEMA_VERSION, compare_policies, markdown_table
    from anira.registry import default_registry

    registry = default_registry()
    policies = registry.names("policy") if args.policies.strip() == "all" else _names(args.policies, "policy")
    tasks = _names(args.tasks, "task")
    for name in policies:
        registry.policy(name)
    for name in tasks:
        registry.task(name)
    suites = None if args.suite.strip() == "all" else _names(args.suite, "probe suite")
    from anira.commands.common import check_out_dir, resolve_device
    from anira.commands.probe import parse_options
    from anira.probes.suites import resolve_suites

    options = parse_options(args.option, [s.name for s in resolve_suites(suites, registry)])  # unknown suite: error
    steps = None if args.steps is None else _positive(args.steps, "--steps")
    device = resolve_device(args.device)
    check_out_dir(args.out)
    rows = compare_policies(
        policies, tasks, preset_for_task=args.preset, steps=steps, out_dir=args.out, device=device,
        seed=_positive(args.seed, "--seed", 0), train_overrides=args.sets, eval_n=_positive(args.eval_n, "--eval-n"),
        probe_n=_positive(args.probe_n, "--probe-n"), suites=suites, registry=registry,
        probe_options=options, trained=args.trained,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps({"schema": SCHEMA_VERSION, "rows": rows}, indent=2, sort_keys=True))
    else:
        print(markdown_table(rows))
        print(f"\nresults: {args.out}/compare.json, {args.out}/compare.md")
    return 0
