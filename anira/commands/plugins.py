"""``anira plugins list``: every policy, task and probe suite, with the plugin and the
distribution (package and version) that provided it."""

from __future__ import annotations

import argparse
import json
import sys

from anira.commands.common import needs_subcommand
from anira.registry import build_registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plugins", help="list installed plugins and what they provide")
    inner = parser.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    listing = inner.add_parser("list", help="list every halting policy, task and probe suite, with the plugin and package providing it")
    listing.add_argument("--json", action="store_true", help="print stable JSON instead of a table")
    listing.set_defaults(func=run_list)
    parser.set_defaults(func=needs_subcommand(parser))


def plugin_distributions(registry) -> dict[str, tuple[str, str]]:
    """Plugin name -> (distribution, version) of the package that provided it.

    Built-ins come with anira itself; third-party plugins are entry points, and
    each entry point knows its distribution. Plugins given in-process
    (``extra_plugins``) have none and are left out.
    """
    import importlib.metadata

    from anira.registry import BUILTIN_PLUGINS, ENTRY_POINT_GROUP

    try:
        own = ("anira", importlib.metadata.version("anira"))
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from anira import __version__

        own = ("anira", __version__)
    found = {name: own for name in BUILTIN_PLUGINS}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in registry.plugins and ep.name not in found and ep.dist is not None:
            found[ep.name] = (ep.dist.metadata["Name"], ep.dist.version)
    return found


def plugins_json(registry) -> dict:
    """The JSON document of ``anira plugins list --json`` (schema in docs/plugins.md)."""
    dists = plugin_distributions(registry)
    return {
        "plugins": registry.plugins,
        "entries": [
            {
                "kind": row.kind,
                "name": row.name,
                "plugin": row.plugin,
                "distribution": dists.get(row.plugin, (None, None))[0],
                "version": dists.get(row.plugin, (None, None))[1],
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
        header = ("kind", "name", "plugin", "distribution")
        rows = [(e["kind"], e["name"], e["plugin"],
                 "-" if e["distribution"] is None else f"{e['distribution']} {e['version']}")
                for e in doc["entries"]]
        widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for problem in registry.problems:
        print(f"anira: warning: {problem}", file=sys.stderr)
    return 0
