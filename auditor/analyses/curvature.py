"""The curvature an analysis uses, fitted once and kept: stored factors are loaded
(`InfluenceModel.from_factors`) when an earlier audit fitted the same ones, else the solver is
fitted and, where it declares storable factors, its factors are stored for the next audit."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import Tensor, nn

from auditor.analyses.artifact_keys import curvature_key
from auditor.analyses.base import FitCache
from auditor.analyses.solver_choice import SolverChoice
from auditor.errors import SolverError
from auditor.influence import InfluenceModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedCurvature:
    influence: InfluenceModel
    reused: bool  # loaded from stored factors instead of fitted
    key: str = ""  # the artifact key, when the factors are kept


def fit_curvature(
    choice: SolverChoice,
    x: Tensor,
    y: Tensor,
    *,
    module: nn.Module,
    data_key: str,
    cache: FitCache | None,
) -> FittedCurvature:
    """The influence model of `choice` on the training rows (x, y): loaded from `cache` when the
    same factors are stored there (same weights, counted parameters, solver settings and data),
    else fitted and, when the solver declares `storable_factors`, stored. Without a cache or a
    data key everything is fitted."""
    engine, fm = choice.engine, choice.fm
    if cache is None or not data_key or not engine.capabilities.storable_factors:
        return FittedCurvature(InfluenceModel(fm, engine).fit(x, y), reused=False)
    n = int(x.shape[0])
    key = curvature_key(
        module, fm.names, choice.spec.name, choice.options, choice.spec.damping,
        engine.prefer_undamped, fm.weight_decay, data_key, n, fm.dtype,
    )  # fmt: skip
    stored = _load(cache, key, choice, n)
    if stored is not None:
        return FittedCurvature(stored, reused=True, key=key)
    inf = InfluenceModel(fm, engine).fit(x, y)
    cache.save("curvature", key, *inf.factors())
    return FittedCurvature(inf, reused=False, key=key)


def _load(cache: FitCache, key: str, choice: SolverChoice, n: int) -> InfluenceModel | None:
    """The stored factors under `key` as an influence model; None (fit instead) when there are
    none or they do not fit."""
    stored = cache.load("curvature", key)
    if stored is None:
        return None
    tensors, meta = stored
    try:
        return InfluenceModel.from_factors(choice.fm, choice.engine, tensors, meta, n=n)
    except (SolverError, KeyError, TypeError, ValueError) as exc:
        log.warning("stored curvature %s is unusable (%s); fitting it again", key[:12], exc)
        return None


def coverage(module: nn.Module, counted: list[str]) -> dict:
    """Which parameters the curvature covers and how the rest are treated (for the summary)."""
    sizes = {n: p.numel() for n, p in module.named_parameters()}
    fixed = [n for n in sizes if n not in set(counted)]
    doc = {
        "counted": sum(sizes[n] for n in counted),
        "total": sum(sizes.values()),
        "counted_tensors": len(counted),
    }
    if fixed:
        doc["held_fixed"] = (
            fixed if len(fixed) <= 12 else fixed[:12] + [f"... {len(fixed) - 12} more"]
        )
        doc["held_fixed_note"] = (
            "held at their trained values: influence is taken with respect to the counted "
            "parameters only (for EK-FAC, the Linear/Conv2d weights; BatchNorm and other "
            "parameters are fixed)"
        )
    return doc
