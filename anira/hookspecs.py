"""Every extension point of anira.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`
whose names match the specs below. Implementations may accept a subset of a
spec's arguments, so specs can grow new arguments without breaking plugins.

Built-in policies and tasks register through these same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("anira")
hookimpl = pluggy.HookimplMarker("anira")


@hookspec
def register_halting_policies(register):
    """Register halting policies.

    Call ``register(policy_class)`` once per policy. ``policy_class`` is a
    subclass of :class:`anira.halting.HaltingPolicy` with a unique ``name``
    (lower-case, e.g. ``"anira-o"``); it is built as
    ``policy_class(model_config, **options)``.
    """


@hookspec
def register_tasks(register):
    """Register tasks.

    Call ``register(task_class)`` once per task. ``task_class`` is a subclass
    of :class:`anira.task.Task` with a unique ``name``; it is built as
    ``task_class(**options)``.
    """


@hookspec
def register_probe_suites(register):
    """Register probe suites.

    Call ``register(suite)`` once per suite, where ``suite`` is an object with
    a unique ``name`` and a ``run(table, context)`` method
    (see :mod:`anira.probes.suites`).
    """
