"""What every analysis does first: turn `Examples` + a model spec into a trained model and tensors.

Kept apart from the analyses so that label-check, explain, domain-mismatch, attack and validate
all train (or load) the model the same way, with the same settings recorded in audit params.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from auditor.analyses.base import Progress
from auditor.data.base import Examples
from auditor.errors import DataError
from auditor.influence import FunctionalModel, InfluenceModel, make_solver
from auditor.models import MODEL_NAMES, TrainConfig, build_model, train
from auditor.models.loading import build_user_model, load_weights


@dataclass
class ModelSpec:
    """How to get the model: a built-in name or MODULE:FACTORY, optional weights, training."""

    name: str = "logreg"
    weights: str | None = None
    weight_decay: float = 0.01
    params: str = "all"  # which parameters count: "all" | "last" | comma-separated prefixes
    train: bool = True  # with user weights: train further (False: use them as they are)
    max_iter: int = 2000
    adam_epochs: int = 0
    seed: int = 0
    hidden: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SolverSpec:
    name: str = "direct"
    damping: float = 0.0
    options: dict = field(default_factory=dict)


@dataclass
class Fitted:
    """A trained model with its data as tensors, ready for influence queries."""

    module: nn.Module
    spec: ModelSpec
    x: Tensor
    y: Tensor
    train_info: dict

    def functional(self) -> FunctionalModel:
        which = self.spec.params if self.spec.params in ("all", "last") else self.spec.params.split(",")
        return FunctionalModel.from_module(self.module, which, weight_decay=self.spec.weight_decay)

    def influence(self, solver: SolverSpec) -> InfluenceModel:
        engine = make_solver(solver.name, solver.damping, **solver.options)
        return InfluenceModel(self.functional(), engine).fit(self.x, self.y)

    def tensor(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(x), dtype=next(self.module.parameters()).dtype)

    def predict_proba(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.softmax(self.module(x.to(self.x.dtype)), -1)


def as_tensors(examples: Examples, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    if len(examples) == 0:
        raise DataError(f"dataset {examples.source or ''} has no examples".replace("  ", " "))
    x = torch.as_tensor(np.asarray(examples.x), dtype=dtype)
    y = torch.as_tensor(np.asarray(examples.y), dtype=torch.long)
    return x, y


def fit_model(
    examples: Examples,
    spec: ModelSpec,
    num_classes: int | None = None,
    progress: Progress | None = None,
) -> Fitted:
    """Build (or load) and train the model described by `spec` on `examples`.

    `progress` receives training progress in [0, 1]; callers map it into their own range."""
    k = num_classes or examples.num_classes
    if spec.name in MODEL_NAMES:
        module = build_model(spec.name, examples.x, k, examples.is_image, hidden=spec.hidden, seed=spec.seed)
    else:
        torch.manual_seed(spec.seed)
        module = build_user_model(spec.name, tuple(examples.x.shape[1:]), k).to(torch.float64)
    if spec.weights:
        load_weights(module, spec.weights)
    dtype = next(module.parameters()).dtype
    x, y = as_tensors(examples, dtype)
    fm = FunctionalModel.from_module(module, "all")
    fm.check_inputs(x, y)
    info: dict = {}
    if spec.train:
        info = train(
            module,
            x,
            y,
            TrainConfig(
                weight_decay=spec.weight_decay,
                max_iter=spec.max_iter,
                adam_epochs=spec.adam_epochs,
                seed=spec.seed,
            ),
            progress=progress,
        )
    module.eval()
    return Fitted(module, spec, x, y, info)


@dataclass
class TestSetup:
    """A trained model with fitted curvature and the test set as tensors with their losses:
    the common start of every analysis that asks questions about test predictions."""

    fitted: Fitted
    influence: InfluenceModel
    x_test: Tensor
    y_test: Tensor
    test_loss: Tensor


def fit_for_test(inp, model: ModelSpec, solver: SolverSpec, analysis: str) -> TestSetup:
    """Check the test set, train on `inp.train`, fit the solver, and score the test set."""
    from auditor.analyses.params import require_test_set
    from auditor.influence.grads import example_losses

    train, progress = inp.train, inp.progress
    test = require_test_set(train, inp.test, analysis)
    progress(0.0, "training the model")
    fitted = fit_model(
        train, model, num_classes=train.num_classes, progress=lambda f, m: progress(0.25 * f, m)
    )
    progress(0.25, "fitting the curvature")
    influence = fitted.influence(solver)
    x_test, y_test = as_tensors(test, fitted.x.dtype)
    return TestSetup(fitted, influence, x_test, y_test, example_losses(influence.fm, x_test, y_test))
