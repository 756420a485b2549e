"""The ``anira`` command line. Each command group lives in ``anira.commands.<name>``
and exposes ``add_parser(subparsers)``; the parser it adds sets ``func``.

User errors (:class:`anira.errors.AniraError`, and bad arguments) print one
line and exit 2; the library itself never prints. Building the parser imports
no torch: ``anira --help``, argument errors and ``anira tasks`` start at once,
and each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from anira.commands.common import DEFAULT_THREADS, configure_threads
from anira.errors import AniraError

COMMAND_MODULES = ("run", "plugins", "tasks", "train", "eval", "report", "probe", "bench")

THREADS_HELP = (
    f"CPU threads for torch (default: $OMP_NUM_THREADS if set, else {DEFAULT_THREADS}; "
    "0: torch's choice, one per core). One thread suits anira's small models and "
    "cannot slow down on a busy machine, where several threads can be many times slower"
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``anira: error: <problem> (see `<prog> --help`)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"anira: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser under ``parser`` (itself included), depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _leaf_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="anira",
        description="Probe per-token adaptive computation in recurrent Transformers.",
        epilog="`anira COMMAND --help` describes each command. Documentation: docs/*.md.",
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"anira.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"anira.commands.{name}":
                continue  # command group not built yet
            raise
        module.add_parser(sub)
    # `--threads` is accepted after the command too (`anira eval CKPT --threads 2`);
    # SUPPRESS keeps a subcommand from resetting a value given before it
    for child in list(_leaf_parsers(parser))[1:]:
        child.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N", help=THREADS_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        configure_threads(args.threads)
        return int(args.func(args) or 0)
    except AniraError as exc:
        print(f"anira: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if exc.filename is None:
            raise  # not about a path the user named: a bug, keep the traceback
        print(f"anira: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
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
