"""The plugin manager and the registry of policies, tasks and probe suites.

The manager is built by a function (never at import time) so every caller and
every test can get a fresh one. Built-in plugins load first, through the same
hooks third-party plugins use; then the ``anira`` entry-point group. Each
plugin's hook is called on its own, so one broken plugin is reported by name
and never takes the others down. Plugins are resolved once into plain
:class:`Registration` objects: nothing calls pluggy inside the model.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pluggy

from anira import hookspecs
from anira.errors import AniraError

ENTRY_POINT_GROUP = "anira"
LOAD_PLUGINS_ENV = "ANIRA_LOAD_PLUGINS"

#: Modules holding the built-in plugins, registered in this order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "anira.plugins.policies.fixed",
    "anira.plugins.policies.anira_e",
    "anira.plugins.policies.anira_o",
    "anira.plugins.policies.pattern",
    "anira.plugins.policies.mor_token",
    "anira.plugins.policies.mor_expert",
    "anira.plugins.policies.act",
    "anira.plugins.policies.pondernet",
    "anira.plugins.policies.exit_criteria",
    "anira.plugins.policies.oracle",
    "anira.plugins.tasks.mano",
    "anira.plugins.tasks.brevo",
    "anira.plugins.tasks.depo",
    "anira.plugins.tasks.lano",
    "anira.probes.builtin_suites",
)

#: what each built-in module registers: a command that needs only tasks
#: (``anira tasks``) skips the policy modules, which import torch
_BUILTIN_KIND = {name: ("task" if ".tasks." in name else "suite" if ".probes." in name else "policy")
                 for name in BUILTIN_PLUGINS}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

# kind of registration -> hook that provides it
_HOOKS = {
    "policy": "register_halting_policies",
    "task": "register_tasks",
    "suite": "register_probe_suites",
}


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered."""

    kind: str  # "policy" | "task" | "suite"
    name: str
    obj: Any
    plugin: str  # name of the plugin that provided it


@dataclass
class Registry:
    """Everything the loaded plugins registered, keyed by kind and name."""

    entries: dict[str, dict[str, Registration]] = field(
        default_factory=lambda: {kind: {} for kind in _HOOKS}
    )
    #: one line per plugin problem (failed import, failing hook, duplicate name)
    problems: list[str] = field(default_factory=list)
    #: names of the plugins that loaded, built-ins first
    plugins: list[str] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Any:
        table = self.entries[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            # a plugin that failed to load may be what should have provided it
            failed = f"; plugins that failed to load: {' | '.join(self.problems)}" if self.problems else ""
            raise AniraError(f"unknown {kind} {name!r}; known: {known}{failed}")
        return table[name].obj

    def policy(self, name: str) -> Any:
        return self.get("policy", name)

    def task(self, name: str) -> Any:
        return self.get("task", name)

    def suite(self, name: str) -> Any:
        return self.get("suite", name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def rows(self) -> list[Registration]:
        return [r for kind in _HOOKS for r in sorted(self.entries[kind].values(), key=lambda r: r.name)]


def _allowed_external() -> set[str] | None:
    """Names allowed by ANIRA_LOAD_PLUGINS (None: no restriction)."""
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def build_plugin_manager(
    *, load_entry_points: bool = True, extra_plugins: tuple[Any, ...] = (), kinds: tuple[str, ...] | None = None
) -> tuple[pluggy.PluginManager, list[str]]:
    """Build a fresh plugin manager: built-ins, ``extra_plugins``, then entry points.

    Returns the manager and a list of one-line problems met while loading.
    ``kinds`` (e.g. ``("task",)``) loads only the built-in modules providing
    those kinds; third-party plugins always load, since what they provide is
    known only once they are imported.
    ``ANIRA_LOAD_PLUGINS=a,b`` restricts third-party loading to those entry-point
    names (an empty value loads none); built-ins always load.
    """
    pm = pluggy.PluginManager("anira")
    pm.add_hookspecs(hookspecs)
    problems: list[str] = []
    for module_name in BUILTIN_PLUGINS:
        if kinds is not None and _BUILTIN_KIND[module_name] not in kinds:
            continue
        module = importlib.import_module(module_name)  # a broken built-in is our bug: let it raise
        pm.register(module, name=module_name)
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=name)
    if load_entry_points:
        allowed = _allowed_external()
        seen = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            seen.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported
                problems.append(f"plugin {ep.name!r} failed to import: {type(exc).__name__}: {exc}")
                continue
            try:
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - e.g. a hook that matches no spec
                problems.append(f"plugin {ep.name!r} could not be registered: {type(exc).__name__}: {exc}")
        if allowed is not None:
            for missing in sorted(allowed - seen):
                problems.append(f"plugin {missing!r} named in {LOAD_PLUGINS_ENV} is not installed")
    return pm, problems


def _validate(kind: str, obj: Any) -> str:
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise AniraError(f"{kind} {obj!r} has no valid lower-case `name` attribute (got {name!r})")
    return name


def build_registry(
    *, load_entry_points: bool = True, extra_plugins: tuple[Any, ...] = (), kinds: tuple[str, ...] | None = None
) -> Registry:
    """Load every plugin and resolve what it registers into a :class:`Registry`.

    With ``kinds`` only those kinds are resolved (the others stay empty), and
    built-in modules providing other kinds are not imported.
    """
    unknown = set(kinds or ()) - set(_HOOKS)
    if unknown:
        raise AniraError(f"unknown registration kind(s) {sorted(unknown)}; known: {', '.join(_HOOKS)}")
    pm, problems = build_plugin_manager(load_entry_points=load_entry_points, extra_plugins=extra_plugins,
                                        kinds=kinds)
    registry = Registry(problems=list(problems))
    registry.plugins = [pm.get_name(p) for p in pm.get_plugins()]
    for kind, hook_name in _HOOKS.items():
        if kinds is not None and kind not in kinds:
            continue
        caller = getattr(pm.hook, hook_name)
        # get_hookimpls() is in registration order once priorities are equal:
        # built-ins first, so they win name clashes.
        for impl in caller.get_hookimpls():
            staged: list[tuple[str, Any]] = []

            def register(obj: Any, _staged: list = staged, _kind: str = kind) -> None:
                _staged.append((_validate(_kind, obj), obj))

            try:
                kwargs = {"register": register}
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:  # noqa: BLE001 - the plugin is reported, the rest load
                registry.problems.append(
                    f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                )
                continue
            table = registry.entries[kind]
            for name, obj in staged:
                if name in table:
                    registry.problems.append(
                        f"plugin {impl.plugin_name!r} registers {kind} {name!r} already provided by "
                        f"{table[name].plugin!r}; ignored"
                    )
                    continue
                table[name] = Registration(kind=kind, name=name, obj=obj, plugin=impl.plugin_name)
    return registry


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the current environment, built once per process."""
    return build_registry()
