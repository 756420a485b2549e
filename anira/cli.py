"""The ``anira`` command line. Each command group lives in ``anira.commands.<name>``
and exposes ``add_parser(subparsers)``; the parser it adds sets ``func``.

User errors (:class:`anira.errors.AniraError`) print one line and exit 2;
the library itself never prints.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from anira.errors import AniraError

COMMAND_MODULES = ("run", "plugins", "tasks", "train", "eval", "report", "probe", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anira",
        description="Probe per-token adaptive computation in recurrent Transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"anira.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"anira.commands.{name}":
                continue  # command group not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AniraError as exc:
        print(f"anira: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anira: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `anira eval ... | head`): no traceback; point
        # stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
