"""Built-in trainable models, deterministic training, and safe loading of users' models."""

from auditor.models.builtin import MODEL_NAMES, build_model
from auditor.models.train import TrainConfig, train

__all__ = ["MODEL_NAMES", "TrainConfig", "build_model", "train"]
