"""``anira plugins list``: every policy, task and probe suite, with its plugin."""

from __future__ import annotations

import argparse
import json
import sys

from anira.commands.common import needs_subcommand
from anira.registry import build_registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plugins", help="list installed plugins and what they provide")
    inner = parser.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    listing = inner.add_parser("list", help="list every halting policy, task and probe suite")
    listing.add_argument("--json", action="store_true", help="print stable JSON instead of a table")
    listing.set_defaults(func=run_list)
    parser.set_defaults(func=needs_subcommand(parser))


def plugins_json(registry) -> dict:
    """The JSON document of ``anira plugins list --json`` (schema in docs/plugins.md)."""
    return {
        "plugins": registry.plugins,
        "entries": [
            {
                "kind": row.kind,
                "name": row.name,
                "plugin": row.plugin,
                "description": getattr(row.obj, "description", ""),
            }
            for row in registry.rows()
        ],
        "problems": registry.problems,
    }


def run_list(args: argparse.Namespace) -> int:
    registry = build_registry()
    doc = plugins_json(registry)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        rows = [(e["kind"], e["name"], e["plugin"]) for e in doc["entries"]]
        widths = [max(len(r[i]) for r in rows + [("kind", "name", "plugin")]) for i in range(3)]
        print("  ".join(h.ljust(w) for h, w in zip(("kind", "name", "plugin"), widths)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for problem in registry.problems:
        print(f"anira: warning: {problem}", file=sys.stderr)
    return 0
