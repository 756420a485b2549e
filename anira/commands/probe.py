"""``anira probe [CKPT ...]``: run probe suites on checkpoints (docs/probes.md).

With no checkpoint it probes the bundled reference checkpoints (every
subdirectory of ``checkpoints/`` with a ``config.json``). Prints a summary
table, or the JSON result with ``--json``; ``--out DIR`` writes
``probe.json`` and ``probe_report.html`` there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anira.errors import AniraError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="probe suites: does halting track static cues or execution state?",
        description="Collect a per-token table from each checkpoint on fresh in-distribution test "
        "instances and run the probe suites on it (attribution, decision, and any registered suite). "
        "Methods, options and the JSON schema: docs/probes.md.",
    )
    parser.add_argument("checkpoints", nargs="*", metavar="CKPT",
                        help="checkpoint or run directories (default: the bundled checkpoints/)")
    parser.add_argument("--suite", default=None, metavar="NAMES",
                        help="comma-separated suites (default: every registered suite)")
    parser.add_argument("--n", default="2000", metavar="N", help="instances per checkpoint (default 2000)")
    parser.add_argument("--seed", default="0", metavar="S", help="seed of the instances and the probes (default 0)")
    parser.add_argument("--batch-size", default="64", metavar="B", help="instances per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--option", action="append", default=[], metavar="SUITE.KEY=VALUE",
                        help="a suite option, e.g. decision.n_splits=3 or attribution.token_set=answer; "
                        "'*.KEY=VALUE' sets it on every suite that has it (repeatable; options: docs/probes.md)")
    parser.add_argument("--depth-rule", default=None, metavar="RULE",
                        help="replace the policy's halting by a planted rule over the task's per-token features, "
                        "e.g. '1 + in_degree', 'where(tok(\"=\"), 4, 1)', '1 + 6 * rand()' (docs/probes.md)")
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="put a training-free halting policy on the checkpoint first (exit-kl, exit-latent, "
                        "exit-entropy)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="policy.KEY=VALUE",
                        help="an option of --policy, e.g. policy.threshold=1e-3 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (docs/probes.md)")
    parser.add_argument("--out", metavar="DIR", default=None, help="write probe.json and probe_report.html here")
    parser.set_defaults(func=cmd_probe)


def parse_options(raw: list[str], suites: list[str], registry: Any = None) -> dict[str, dict[str, Any]]:
    """``--option`` items, typed and checked against the named suites (one-line errors;
    ``*.KEY`` sets every suite that has KEY): what ``anira bench compare`` and ``anira run`` use too."""
    from anira.probes.options import parse_cli_options, resolve_options
    from anira.probes.suites import resolve_suites
    from anira.registry import default_registry

    return resolve_options(resolve_suites(suites, registry or default_registry()), parse_cli_options(raw))


def parse_policy_sets(items: list[str]) -> dict[str, str]:
    """``["policy.threshold=1e-3"]`` -> ``{"threshold": "1e-3"}`` (only the policy section here)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise AniraError(f"--set expects policy.KEY=VALUE, got {item!r}")
        if section != "policy":
            raise AniraError(f"--set {key.strip()}: anira probe takes only policy.* options (of --policy)")
        out[name] = value
    return out


def cmd_probe(args: argparse.Namespace) -> int:
    from anira.commands.common import check_out_dir, resolve_device
    from anira.commands.eval import int_arg, tqdm_progress
    from anira.probes.options import parse_cli_options, resolve_options
    from anira.probes.report import format_summary, to_json, write_probe_report
    from anira.probes.run import discover_checkpoints, parse_suite_names, preflight_checkpoint, probe_checkpoint
    from anira.probes.suites import resolve_suites
    from anira.registry import default_registry

    # every check that needs no collection comes first: bad input costs nothing
    n = int_arg("--n", args.n, 1)
    seed = int_arg("--seed", args.seed, 0)
    batch_size = int_arg("--batch-size", args.batch_size, 1)
    registry = default_registry()
    resolved = resolve_suites(parse_suite_names(args.suite), registry)
    suites = [s.name for s in resolved]
    options = resolve_options(resolved, parse_cli_options(args.option))
    policy_options = parse_policy_sets(args.sets)
    if policy_options and not args.policy:
        raise AniraError("--set policy.* needs --policy NAME")
    if args.policy is not None:
        registry.policy(args.policy)
    if args.out:
        check_out_dir(args.out)
    paths = [Path(p) for p in args.checkpoints] or discover_checkpoints()
    if not paths:
        raise AniraError("no checkpoint given and no bundled checkpoints (subdirectories of checkpoints/ "
                         "with a config.json) were found")
    for p in paths:
        if not p.exists():
            raise AniraError(f"{p}: no such checkpoint or run directory")
        preflight_checkpoint(p, registry=registry, options=options, depth_rule=args.depth_rule,
                             policy=args.policy, policy_options=policy_options)
    device = resolve_device(args.device)

    from tqdm import tqdm

    results = []
    for path in paths:
        progress, close = tqdm_progress(f"collect {path.name}")
        bar = tqdm(total=len(suites), desc=f"suites {path.name}", unit="suite", leave=False, disable=None)

        started: list[str] = []

        def on_suite(name: str, _bar: Any = bar, _started: list[str] = started) -> None:
            if _started:  # the previous suite has finished
                _bar.update(1)
            _started.append(name)
            _bar.set_postfix_str(name)

        try:
            results.append(probe_checkpoint(path, suites=suites, options=options, n=n, seed=seed,
                                            batch_size=batch_size, device=device, progress=progress,
                                            on_suite=on_suite, depth_rule=args.depth_rule, policy=args.policy,
                                            policy_options=policy_options, registry=registry))
        finally:
            close()
            bar.close()
    if args.out:
        write_probe_report(results, args.out)
    print(to_json(results) if args.json else format_summary(results))
    errors = [s for r in results for s in r.suites if s.status == "error"]
    for s in errors:
        print(f"anira: suite {s.name} failed: {s.reason}", file=sys.stderr)
    return 1 if errors else 0
