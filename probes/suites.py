"""The probe-suite interface and the runner.

A *suite* is a plain object (registered through the ``register_probe_suites``
hook, see :mod:`anira.probes.builtin_suites`) with

* ``name`` (lower-case, unique) and ``description`` (one line);
* ``requires(context) -> Requirements``: what collection must fetch for it
  (hidden-state sites, whether it needs the live model, minimum instances);
* ``run(table, context) -> SuiteResult``: the analysis of one checkpoint's
  per-token table (:class:`anira.probes.table.TokenTable`).

A suite that cannot run on its input raises :class:`anira.errors.AniraError`
with a one-line reason; the runner turns that into a ``skipped`` result so the
other suites (and the report) carry on. Unexpected exceptions from a suite are
caught too and reported as ``error`` with the exception's type and message —
a third-party suite must never take the whole report down.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from anira.errors import AniraError
from anira.probes.options import parse_as

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from anira.probes.table import TokenTable

Status = Literal["ok", "skipped", "error"]
#: ``progress(done, total)`` for long suites (the CLI draws a bar from it).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Requirements:
    """What a suite needs collected before it can run."""

    #: full hook names whose activations must be stored per table row, e.g.
    #: ``"prelude.0.hook_resid_post"`` or ``"loop.3.hook_resid_post"``
    hidden_sites: tuple[str, ...] = ()
    #: the suite re-runs the model (e.g. interventions): ``context.model`` must be set
    needs_model: bool = False
    #: fewest instances the suite can work with (e.g. cross-validation folds)
    min_instances: int = 0
    #: collection also builds the selection null control (``table.null``): every batch
    #: re-run with depths permuted within size (see :mod:`anira.probes.selection`)
    null_control: bool = False
    #: independent permutations the null control draws (``table.nulls``), with ``null_control``
    null_permutations: int = 1


@dataclass
class SuiteContext:
    """What a suite gets besides the table.

    ``model`` and ``task`` are None when a suite runs on a stored or synthetic
    table; suites that need them declare ``Requirements(needs_model=True)``.
    ``options`` holds this suite's options (``--option SUITE.key=value``).
    """

    max_iters: int
    timing: str = "unknown"  # the policy's timing: early | online | fixed | training-free | planted
    seed: int = 0
    model: Any = None
    task: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    #: the planted halting rule the table was collected with (None: the policy's own)
    depth_fn: Any = None

    def option(self, key: str, default: Any) -> Any:
        """An option with a default; the value is coerced to the default's type."""
        if key not in self.options:
            return default
        return coerce_option(key, self.options[key], default)


def coerce_option(key: str, value: Any, default: Any) -> Any:
    """Parse a (possibly string) option value to the type of its default (the same
    parsing as declared options, :func:`anira.probes.options.parse_as`)."""
    if default is None or not isinstance(value, str):
        return value
    try:
        return parse_as(value, default)
    except (ValueError, TypeError):
        raise AniraError(f"option {key!r}: cannot read {value!r} as {type(default).__name__}") from None


@dataclass
class SuiteResult:
    """The outcome of one suite on one checkpoint.

    ``data`` is JSON-able (numbers, strings, lists, dicts; NaN becomes null in
    the JSON); ``headline`` holds a few scalars for the summary table;
    ``figures`` are matplotlib figures for the HTML report (never in the JSON);
    ``notes`` says what was skipped and why; ``html`` optionally replaces the
    report's generic rendering of ``headline`` and ``data``.
    """

    name: str
    status: Status = "ok"
    reason: str = ""  # why it was skipped / what went wrong
    data: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, "Figure"] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    html: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "headline": json_safe(self.headline),
            "data": json_safe(self.data),
            "notes": list(self.notes),
            "figures": sorted(self.figures),
            "seconds": round(self.seconds, 3),
        }


@runtime_checkable
class ProbeSuite(Protocol):
    """What the registry expects of a suite (structural: no base class needed)."""

    name: str
    description: str

    def requires(self, context: SuiteContext) -> Requirements: ...

    def run(self, table: "TokenTable", context: SuiteContext) -> SuiteResult: ...


