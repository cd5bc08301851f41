"""Validate attributions the way the field does: the linear datamodeling score (LDS).

Leave-one-out on the top K checks a handful of scores; LDS checks every score at once (TRAK, Park
et al. 2023; the protocol dattri uses). Retrain the model on S random subsets that hold a fraction
(half) of the training points, and record each test point's loss under each. For a test point,
predict each subset's loss as the sum of the attributions of the points it holds, and take the
Spearman correlation between predicted and actual over the S subsets; LDS is the mean over test
points.

Our attribution of training point i to test point t is I_up,loss(z_i, z_t) = -g_t^T (H + lambda)^-1
g_i: up-weighting z_i by eps changes the test loss by eps times it, so a subset's predicted loss
is, up to a constant that Spearman ignores, the sum over the points it holds.

The retrains do not depend on the solver or the damping, only the attributions do: a damping
sweep (`dampings`) retrains once and scores every damping against the same ground truth, and picks
the one with the best LDS.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from auditor.analyses.base import Progress, no_progress
from auditor.analyses.fitting import fit_model
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.analyses.validate import split_holdout
from auditor.analyses.validate_settings import LDSConfig
from auditor.data.base import Examples, check_test_set
from auditor.errors import DataError


@dataclass
class LDSReport:
    lds: float  # mean over test points (of the chosen damping, with a sweep)
    per_test: list[float]
    test_indices: list[int]
    subsets: int
    fraction: float
    solver: str
    model: str
    damping: float
    seconds_attribution: float
    seconds_retraining: float
    sweep: list[dict] | None = None  # [{"damping": d, "lds": mean}] in the order given
    metric: str = "lds"

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["per_test"] = [None if not math.isfinite(v) else v for v in self.per_test]
        return doc


def subset_masks(n: int, subsets: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """(subsets, n) booleans, each row holding round(fraction * n) points, drawn without
    replacement from a generator seeded with `seed`: the same call gives the same subsets."""
    if not 0 < fraction < 1:
        raise DataError(f"the subset fraction must be between 0 and 1, got {fraction}")
    size = int(round(fraction * n))
    if not 0 < size < n:
        raise DataError(f"{n} training points are too few for subsets of {fraction:g} of them")
    rng = np.random.default_rng(seed)
    masks = np.zeros((subsets, n), dtype=bool)
    for j in range(subsets):
        masks[j, rng.choice(n, size, replace=False)] = True
    return masks


def lds_per_test(attributions: np.ndarray, masks: np.ndarray, outcomes: np.ndarray) -> np.ndarray:
    """Spearman over subsets between predicted (the sum of the attributions a subset holds) and
    actual outcomes, per test point: attributions (n, M), masks (S, n), outcomes (S, M) -> (M,).
    A test point whose outcome does not vary over the subsets gets NaN."""
    predicted = masks.astype(np.float64) @ np.asarray(attributions, dtype=np.float64)  # (S, M)
    out = np.full(predicted.shape[1], np.nan)
    for t in range(predicted.shape[1]):
        if np.ptp(outcomes[:, t]) > 0 and np.ptp(predicted[:, t]) > 0:
            out[t] = spearmanr(predicted[:, t], outcomes[:, t])[0]
    return out


def sweep(
    attributions: list[np.ndarray], masks: np.ndarray, outcomes: np.ndarray
) -> tuple[list[np.ndarray], list[float], int]:
    """LDS of each candidate's attributions against the same retrains: (per-test scores of each,
    their means, the index of the best mean). NaN means (no test point varies) never win."""
    scores = [lds_per_test(a, masks, outcomes) for a in attributions]
    means = [float(np.nanmean(s)) if np.isfinite(s).any() else math.nan for s in scores]
    finite = [m if math.isfinite(m) else -math.inf for m in means]
    return scores, means, int(np.argmax(finite))


def subset_outcomes(
    train_set: Examples,
    x_test: np.ndarray,
    y_test: np.ndarray,
    model: ModelSpec,
    masks: np.ndarray,
    num_classes: int,
    progress: Progress = no_progress,
) -> np.ndarray:
    """(S, M) test losses of the model retrained, with the audit's own recipe and seed, on each
    subset: the ground truth."""
    out = np.empty((masks.shape[0], len(y_test)))
    start = time.monotonic()
    for j, mask in enumerate(masks):
        done = time.monotonic() - start
        eta = f", about {done / j * (len(masks) - j):.0f} s left" if j else ""
        progress(j / len(masks), f"retraining on subset {j + 1}/{len(masks)}{eta}")
        out[j] = retrained_losses(train_set, np.flatnonzero(mask), x_test, y_test, model, num_classes)
    progress(1.0, "retrained")
    return out


def retrained_losses(
    train_set: Examples, rows: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, model: ModelSpec, num_classes: int
) -> np.ndarray:
    """The test losses (M,) of the model retrained, with its own recipe and seed, on `rows` of
    the training set: one subset's ground truth, here or on a worker (`auditor.lds_jobs`)."""
    fitted = fit_model(train_set.subset(rows), model, num_classes=num_classes).as_float64()
    x = fitted.tensor(x_test)
    y = torch.as_tensor(np.asarray(y_test), dtype=torch.long, device=fitted.device)
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(fitted.module(x), y, reduction="none").cpu().numpy()


