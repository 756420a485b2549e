"""``anira report CKPT ... --out DIR``: one offline HTML page comparing checkpoints."""

from __future__ import annotations

import argparse
from typing import Any

from anira.commands.common import check_out_dir
from anira.commands.eval import add_eval_options, check_checkpoint_path, eval_options, tqdm_progress
from anira.errors import AniraError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="evaluate checkpoints and write one self-contained HTML report comparing them",
        description="Evaluate each checkpoint (or run directory; an `anira eval --json` file is read "
        "instead of evaluated) and write DIR/report.html, viewable offline, with DIR/results.json. "
        "Contents: docs/evaluation.md.",
    )
    parser.add_argument("checkpoints", metavar="CKPT", nargs="+",
                        help="checkpoint or run directories, or eval JSON files; one column each")
    parser.add_argument("--out", metavar="DIR", required=True, help="directory for report.html and results.json")
    parser.add_argument("--title", default="anira report", help="page title")
    add_eval_options(parser)
    parser.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from anira.evaluate import EvalResult, evaluate_checkpoint
    from anira.report import write_report

    options = eval_options(args)
    paths = [check_checkpoint_path(raw) for raw in args.checkpoints]  # fail before any long work
    out = check_out_dir(args.out)
    results = []
    for path in paths:
        if path.is_file() and path.suffix == ".json":
            results.append(EvalResult.from_json(path.read_text(encoding="utf-8")))
            continue
        progress, close = tqdm_progress(f"eval {path.name}")
        try:
            results.append(evaluate_checkpoint(path, progress=progress, **options))
        finally:
            close()
    report = write_report(results, out, title=args.title)
    print(report)
    return 0
