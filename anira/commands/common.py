"""Option handling shared by the commands: integers, devices, threads, progress bars.

Nothing here imports torch at module level: ``anira --help`` and ``anira tasks``
build every command's parser without it (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from anira.errors import AniraError

#: CPU threads for torch when neither ``--threads`` nor OMP_NUM_THREADS says otherwise.
#: anira's CPU work is small models (tiny presets, evaluation, probes), where a
#: second thread gains little on a quiet machine and costs several-fold on a
#: loaded one (docs/benchmarks.md, "Threads").
DEFAULT_THREADS = 1

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def int_arg(name: str, raw: Any, minimum: int) -> int:
    """``raw`` as a base-10 integer of at least ``minimum``, else a one-line error."""
    try:
        value = int(str(raw), 10)
    except ValueError:
        raise AniraError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise AniraError(f"{name} must be >= {minimum}, got {value}")
    return value


def default_threads() -> int:
    """OMP_NUM_THREADS when it is set to a positive integer, else :data:`DEFAULT_THREADS`."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_THREADS


def configure_threads(threads: int | None) -> int | None:
    """Set the CPU threads torch (and numpy's BLAS) will use; returns the number set.

    ``None``: :func:`default_threads`. ``0``: leave the choice to torch (one
    thread per core). The environment variables reach libraries imported later
    and worker processes; torch, if already imported, is told directly.
    """
    if threads is None:
        threads = default_threads()
    if threads < 0:
        raise AniraError(f"--threads must be >= 0 (0: torch's own choice), got {threads}")
    if threads == 0:
        return None
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def resolve_device(raw: str | None, flag: str = "--device") -> str:
    """A checked torch device name: ``None``/``auto`` -> cuda when available, else cpu.

    Unknown names (``gpu``) and CUDA on a machine without it are one-line errors
    here instead of tracebacks deep inside the model.
    """
    import torch

    if raw in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(raw)
    except (RuntimeError, TypeError):
        raise AniraError(f"{flag}: unknown device {raw!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return str(device)
    if device.type != "cuda":
        raise AniraError(f"{flag}: unsupported device {raw!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise AniraError(f"{flag} {raw}: CUDA is not available on this machine (use --device cpu)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise AniraError(f"{flag} {raw}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


def progress_bar(desc: str, unit: str = "instance") -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing a bar on stderr, and a function closing it.

    The bar is created once the total is known, and only when stderr is a
    terminal: piped or logged output gets no carriage-return noise.
    """
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        bar = state.get("bar")
        if bar is None:
            from tqdm import tqdm

            bar = state["bar"] = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                                      dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return update, close


def needs_subcommand(parser: Any) -> Callable[[Any], int]:
    """The ``func`` of a command group run without its subcommand: a one-line error."""
    choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def fail(args: Any) -> int:
        raise AniraError(f"`{parser.prog}` needs a subcommand: {', '.join(choices)} (see `{parser.prog} --help`)")

    return fail


def check_out_dir(raw: str, flag: str = "--out") -> Path:
    """``raw`` as an output directory that exists or can be created, checked before
    any long work. A missing directory is created and removed again at once (the
    only sure test), so a command that fails later leaves no trace."""
    path = Path(raw)
    if path.exists():
        if not path.is_dir():
            raise AniraError(f"{flag} {raw}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise AniraError(f"{flag} {raw}: the directory is not writable")
        return path
    missing = [path]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    created = []
    try:
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
    except OSError as exc:
        raise AniraError(f"{flag} {raw}: cannot be created ({exc.strerror}: {exc.filename})") from None
    finally:
        for directory in reversed(created):
            directory.rmdir()
    return path