# The retrains, done elsewhere: (subset masks (S, n), test rows, number of classes, progress) ->
# (S, M) test losses. `workers.dispatch.lds_on_workers` sends one task per subset.
OutcomesFn = Callable[[np.ndarray, np.ndarray, int, Progress], np.ndarray]


def split_for_lds(train_set: Examples, test_set: Examples | None, cfg: LDSConfig) -> tuple[Examples, Examples]:
    """The training and test sets an LDS run uses (a seeded hold-out when no test set is given),
    the same wherever it is recomputed (a worker retraining one subset)."""
    if test_set is None:
        return split_holdout(train_set, cfg.holdout, cfg.seed)
    return train_set, test_set


def test_rows(test_set: Examples, cfg: LDSConfig) -> np.ndarray:
    """The test points scored: a seeded choice of `cfg.test_points` rows."""
    return np.sort(np.random.default_rng(cfg.seed).permutation(len(test_set))[: cfg.test_points])


def validate_lds(
    train_set: Examples,
    test_set: Examples | None,
    cfg: LDSConfig,
    progress: Progress = no_progress,
    outcomes_fn: OutcomesFn | None = None,
) -> LDSReport:
    """LDS of `cfg.solver`'s attributions (or of each damping in `cfg.dampings`) against
    `cfg.subsets` retrains on random subsets; see the module docstring. The retrains run here
    unless `outcomes_fn` runs them elsewhere."""
    cfg.check()
    train_set, test_set = split_for_lds(train_set, test_set, cfg)
    check_test_set(train_set, test_set, labels=False)  # labels: k covers both sets here
    k = max(train_set.num_classes, test_set.num_classes)
    progress(0.01, "training the model on all points")
    fitted = fit_model(train_set, cfg.model, num_classes=k).as_float64()
    rows = test_rows(test_set, cfg)
    x_test = fitted.tensor(test_set.x[rows])
    y_test = torch.as_tensor(test_set.y[rows], dtype=torch.long, device=fitted.device)
    fitted.functional().check_inputs(x_test, y_test)
    dampings = cfg.dampings if cfg.dampings else [cfg.solver.damping]
    started = time.monotonic()
    attributions, solver_name, used = [], cfg.solver.name, []
    for i, damping in enumerate(dampings):
        progress(0.02 + 0.08 * i / len(dampings), f"attributions ({cfg.solver.name}, damping {damping})")
        influence = fitted.influence(SolverSpec(cfg.solver.name, damping, dict(cfg.solver.options)), few_solves=True)
        attributions.append(influence.up_loss(fitted.x, fitted.y, x_test, y_test).cpu().numpy())
        solver_name = influence.solver.name
        used.append(influence.solver.damping)
    seconds_attribution = (time.monotonic() - started) / len(dampings)
    masks = subset_masks(len(train_set), cfg.subsets, cfg.fraction, cfg.seed)
    started = time.monotonic()
    sub = lambda f, m: progress(0.1 + 0.89 * f, m)  # noqa: E731
    if outcomes_fn is None:
        outcomes = subset_outcomes(train_set, test_set.x[rows], test_set.y[rows], cfg.model, masks, k, sub)
    else:
        outcomes = outcomes_fn(masks, rows, k, sub)
    seconds_retraining = time.monotonic() - started
    scores, means, best = sweep(attributions, masks, outcomes)
    progress(1.0, "done")
    return LDSReport(
        lds=means[best],
        per_test=[float(v) for v in scores[best]],
        test_indices=[int(r) for r in rows],
        subsets=cfg.subsets,
        fraction=cfg.fraction,
        solver=solver_name,
        model=cfg.model.name,
        damping=float(used[best]),
        seconds_attribution=seconds_attribution,
        seconds_retraining=seconds_retraining,
        sweep=[{"damping": float(d), "lds": m} for d, m in zip(used, means, strict=True)] if cfg.dampings else None,
    )


def histogram_plot(report: LDSReport, path) -> None:
    """Per-test-point Spearman correlations as a histogram, with the mean marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for v in report.per_test if math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.hist(values, bins=20, range=(-1, 1), color="#4a7ab0")
    ax.axvline(report.lds, color="black", ls="--", lw=1)
    ax.set_xlabel("Spearman over subsets, per test point")
    ax.set_ylabel("test points")
    ax.set_title(f"{report.model}, {report.solver} (damping {report.damping:.3g}): LDS {report.lds:.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
