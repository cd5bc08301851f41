"""The common start of every analysis that asks questions about test predictions (explain,
domain mismatch, the attack): the test set checked against the training set, the model trained,
the curvature fitted, and the test losses."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from auditor.analyses.base import AnalysisInput
from auditor.analyses.fitting import Fitted, as_tensors, fit_model
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples, check_test_set
from auditor.errors import DataError
from auditor.influence import InfluenceModel
from auditor.influence.grads import example_losses


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
    check_test_set(train, test)
    return test


def fit_for_test(
    inp: AnalysisInput, model: ModelSpec, solver: SolverSpec, analysis: str
) -> TestSetup:
    """Check the test set, train on `inp.train`, fit the solver, and score the test set."""
    train, progress = inp.train, inp.progress
    test = require_test_set(train, inp.test, analysis)
    progress(0.0, "training the model")
    fitted = fit_model(
        train, model, num_classes=train.num_classes, progress=lambda f, m: progress(0.25 * f, m),
        cache=inp.cache, reuse=solver.reuse, lazy_rows=True,
    )  # fmt: skip
    progress(0.25, "fitting the curvature")
    influence = fitted.influence(solver, few_solves=True)
    x_test, y_test = as_tensors(test, fitted.x.dtype, fitted.device)
    return TestSetup(
        fitted, influence, x_test, y_test, example_losses(influence.fm, x_test, y_test)
    )
