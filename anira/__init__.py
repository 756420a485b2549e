"""anira: probe per-token adaptive computation in recurrent (looped) Transformers.

The public names below load on first use (PEP 562 ``__getattr__``), so that
``import anira`` -- and with it the ``anira`` command's start-up, ``--help`` and
``anira tasks`` -- does not pay for importing torch and TransformerLens.
``from anira import build_model`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "ActivationCache": "anira.cache",
    "AniraError": "anira.errors",
    "PluginError": "anira.errors",
    "HaltingPolicy": "anira.halting",
    "LoopContext": "anira.halting",
    "LossTerms": "anira.objective",
    "MODEL_PRESETS": "anira.config",
    "ModelConfig": "anira.config",
    "preset_config": "anira.config",
    "ModelOutput": "anira.model",
    "RecurrentTransformer": "anira.model",
    "build_model": "anira.model",
    "build_registry": "anira.registry",
    "default_registry": "anira.registry",
    "load": "anira.checkpoint",
    "stack_iterations": "anira.cache",
    "with_policy": "anira.plugins.policies.exit_criteria",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anira' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from anira.cache import ActivationCache, stack_iterations
    from anira.checkpoint import load
    from anira.config import MODEL_PRESETS, ModelConfig, preset_config
    from anira.errors import AniraError, PluginError
    from anira.halting import HaltingPolicy, LoopContext
    from anira.model import ModelOutput, RecurrentTransformer, build_model
    from anira.objective import LossTerms
    from anira.plugins.policies.exit_criteria import with_policy
    from anira.registry import build_registry, default_registry
