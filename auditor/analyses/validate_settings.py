"""The settings of `validate`, declared once like an audit kind's (`auditor.analyses.registry`):
each field carries its default, help text and check (`setting(...)`), and `auditor validate`'s
options are generated from these declarations (`auditor.cli.audit_options.with_settings_options`).

A value is judged in one place, the declared check (`settings.check_value`): when the CLI's
options are parsed, and again by `check()` when a script builds a config in code. The rules that
tie settings together (`LDSConfig.check`, `parse_validate`) are methods and functions here.

Light on purpose (no torch): `auditor --help` imports it to build the options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor.analyses.settings import (
    POSITIVE_INT,
    Check,
    Declared,
    ModelSpec,
    SolverSpec,
    between,
    parse_settings,
    parse_specs,
    setting,
)
from auditor.errors import DataError, ModelError

METRICS = ("loo", "lds")
MIN_SUBSETS = 3  # a Spearman correlation over fewer points means nothing
DEFAULT_SWEEP = "0,0.0001,0.001,0.01,0.1,1"

DAMPINGS = Check(lambda v: bool(v) and all(0 <= d < float("inf") for d in v), "finite numbers >= 0")


@dataclass
class ValidateOptions(Declared):
    """What `validate` measures: `loo` (`ValidationConfig`) or `lds` (`LDSConfig`)."""

    metric: str = setting(
        "loo", "loo: leave-one-out on the top K | lds: linear datamodeling score", choices=METRICS
    )


@dataclass
class ValidationConfig(Declared):
    """Leave-one-out validation (`auditor.analyses.validate`)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    test_index: int | None = setting(
        None, "loo: test point to explain (default: a misclassified one)"
    )
    retrains: int = setting(
        30,
        "loo: how many leave-one-out retrains (the K most influential points)",
        check=POSITIVE_INT,
    )
    holdout: float = setting(
        0.2, "Test fraction held out when no test set is given", check=between(0, 1), cli=False
    )
    seed: int = setting(0, "Seed of the hold-out split", cli=False)


@dataclass
class LDSConfig(Declared):
    """The linear datamodeling score (`auditor.analyses.lds`)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    subsets: int = setting(
        50,
        "lds: retrains on random half-subsets",
        check=Check(lambda v: v >= MIN_SUBSETS, f"at least {MIN_SUBSETS}"),
    )
    test_points: int = setting(
        50, "lds: test points scored", check=Check(lambda v: v >= 1, "at least 1")
    )
    sweep_damping: bool = setting(
        False,
        f"lds: score each damping of --dampings (default {DEFAULT_SWEEP}) on the same retrains and pick the best",
        negatable=False,
    )
    dampings: list[float] | None = setting(
        None, "lds: comma-separated dampings to sweep (implies --sweep-damping)", check=DAMPINGS
    )
    fraction: float = setting(
        0.5, "Fraction of the training points each subset holds", check=between(0, 1), cli=False
    )
    seed: int = setting(0, "Seed of the subsets, the test points and the hold-out split", cli=False)
    holdout: float = setting(
        0.2, "Test fraction held out when no test set is given", check=between(0, 1), cli=False
    )

    def __post_init__(self) -> None:
        if self.sweep_damping and self.dampings is None:
            self.dampings = [float(v) for v in DEFAULT_SWEEP.split(",")]

    def check(self) -> None:
        """One-line refusals of what LDS cannot measure, before any work: the declared checks,
        and a model auditor can retrain."""
        super().check()
        if not self.model.train:
            raise ModelError(
                "LDS retrains the model on subsets: it needs a model auditor trains (drop --no-train)"
            )


VALIDATE_SETTINGS: tuple[type, ...] = (ValidateOptions, ValidationConfig, LDSConfig)


def parse_validate(params: Mapping[str, Any]) -> tuple[str, ValidationConfig | LDSConfig]:
    """The metric and its config from `validate`'s option values (keyed as the CLI passes them:
    model and solver nested as `registry.spec_params` builds them, the rest flat), every value
    checked by its declaration. The seed of the split and subsets is the model's."""
    metric = ValidateOptions.from_params(params).metric
    model, _ = parse_specs(params)
    cls = LDSConfig if metric == "lds" else ValidationConfig
    if metric != "lds" and (params.get("sweep_damping") or params.get("dampings") is not None):
        parse_settings(LDSConfig, params)  # a bad value is still reported as itself first
        raise DataError("--sweep-damping and --dampings need --metric lds")
    cfg = parse_settings(cls, {**params, "seed": model.seed})
    cfg.check()
    return metric, cfg
