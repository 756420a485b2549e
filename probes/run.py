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
from anira.probes.options import resolve_options
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
SCHEMA_VERSION = 2  # 2: verdicts by commonality beyond a baseline, selection checks, flags
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

    @property
    def flags(self) -> list[str]:
        """Every suite's flags (selection disagreements, forced shares), as "suite: text"."""
        return [f"{s.name}: {flag}" for s in self.suites if s.status == "ok" for flag in s.data.get("flags", [])]

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
            "verdicts": {s.name: s.data.get("verdict", {}).get("label") for s in self.suites
                         if s.status == "ok" and isinstance(s.data.get("verdict"), dict)},
            "flags": self.flags,
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
    depth_fn: DepthFn | None = None,
) -> ProbeResult:
    """Run suites on an already collected (or stored, or synthetic) table.
    ``depth_fn``: the planted rule the table was collected with, if any (the
    causal suite re-applies it in its interventions)."""
    from anira.registry import default_registry

    start = time.perf_counter()
    registry = registry or default_registry()
    resolved = resolve_suites(parse_suite_names(suites), registry)
    options = resolve_options(resolved, options)
    meta = table.meta
    context = SuiteContext(max_iters=table.max_iters, timing=str(meta.get("timing", "unknown")), seed=seed,
                           model=model, task=task, depth_fn=depth_fn)
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
    depth_rule: str | None = None,
    store_dir: str | Path | None = None,
    label: str | None = None,
    checkpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_suite: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Collect ``n`` instances with what the suites require, then run them.

    ``depth_fn(example) -> depths`` or ``depth_rule`` (a rule in the mini-language
    of :mod:`anira.probes.depth_rules`, e.g. ``"1 + in_degree"``) replaces the
    policy's halting by a planted rule. Suites, options and the rule are all
    checked before any instance is collected."""
    from anira.registry import default_registry

    start = time.perf_counter()
    registry = registry or default_registry()
    resolved = resolve_suites(parse_suite_names(suites), registry)  # unknown names fail before any work
    options = resolve_options(resolved, options)
    check_feature_options(options, task)
    if depth_rule is not None:
        if depth_fn is not None:
            raise AniraError("give depth_fn or depth_rule, not both")
        from anira.probes.depth_rules import compile_rule

        depth_fn = compile_rule(depth_rule, task, int(model.cfg.max_iters), seed=seed)
    policy = getattr(model, "policy", None)
    timing = "planted" if depth_fn is not None else str(getattr(policy, "timing", "unknown"))
    context = SuiteContext(max_iters=int(model.cfg.max_iters), timing=timing, seed=seed, model=model, task=task,
                           depth_fn=depth_fn)
    needs = collect_requirements(resolved, context, options)
    meta = {"label": label, "checkpoint": checkpoint}
    if depth_rule is not None:
        meta["depth_rule"] = depth_rule
    table = collect(model, task, n=n, seed=seed, batch_size=batch_size, hidden_sites=needs.hidden_sites,
                    depth_fn=depth_fn, null_control=needs.null_control, null_permutations=needs.null_permutations,
                    store_dir=store_dir, device=device, progress=progress, meta=meta)
    result = probe_table(table, suites=[s.name for s in resolved], registry=registry, options=options,
                         seed=seed, model=model, task=task, label=label, on_suite=on_suite, depth_fn=depth_fn)
    result.seconds = time.perf_counter() - start
    return result


def check_feature_options(options: dict[str, dict[str, Any]], task: Any) -> None:
    """A ``features`` option naming a feature the task lacks is an error before any work."""
    known = [spec.name for spec in getattr(task, "features", ())]
    for suite, opts in options.items():
        names = opts.get("features")
        if names is None or names in ("auto", "all"):
            continue
        listed = names.split(",") if isinstance(names, str) else list(names)
        for name in (n.strip() for n in listed):
            if name and name not in known:
                raise AniraError(f"option {suite}.features: task {getattr(task, 'name', '?')!r} has no feature "
                                 f"{name!r}; features: {', '.join(known)}")


def probe_checkpoint(path: str | Path, *, policy: str | None = None,
                     policy_options: dict[str, Any] | None = None, **kwargs: Any) -> ProbeResult:
    """:func:`probe_model` on a checkpoint (or a run directory's latest checkpoint).

    ``policy`` swaps a training-free halting policy onto the loaded weights
    (:func:`anira.plugins.policies.exit_criteria.with_policy`, e.g. ``"exit-kl"``
    with ``policy_options={"threshold": 1e-3}``) before probing."""
    from anira.checkpoint import load_checkpoint

    ck = load_checkpoint(path, device=kwargs.pop("device", None) or "cpu", registry=kwargs.get("registry"))
    label = kwargs.pop("label", None) or Path(path).name
    model = ck.model
    if policy is not None:
        model = swap_policy(model, policy, policy_options or {}, kwargs.get("registry"))
        label = f"{label}+{policy}"
    elif policy_options:
        raise AniraError("policy options given without a policy to put on the checkpoint")
    return probe_model(model, ck.task, label=label, checkpoint=str(ck.path), **kwargs)


def parse_policy_options(name: str, options: dict[str, Any], registry: Any = None) -> dict[str, Any]:
    """The options of policy ``name``, strings parsed by the policy's own option types
    (as ``anira train --set policy.x=...`` does); an unknown option is an error."""
    from anira.registry import default_registry
    from anira.training.config import _option_types, parse_value

    registry = registry or default_registry()
    policy_cls = registry.policy(name)
    known = policy_cls.option_names()
    types = _option_types(policy_cls.__init__, ("self", "cfg"))
    parsed = {}
    for key, value in options.items():
        if key not in known:
            raise AniraError(f"unknown option policy.{key} for policy {name!r}; known: {', '.join(known) or 'none'}")
        parsed[key] = parse_value(value, types[key], f"policy.{key}") if isinstance(value, str) else value
    return parsed


def swap_policy(model: Any, name: str, options: dict[str, Any], registry: Any = None) -> Any:
    """``model`` with the parameter-free policy ``name`` (see :func:`parse_policy_options`)."""
    from anira.plugins.policies.exit_criteria import with_policy

    return with_policy(model, name, registry=registry, **parse_policy_options(name, options, registry))


def preflight_checkpoint(path: str | Path, *, registry: Any = None, options: dict[str, dict[str, Any]] | None = None,
                         depth_rule: str | None = None, policy: str | None = None,
                         policy_options: dict[str, Any] | None = None) -> None:
    """Everything about probing ``path`` that can be checked from its config.json alone
    — the task's features named in options, the depth rule, the policy to put on it
    and its options — so a bad value fails before any checkpoint is probed."""
    from anira.checkpoint import read_config
    from anira.config import ModelConfig
    from anira.halting import build_policy
    from anira.registry import default_registry
    from anira.training.config import build_task

    registry = registry or default_registry()
    config = read_config(path)
    task = build_task(registry.task(config["task"]["name"]), config["task"].get("options", {}))
    check_feature_options(options or {}, task)
    model_config = ModelConfig.from_dict(config["model"])
    if depth_rule is not None:
        from anira.probes.depth_rules import compile_rule

        compile_rule(depth_rule, task, int(model_config.max_iters))
    if policy is not None:
        parsed = parse_policy_options(policy, policy_options or {}, registry)
        built = build_policy(registry.policy(policy), model_config, parsed)
        if built.state_dict():
            raise AniraError(f"policy {policy!r} has parameters of its own; train it instead of putting it on "
                             f"a checkpoint (training-free policies: exit-kl, exit-latent, exit-entropy)")
    elif policy_options:
        raise AniraError("--set policy.* given without --policy")


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
