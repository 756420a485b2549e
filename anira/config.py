"""Model configuration and the named model-size presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from anira.errors import AniraError


def check_fields(cls: type, data: dict[str, Any]) -> None:
    """One-line error naming every key of ``data`` that is not a field of dataclass ``cls``."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise AniraError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a Prelude -> shared core (looped) -> Coda Transformer.

    The core is ``n_core`` consecutive layers that together form ONE iteration;
    the same weights run up to ``max_iters`` (the paper's D) times.
    """

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256  # SwiGLU hidden width
    n_prelude: int = 1  # layers before the loop (the paper: 1)
    n_core: int = 1  # layers inside one iteration (the paper: 1)
    n_coda: int = 1  # layers after the loop (the paper: 1)
    max_iters: int = 6  # D: the most iterations a token can run
    max_len: int = 256  # longest sequence (rotary tables are built for it)
    decider_mult: float = 4.0  # decider FFN width I = decider_mult * d_model (paper: 4, MANO 6.5)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        ints = ("vocab_size", "d_model", "n_heads", "d_ff", "n_prelude", "n_core", "n_coda", "max_iters", "max_len")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AniraError(f"ModelConfig.{name} must be an integer, got {value!r}")
        if self.max_iters < 1:
            raise AniraError(f"ModelConfig.max_iters must be >= 1, got {self.max_iters}")
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_len", "n_core"):
            if getattr(self, name) < 1:
                raise AniraError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_prelude", "n_coda"):
            if getattr(self, name) < 0:
                raise AniraError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise AniraError(f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_head % 2:
            raise AniraError(f"ModelConfig: head width d_model/n_heads = {self.d_head} must be even for rotary positions")
        if self.decider_mult <= 0:
            raise AniraError(f"ModelConfig.decider_mult must be > 0, got {self.decider_mult}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_decider(self) -> int:
        return max(1, round(self.decider_mult * self.d_model))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        check_fields(cls, data)
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        check_fields(type(self), changes)
        return dataclasses.replace(self, **changes)


#: Named model sizes shared by tests, docs and the CLI ("tiny" means the same everywhere).
#: ``vocab_size`` and ``max_len`` come from the task; these give the rest.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: runs in milliseconds
    "test": dict(d_model=32, n_heads=4, d_ff=64, max_iters=4, max_len=64),
    # CPU training in minutes
    "tiny": dict(d_model=64, n_heads=4, d_ff=256, max_iters=6),
    # the bundled reference checkpoints and policy comparisons (GPU minutes)
    "small": dict(d_model=128, n_heads=4, d_ff=512, max_iters=6),
    # the paper's sizes
    "paper": dict(d_model=512, n_heads=8, d_ff=2048, max_iters=6),
    "paper-mano": dict(d_model=256, n_heads=8, d_ff=1664, max_iters=14, decider_mult=6.5),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a named preset, with fields overridden."""
    if name not in MODEL_PRESETS:
        raise AniraError(f"unknown model preset {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}")
    fields = dict(MODEL_PRESETS[name])
    fields.setdefault("vocab_size", 64)
    fields.update(overrides)
    return ModelConfig.from_dict(fields)
