"""The built-in probe suites, registered through the same hook third-party plugins use.

Each suite module is imported inside the hook so a slow import never runs
unless suites are actually resolved.
"""

from __future__ import annotations

from anira.hookspecs import hookimpl


@hookimpl
def register_probe_suites(register):
    from anira.probes.attribution import AttributionSuite
    from anira.probes.decision import DecisionSuite

    register(AttributionSuite())
    register(DecisionSuite())
