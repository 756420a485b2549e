"""Probe a model or checkpoint end to end: resolve suites, collect, run, gather.

``probe_model(model, task, suites=[...])`` and ``probe_checkpoint(path, ...)``
return a :class:`ProbeResult`; :mod:`anira.probes.report` writes the JSON and
the HTML report of several. Unknown suite names fail before any work; a suite
that cannot run on this checkpoint is reported as skipped with its reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from anira.errors import AniraError
from anira.probes.collect import DepthFn, collect
from anira.probes.suites import (
    SuiteContext,
    SuiteResult,
    collect_requirements,
    json_safe,
    resolve_suites,
    run_suites,
)
from anira.probes.table import TokenTable

#: where the bundled reference checkpoints live (relative to the working
#: directory first, then to the repository that holds this package)
CHECKPOINTS_DIR = "checkpoints"
SCHEMA_VERSION = 1
DEFAULT_N = 2000


@dataclass
class ProbeResult:
    """Every suite's result on one checkpoint, with what was collected."""

    label: str
    task: str
    policy: str
    timing: str
    max_iters: int
    n_instances: int
    n_rows: int
    accuracy: float  # share of collected instances solved exactly
    collection: dict[str, Any]
    suites: list[SuiteResult] = field(default_factory=list)
    checkpoint: str | None = None
    seconds: float = 0.0

    def suite(self, name: str) -> SuiteResult | None:
        return next((s for s in self.suites if s.name == name), None)

    @property
    def verdict(self) -> str | None:
        """The decision suite's verdict label (None when it did not run)."""
        s = self.suite("decision")
        if s is None or s.status != "ok":
            return None
        return s.data.get("verdict", {}).get("label")

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "label": self.label,
            "checkpoint": self.checkpoint,
            "task": self.task,
            "policy": self.policy,
            "timing": self.timing,
            "max_iters": self.max_iters,
            "n_instances": self.n_instances,
            "n_rows": self.n_rows,
            "accuracy": self.accuracy,
            "verdict": self.verdict,
            "collection": self.collection,
            "suites": {s.name: s.to_dict() for s in self.suites},
            "seconds": round(self.seconds, 3),
        })


def parse_suite_names(raw: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> names (None: every registered suite)."""
    if raw is None:
        return None
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise AniraError("no probe suite named (e.g. --suite attribution,decision)")
    return list(dict.fromkeys(names))


def probe_table(
    table: TokenTable,
    *,
    suites: str | Sequence[str] | None = None,
    registry: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    model: Any = None,
    task: Any = None,
    label: str | None = None,
    on_suite: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Run suites on an already collected (or stored, or synthetic) table."""
    from anira.registry import default_registry

    start = time.perf_counter()
    registry = registry or default_registry()
    resolved = resolve_suites(parse_suite_names(suites), registry)
    meta = table.meta
    context = SuiteContext(max_iters=table.max_iters, timing=str(meta.get("timing", "unknown")), seed=seed,
                           model=model, task=task)
    results = run_suites(resolved, table, context, options=options, on_suite=on_suite)
    return ProbeResult(
        label=label or str(meta.get("label") or meta.get("policy") or "table"),
        task=str(meta.get("task", "unknown")),
        policy=str(meta.get("policy", "unknown")),
        timing=str(meta.get("timing", "unknown")),
        max_iters=table.max_iters,
        n_instances=table.n_instances,
        n_rows=table.n_rows,
        accuracy=_accuracy(table),
        collection=dict(meta),
        suites=results,
        checkpoint=meta.get("checkpoint"),
        seconds=time.perf_counter() - start,
    )


def _accuracy(table: TokenTable) -> float:
    if table.n_rows == 0:
        return float("nan")
    _, first = np.unique(table["instance"], return_index=True)
    return float(np.mean(table["correct"][first]))


def probe_model(
    model: Any,
    task: Any,
    *,
    suites: str | Sequence[str] | None = None,
    registry: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    n: int = DEFAULT_N,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    depth_fn: DepthFn | None = None,
    store_dir: str | Path | None = None,
    label: str | None = None,
    checkpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_suite: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Collect ``n`` instances with what the suites require, then run them."""
    from anira.registry import default_registry

    start = time.perf_counter()
    registry = registry or default_registry()
    resolved = resolve_suites(parse_suite_names(suites), registry)  # unknown names fail before any work
    policy = getattr(model, "policy", None)
    timing = "planted" if depth_fn is not None else str(getattr(policy, "timing", "unknown"))
    context = SuiteContext(max_iters=int(model.cfg.max_iters), timing=timing, seed=seed, model=model, task=task)
    needs = collect_requirements(resolved, context, options)
    table = collect(model, task, n=n, seed=seed, batch_size=batch_size, hidden_sites=needs.hidden_sites,
                    depth_fn=depth_fn, store_dir=store_dir, device=device, progress=progress,
                    meta={"label": label, "checkpoint": checkpoint})
    result = probe_table(table, suites=[s.name for s in resolved], registry=registry, options=options,
                         seed=seed, model=model, task=task, label=label, on_suite=on_suite)
    result.seconds = time.perf_counter() - start
    return result


def probe_checkpoint(path: str | Path, **kwargs: Any) -> ProbeResult:
    """:func:`probe_model` on a checkpoint (or a run directory's latest checkpoint)."""
    from anira.checkpoint import load_checkpoint

    ck = load_checkpoint(path, device=kwargs.pop("device", None) or "cpu")
    label = kwargs.pop("label", None) or Path(path).name
    return probe_model(ck.model, ck.task, label=label, checkpoint=str(ck.path), **kwargs)


def discover_checkpoints(root: str | Path | None = None) -> list[Path]:
    """Every subdirectory of the bundled ``checkpoints/`` holding a ``config.json``
    (sorted by name). ``root`` defaults to ``./checkpoints`` when it exists, else
    the ``checkpoints/`` next to this package's repository."""
    if root is None:
        here = Path.cwd() / CHECKPOINTS_DIR
        repo = Path(__file__).resolve().parent.parent / CHECKPOINTS_DIR
        root = here if here.is_dir() else repo
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file())
