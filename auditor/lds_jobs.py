"""One LDS retrain as a self-contained job, for a worker: the library behind the Celery task
`auditor.lds_retrain` (workers/tasks.py), which `validate --metric lds` sends once per subset
when a broker is configured.

The job names the data by reference (a registered dataset or a path both machines see) and
repeats the run's seed, so the worker recomputes the same split and test rows; it carries the
subset's row indices and the model settings, and returns the test losses after retraining.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from auditor.analyses.lds import LDSConfig, split_for_lds
from auditor.analyses.settings import ModelSpec, parse_specs
from auditor.errors import DataError
from auditor.resolve import resolve_examples


def job(dataset: str, test: str | None, cfg: LDSConfig, rows: np.ndarray, classes: int) -> dict[str, Any]:
    """The part of every subset's job that does not change."""
    return {
        "dataset": dataset,
        "test": test,
        "holdout": cfg.holdout,
        "seed": cfg.seed,
        "model": cfg.model.to_dict(),
        "test_rows": [int(r) for r in rows],
        "classes": int(classes),
    }


def subset_losses(doc: dict[str, Any], subset: list[int]) -> list[float]:
    """Retrain on the rows `subset` of the training set `doc` describes; the test losses."""
    from auditor.analyses.common import fit_model

    model, _ = parse_specs({"model": doc["model"]})
    if not isinstance(model, ModelSpec):  # pragma: no cover - parse_specs returns ModelSpec
        raise DataError("bad model settings in an LDS job")
    cfg = LDSConfig(model=model, holdout=float(doc["holdout"]), seed=int(doc["seed"]))
    train_set, test_set = split_for_lds(
        resolve_examples(doc["dataset"]), resolve_examples(doc["test"]) if doc["test"] else None, cfg
    )
    rows = np.asarray(doc["test_rows"], dtype=np.int64)
    fitted = fit_model(train_set.subset(np.asarray(subset, dtype=np.int64)), model, num_classes=doc["classes"]).as_float64()
    x = fitted.tensor(test_set.x[rows])
    y = torch.as_tensor(test_set.y[rows], dtype=torch.long, device=fitted.device)
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(fitted.module(x), y, reduction="none").cpu().tolist()
