"""What every analysis does first: turn `Examples` + a model spec into a trained model and tensors.

Kept apart from the analyses so that label-check, explain, domain-mismatch, attack and validate
all train (or load) the model the same way, with the same settings recorded in audit params.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from auditor.analyses.base import AnalysisInput
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples
from auditor.errors import DataError
from auditor.influence import FunctionalModel, InfluenceModel, make_solver
from auditor.influence.grads import example_losses
from auditor.models import MODEL_NAMES, TrainConfig, build_model, train
from auditor.models.loading import build_user_model, load_weights
from auditor.progress import Progress

__all__ = ["Fitted", "ModelSpec", "SolverSpec", "TestSetup", "fit_for_test", "fit_model", "resolve_solver"]


def resolve_solver(spec: SolverSpec, num_params: int, exact_limit: int | None = None) -> SolverSpec:
    """`auto` made concrete, in one place for every analysis: the exact solver up to
    `exact_limit` parameters (no limit: always exact, for analyses that solve for a few test
    points), EK-FAC above it. Any other name is returned as it is."""
    if spec.name != "auto":
        return spec
    exact = exact_limit is None or num_params <= exact_limit
    return SolverSpec("direct" if exact else "ekfac", spec.damping, dict(spec.options))


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

    def influence(self, solver: SolverSpec, exact_limit: int | None = None) -> InfluenceModel:
        fm = self.functional()
        solver = resolve_solver(solver, fm.num_params, exact_limit)
        engine = make_solver(solver.name, solver.damping, **solver.options)
        return InfluenceModel(fm, engine).fit(self.x, self.y)

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


def require_test_set(train: Examples, test: Examples | None, analysis: str) -> Examples:
    """The test set, checked against the training set with one-line errors.

    The model is built from the training set, so a test set of another shape or with labels the
    model cannot output would fail deep inside torch with a message nobody can act on.
    """
    if test is None or len(test) == 0:
        raise DataError(f"{analysis} needs a non-empty test set (--test DATASET)")
    if tuple(test.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise DataError(
            f"test examples have shape {tuple(test.x.shape[1:])} but training examples have "
            f"shape {tuple(train.x.shape[1:])}; use a test set from the same source"
        )
    k = train.num_classes
    if test.y.min() < 0 or test.y.max() >= k:
        bad = int(test.y.min()) if test.y.min() < 0 else int(test.y.max())
        raise DataError(f"test label {bad} is outside the training set's classes 0..{k - 1}")
    return test


def fit_for_test(inp: AnalysisInput, model: ModelSpec, solver: SolverSpec, analysis: str) -> TestSetup:
    """Check the test set, train on `inp.train`, fit the solver, and score the test set."""
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
