"""`validate --metric lds` as a service (`measure_lds`: measure, and record a swept damping for
later audits), and one LDS retrain as a self-contained job, for a worker: the library behind the
Celery task `auditor.lds_retrain` (workers/tasks.py), which `validate --metric lds` sends once
per subset when a broker is configured.

The job names the data by reference (a registered dataset or a path both machines see) and
repeats the run's seed, so the worker recomputes the same split and test rows; it carries the
subset's row indices and the model settings, and returns the test losses after retraining.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor.analyses.lds import (
    LDSConfig,
    LDSReport,
    OutcomesFn,
    retrained_losses,
    split_for_lds,
    validate_lds,
)
from auditor.analyses.registry import check_request
from auditor.analyses.settings import parse_specs
from auditor.config import Settings
from auditor.dampings import record
from auditor.data.base import Examples
from auditor.factories import listed_factories, local_models
from auditor.progress import Progress
from auditor.resolve import resolve_examples


def measure_lds(
    train: Examples,
    test: Examples | None,
    cfg: LDSConfig,
    dataset_ref: str,
    progress: Progress,
    *,
    settings: Settings,
    outcomes_fn: OutcomesFn | None = None,
) -> LDSReport:
    """The LDS of `cfg` on this data (the `LDSReport`), the influence computed here, for the
    person who asked (an explicit MODULE:FACTORY is their code), and the retrains too unless
    `outcomes_fn` sends them to workers, which build registered factories only (`settings`
    list them): that is refused before any work, as for `audit enqueue`. A damping sweep's choice
    is recorded under `dataset_ref` in `settings.home` (`auditor.dampings`), for later audits of
    the same model on the same data."""
    with listed_factories(settings.model_factories):
        if outcomes_fn is not None:
            check_request("label-check", {"model": cfg.model.to_dict()}, None, local=False)
        with local_models():
            report = validate_lds(train, test, cfg, progress, outcomes_fn=outcomes_fn)
    if report.sweep:
        record(dataset_ref, cfg.model.to_dict(), report.damping, report.lds, report.solver, home=settings.home)
    return report


def job(dataset: str, test: str | None, cfg: LDSConfig) -> dict[str, Any]:
    """The part of every subset's job that does not change (the sender adds the test rows and
    the number of classes, which the run decides)."""
    return {"dataset": dataset, "test": test, "holdout": cfg.holdout, "seed": cfg.seed, "model": cfg.model.to_dict()}


def subset_losses(doc: dict[str, Any], subset: list[int], settings: Settings) -> list[float]:
    """Retrain on the rows `subset` of the training set `doc` describes; the test losses.
    `settings` say how the data are read and which model factories are registered."""
    model, _ = parse_specs({"model": doc["model"]})
    cfg = LDSConfig(model=model, holdout=float(doc["holdout"]), seed=int(doc["seed"]))
    train_set, test_set = split_for_lds(
        resolve_examples(doc["dataset"], settings),
        resolve_examples(doc["test"], settings) if doc["test"] else None,
        cfg,
    )
    rows = np.asarray(doc["test_rows"], dtype=np.int64)
    subset_rows = np.asarray(subset, dtype=np.int64)
    with listed_factories(settings.model_factories):
        losses = retrained_losses(train_set, subset_rows, test_set.x[rows], test_set.y[rows], model, doc["classes"])
    return losses.tolist()
