"""Audit params -> typed settings, shared by every analysis.

Params arrive as the JSON an audit row stores: nested ({"model": {...}, "solver": {...}}) when
built by the CLI, flat ({"model": "logreg", "damping": 0.01}) when written by hand or by older
schedules. Every bad value is a one-line `AuditorError` naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from auditor.analyses.base import Progress
from auditor.analyses.common import ModelSpec, SolverSpec
from auditor.data.base import Examples
from auditor.errors import AuditorError, DataError

# ModelSpec fields that may also be given as flat top-level params (CLI options). "name" comes
# from params["model"] as a string; "train" and "params" are left out on purpose: at the top level
# those names are too likely to mean something else (a dataset, the audit's params).
_FLAT_MODEL_KEYS = tuple(
    f.name for f in fields(ModelSpec) if f.name not in ("name", "train", "params")
)


def parse_specs(params: Mapping[str, Any]) -> tuple[ModelSpec, SolverSpec]:
    """ModelSpec and SolverSpec from audit params, nested or flat.

    Accepts {"model": {...ModelSpec fields}, "solver": {...SolverSpec fields}} as well as the flat
    form the CLI records: {"model": "logreg", "weights": ..., "solver": "cg", "damping": 0.01}.
    """
    model = _spec_kwargs(params.get("model"), "name", "model")
    for key in _FLAT_MODEL_KEYS:
        if key in params and key not in model:
            model[key] = params[key]
    solver = _spec_kwargs(params.get("solver"), "name", "solver")
    if "damping" in params and "damping" not in solver:
        solver["damping"] = params["damping"]
    if "solver_options" in params and "options" not in solver:
        solver["options"] = params["solver_options"]
    try:
        model_spec, solver_spec = ModelSpec(**model), SolverSpec(**solver)
        solver_spec.damping = float(solver_spec.damping)
    except (TypeError, ValueError) as exc:
        raise AuditorError(f"bad model or solver setting: {exc}") from None
    return model_spec, solver_spec


def _spec_kwargs(value: Any, name_key: str, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {name_key: value}
    if isinstance(value, Mapping):
        return dict(value)
    raise AuditorError(f"{what} must be a name or a mapping of settings, got {value!r}")


def positive_int(params: Mapping[str, Any], key: str, default: int) -> int:
    """params[key] as an int >= 1, or a one-line error naming the setting."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AuditorError(f"{key} must be a whole number >= 1, got {value!r}")
    return int(value)


def flag(params: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """params[key] as a bool; JSON strings "true"/"false" too, since CLI values arrive as text."""
    value = params.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, (bool, int, np.integer)) and value in (0, 1):
        return bool(value)
    raise AuditorError(f"{key} must be true or false, got {value!r}")


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


def scaled(progress: Progress, lo: float, hi: float) -> Progress:
    """A progress callback that maps a sub-step's [0, 1] onto [lo, hi] of the whole audit."""

    def report(fraction: float, message: str) -> None:
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    return report


def index_list(params: Mapping[str, Any], key: str) -> list[int] | None:
    """params[key] as a list of row indices (one index or a list), or None when absent."""
    indices = params.get(key)
    if indices is None:
        return None
    if isinstance(indices, (int, str)):
        indices = [indices]
    try:
        return [int(i) for i in indices]
    except (TypeError, ValueError):
        raise AuditorError(f"{key} must be whole numbers, got {indices!r}") from None