def check_suite(obj: Any) -> None:
    """Raise a one-line error when ``obj`` does not look like a suite."""
    for attr in ("name", "description", "requires", "run"):
        if not hasattr(obj, attr):
            raise AniraError(f"probe suite {obj!r} lacks {attr!r}")


def json_safe(value: Any) -> Any:
    """Numbers, numpy scalars/arrays, tuples -> plain JSON values; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def resolve_suites(names: Sequence[str] | None, registry: Any) -> list[Any]:
    """Suite objects by name (all registered suites when ``names`` is None).

    An unknown name is an error naming the known ones, raised before any work.
    """
    known = registry.names("suite")
    if names is None:
        names = known
    out = []
    for name in names:
        if name not in known:
            raise AniraError(f"unknown probe suite {name!r}; known: {', '.join(known) or 'none'}")
        suite = registry.suite(name)
        check_suite(suite)
        out.append(suite)
    return out


def collect_requirements(
    suites: Sequence[Any], context: SuiteContext, options: dict[str, dict[str, Any]] | None = None
) -> Requirements:
    """The union of what ``suites`` need (hidden sites in first-requested order; the most
    null draws any suite asks for); ``options[name]`` are each suite's options, which
    may change its needs.

    A suite whose ``requires`` raises :class:`AniraError` (a bad option value,
    e.g. an iteration beyond D) stops everything here, before any collection;
    other exceptions are left for :func:`run_suite` to report."""
    sites: list[str] = []
    needs_model = False
    null_control = False
    null_permutations = 1
    min_instances = 0
    for suite in suites:
        try:
            req = suite.requires(with_options(context, (options or {}).get(suite.name, {})))
        except AniraError as exc:
            raise AniraError(f"suite {suite.name}: {exc}") from None
        except Exception:  # noqa: BLE001 - run_suite calls it again and reports the failure
            continue
        sites.extend(s for s in req.hidden_sites if s not in sites)
        needs_model = needs_model or req.needs_model
        if getattr(req, "null_control", False):
            null_control = True
            null_permutations = max(null_permutations, int(getattr(req, "null_permutations", 1)))
        min_instances = max(min_instances, req.min_instances)
    return Requirements(hidden_sites=tuple(sites), needs_model=needs_model, min_instances=min_instances,
                        null_control=null_control, null_permutations=null_permutations)


def with_options(context: SuiteContext, options: dict[str, Any]) -> SuiteContext:
    """A copy of ``context`` carrying one suite's options."""
    return SuiteContext(max_iters=context.max_iters, timing=context.timing, seed=context.seed,
                        model=context.model, task=context.task, options=dict(options),
                        progress=context.progress, depth_fn=context.depth_fn)


def run_suite(suite: Any, table: "TokenTable", context: SuiteContext) -> SuiteResult:
    """Run one suite, turning its failures into a ``skipped`` / ``error`` result."""
    start = time.perf_counter()
    try:
        req = suite.requires(context)
        if req.needs_model and context.model is None:
            raise AniraError("needs the model (run it on a checkpoint, not on a stored table)")
        if table.n_instances < req.min_instances:
            raise AniraError(
                f"needs at least {req.min_instances} instances, the table has {table.n_instances} (raise --n)"
            )
        missing = [s for s in req.hidden_sites if s not in table.hidden_sites]
        if missing:
            raise AniraError(f"the table lacks hidden states at {missing[0]!r} (collect them first)")
        result = suite.run(table, context)
        if not isinstance(result, SuiteResult):
            raise AniraError(f"returned {type(result).__name__}, expected SuiteResult")
    except AniraError as exc:
        result = SuiteResult(name=suite.name, status="skipped", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken suite is reported, the others still run
        result = SuiteResult(name=suite.name, status="error", reason=f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - start
    return result


def run_suites(
    suites: Sequence[Any],
    table: "TokenTable",
    context: SuiteContext,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    on_suite: Callable[[str], None] | None = None,
) -> list[SuiteResult]:
    """Run every suite on ``table``; ``options[suite_name]`` become that suite's
    ``context.options``. ``on_suite(name)`` is called before each (progress)."""
    options = options or {}
    results = []
    for suite in suites:
        if on_suite is not None:
            on_suite(suite.name)
        ctx = with_options(context, options.get(suite.name, {}))
        results.append(run_suite(suite, table, ctx))
    return results
