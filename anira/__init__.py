"""anira: probe per-token adaptive computation in recurrent (looped) Transformers."""

from anira.cache import ActivationCache, stack_iterations
from anira.checkpoint import load
from anira.config import MODEL_PRESETS, ModelConfig, preset_config
from anira.errors import AniraError, PluginError
from anira.halting import HaltingPolicy, LoopContext
from anira.model import ModelOutput, RecurrentTransformer, build_model
from anira.registry import build_registry, default_registry

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "AniraError",
    "HaltingPolicy",
    "LoopContext",
    "MODEL_PRESETS",
    "ModelConfig",
    "ModelOutput",
    "PluginError",
    "RecurrentTransformer",
    "build_model",
    "build_registry",
    "default_registry",
    "load",
    "preset_config",
    "stack_iterations",
]
