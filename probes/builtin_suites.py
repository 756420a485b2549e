"""The built-in probe suites, registered through the same hook third-party plugins use.

Suites are registered as :class:`LazySuite` handles: building the registry
(which every CLI command does) must not import scikit-learn; the suite's
module is imported the first time the suite is asked for its requirements.
A test checks that each handle's name and description match its class.
"""

from __future__ import annotations

import importlib
from typing import Any

from anira.hookspecs import hookimpl


class LazySuite:
    """A registered suite whose implementation (``"module:Class"``) loads on first use."""

    def __init__(self, name: str, description: str, target: str) -> None:
        self.name = name
        self.description = description
        self.target = target
        self._impl: Any = None

    def load(self) -> Any:
        if self._impl is None:
            module, _, cls = self.target.partition(":")
            self._impl = getattr(importlib.import_module(module), cls)()
        return self._impl

    @property
    def options(self) -> Any:
        """The implementation's declared options (loads it)."""
        return getattr(self.load(), "options", None)

    def requires(self, context: Any) -> Any:
        return self.load().requires(context)

    def run(self, table: Any, context: Any) -> Any:
        return self.load().run(table, context)

    def __repr__(self) -> str:
        return f"LazySuite({self.name!r} -> {self.target})"


#: (name, description, implementation) of the built-in suites, in report order
BUILTIN_SUITES: tuple[tuple[str, str, str], ...] = (
    ("attribution",
     "paper's regression of expected depth on features: ΔR² per feature and kind, size-controlled refit",
     "anira.probes.attribution:AttributionSuite"),
    ("decision",
     "logistic probes of the halting decision (GroupKFold by instance) and the static/execution verdict",
     "anira.probes.decision:DecisionSuite"),
    ("representation",
     "linear probes from hidden states at each iteration to each feature (running tokens), "
     "Hewitt–Liang control tasks and selectivity",
     "anira.probes.representation:RepresentationSuite"),
    ("causal",
     "project a feature's probe direction out of running tokens' states at iteration t; "
     "change in exit depth and accuracy vs random directions",
     "anira.probes.causal:CausalSuite"),
    ("alignment",
     "paper's LANO alignment table: Spearman ρ of expected depth with each task feature, "
     "bootstrap interval over instances",
     "anira.probes.alignment:AlignmentSuite"),
)


@hookimpl
def register_probe_suites(register):
    for name, description, target in BUILTIN_SUITES:
        register(LazySuite(name, description, target))
