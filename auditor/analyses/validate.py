"""Validate influence against the ground truth it approximates: leave-one-out retraining.

For a test point (by default a misclassified one, as in the paper's Figure 2), predict the change
in its loss from removing each training point, (1/n) g_test^T (H + lambda I)^-1 g_i, take the K
points with the largest |prediction|, retrain without each (weight 0, n unchanged: exactly the
perturbation the formula describes; warm-started from the trained weights, to convergence), and
correlate predicted with actual changes. This is what every solver is judged by.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from auditor.analyses.base import Progress, no_progress
from auditor.analyses.fitting import Fitted, fit_model
from auditor.analyses.validate_settings import ValidationConfig
from auditor.data.base import Examples, check_test_set
from auditor.errors import DataError
from auditor.influence.grads import example_losses
from auditor.models import TrainConfig, train


@dataclass
class ValidationReport:
    pearson: float
    spearman: float
    retrains: int
    solver: str
    model: str
    damping: float
    test_index: int
    test_label: int
    test_pred: int
    test_loss: float
    train_indices: list[int]
    predicted: list[float]
    actual: list[float]
    solver_info: dict

    def to_json(self) -> dict:
        return asdict(self)


def split_holdout(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Deterministic train/test split for a dataset given without a test set."""
    n = len(examples)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(fraction * n)))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return examples.subset(tr), examples.subset(te)


def choose_test_point(fitted: Fitted, x_test: torch.Tensor, y_test: torch.Tensor) -> int:
    """The misclassified test point with the highest loss (the paper validates on a wrong one)."""
    probs = fitted.predict_proba(x_test)
    wrong = (probs.argmax(1) != y_test).nonzero().flatten()
    losses = -torch.log(probs.gather(1, y_test[:, None])[:, 0].clamp_min(1e-300))
    if len(wrong) == 0:
        return int(losses.argmax())
    return int(wrong[losses[wrong].argmax()])


def retrain_without(fitted: Fitted, index: int, max_iter: int = 2000) -> torch.nn.Module:
    module = copy.deepcopy(fitted.module)
    w = torch.ones(fitted.x.shape[0], dtype=fitted.x.dtype, device=fitted.device)
    w[index] = 0.0
    spec = fitted.spec
    train(module, fitted.x, fitted.y, TrainConfig(weight_decay=spec.l2, max_iter=max_iter, seed=spec.seed, tol=1e-10), sample_weight=w)
    return module


def validate(
    train_set: Examples,
    test_set: Examples | None,
    cfg: ValidationConfig,
    progress: Progress = no_progress,
) -> ValidationReport:
    cfg.check()
    if test_set is None:
        train_set, test_set = split_holdout(train_set, cfg.holdout, cfg.seed)
    check_test_set(train_set, test_set, labels=False)  # labels: k covers both sets here
    k = max(train_set.num_classes, test_set.num_classes)
    progress(0.02, "training model")
    # float64: leave-one-out retraining must converge far below the effects it measures
    fitted = fit_model(
        train_set, cfg.model, num_classes=k, progress=lambda f, m: progress(0.02 + 0.08 * f, m)
    ).as_float64()
    x_test = fitted.tensor(test_set.x)
    y_test = torch.as_tensor(test_set.y, dtype=torch.long, device=fitted.device)
    fitted.functional().check_inputs(x_test, y_test)
    t = choose_test_point(fitted, x_test, y_test) if cfg.test_index is None else cfg.test_index
    if not 0 <= t < len(test_set):
        raise DataError(f"--test-index {t} is out of range for {len(test_set)} test examples")
    xt, yt = x_test[t : t + 1], y_test[t : t + 1]
    progress(0.1, f"fitting {cfg.solver.name} solver")
    influence = fitted.influence(cfg.solver, few_solves=True)
    predicted_all = influence.removal_effect(influence.up_loss(fitted.x, fitted.y, xt, yt))[:, 0]
    K = min(cfg.retrains, len(train_set))
    top = torch.argsort(predicted_all.abs(), descending=True)[:K]
    fm = fitted.functional()
    base_loss = float(example_losses(fm, xt, yt)[0])
    actual = []
    for j, i in enumerate(top.tolist()):
        progress(0.2 + 0.8 * j / K, f"retraining without example {i} ({j + 1}/{K})")
        module = retrain_without(fitted, i)
        with torch.no_grad():
            new_loss = float(torch.nn.functional.cross_entropy(module(xt), yt))
        actual.append(new_loss - base_loss)
    predicted = predicted_all[top].tolist()
    pear = float(pearsonr(predicted, actual)[0]) if K > 2 else math.nan
    spear = float(spearmanr(predicted, actual)[0]) if K > 2 else math.nan
    with torch.no_grad():
        pred_label = int(fitted.module(xt).argmax(1)[0])
    progress(1.0, "done")
    return ValidationReport(
        pearson=pear,
        spearman=spear,
        retrains=K,
        solver=influence.solver.name,
        model=cfg.model.name,
        damping=influence.solver.damping,
        test_index=t,
        test_label=int(yt[0]),
        test_pred=pred_label,
        test_loss=base_loss,
        train_indices=top.tolist(),
        predicted=predicted,
        actual=actual,
        solver_info=fitted.curvature,
    )


def scatter_plot(report: ValidationReport, path: str | Path) -> Path:
    """Predicted vs actual change in test loss, with the y = x line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(report.actual, report.predicted, s=14, alpha=0.8)
    lo = min(min(report.actual), min(report.predicted))
    hi = max(max(report.actual), max(report.predicted))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("actual change in test loss (retrained)")
    ax.set_ylabel("predicted change (influence)")
    ax.set_title(f"{report.model}, {report.solver}: Pearson {report.pearson:.3f}, Spearman {report.spearman:.3f}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
