"""Training: configuration, the loop, data streams and periodic evaluation."""

from anira.training.config import RunSpec, TrainConfig, apply_overrides
from anira.training.loop import Callback, Trainer, TrainResult, train

__all__ = ["Callback", "RunSpec", "TrainConfig", "TrainResult", "Trainer", "apply_overrides", "train"]
