"""The names analyses, services and scripts have imported from here, kept where they were.

What was one module is now one module per job: `fitting` (train or load the model: `fit_model`,
`Fitted`), `solver_choice` (`--solver auto` and the solver built from its declared options),
`curvature` (fit the curvature once, or load it as stored), `artifact_keys` (what stored weights
and factors are keyed by) and `testset` (the start of every analysis of test predictions).
New code imports from those.
"""

from __future__ import annotations

from auditor.analyses.fitting import (
    Fitted,
    as_tensors,
    build_module,
    fit_model,
    rows_of,
    train_config,
)
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.analyses.solver_choice import choose_solver
from auditor.analyses.testset import TestSetup, fit_for_test, require_test_set

__all__ = [
    "Fitted",
    "ModelSpec",
    "SolverSpec",
    "TestSetup",
    "as_tensors",
    "build_module",
    "choose_solver",
    "fit_for_test",
    "fit_model",
    "require_test_set",
    "rows_of",
    "train_config",
]
