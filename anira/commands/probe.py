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
                        help="a suite option, e.g. decision.n_splits=3 or attribution.token_set=answer (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (docs/probes.md)")
    parser.add_argument("--out", metavar="DIR", default=None, help="write probe.json and probe_report.html here")
    parser.set_defaults(func=cmd_probe)


def parse_options(raw: list[str], suites: list[str]) -> dict[str, dict[str, str]]:
    """``["decision.n_splits=3"]`` -> ``{"decision": {"n_splits": "3"}}``; ``*.key=v`` sets every suite."""
    out: dict[str, dict[str, str]] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        suite, dot, name = key.partition(".")
        if not sep or not dot or not suite or not name:
            raise AniraError(f"--option must look like SUITE.KEY=VALUE, got {item!r}")
        targets = suites if suite == "*" else [suite]
        if suite != "*" and suite not in suites:
            raise AniraError(f"--option {item!r}: suite {suite!r} is not being run ({', '.join(suites)})")
        for target in targets:
            out.setdefault(target, {})[name] = value
    return out


def cmd_probe(args: argparse.Namespace) -> int:
    from anira.commands.common import check_out_dir, resolve_device
    from anira.commands.eval import int_arg, tqdm_progress
    from anira.probes.report import format_summary, to_json, write_probe_report
    from anira.probes.run import discover_checkpoints, parse_suite_names, probe_checkpoint
    from anira.probes.suites import resolve_suites
    from anira.registry import default_registry

    n = int_arg("--n", args.n, 1)
    seed = int_arg("--seed", args.seed, 0)
    batch_size = int_arg("--batch-size", args.batch_size, 1)
    registry = default_registry()
    suites = [s.name for s in resolve_suites(parse_suite_names(args.suite), registry)]
    options = parse_options(args.option, suites)
    if args.out:
        check_out_dir(args.out)
    paths = [Path(p) for p in args.checkpoints] or discover_checkpoints()
    if not paths:
        raise AniraError("no checkpoint given and no bundled checkpoints (subdirectories of checkpoints/ "
                         "with a config.json) were found")
    for p in paths:
        if not p.exists():
            raise AniraError(f"{p}: no such checkpoint or run directory")
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
                                            on_suite=on_suite))
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
