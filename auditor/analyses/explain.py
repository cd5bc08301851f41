"""Explain test predictions by the training points that shaped them (Koh & Liang 2017, 5.1).

For each chosen test point z_test the audit reports the training points with the most negative
I_up,loss(z, z_test) (helpful: up-weighting them lowers the test loss) and the most positive
(harmful), and, for contrast, the nearest training points in input space: the paper's point is
that the points a model relies on are not simply the ones that look alike.

Findings are unique per (audit, example_key, kind) in the store, and one training example can be
helpful for several test points, so the test point is part of the kind: "helpful:t{i}",
"harmful:t{i}" and "neighbour:t{i}" with i the test point's row in the test set (its content key
is in the payload). Every row of the three kinds carries the same payload (`ROW_PAYLOAD`), so a
report can show influence next to distance for any of them.

s_test = H^-1 g_test is computed once for all chosen test points, then every training gradient is
streamed once and dotted with all of them: one pass over the training data in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auditor.analyses.base import AnalysisInput, AnalysisResult, FindingRecord
from auditor.analyses.registry import ExplainConfig
from auditor.analyses.testset import fit_for_test
from auditor.data.base import Examples
from auditor.errors import DataError
from auditor.progress import scaled

# Payload keys of every helpful / harmful / neighbour row (the report and CLI rely on them).
ROW_PAYLOAD = (
    "test_index",
    "test_key",
    "test_label",
    "test_pred",
    "test_loss",
    "influence",
    "predicted_loss_change_if_removed",
    "distance",
    "influence_rank",
    "distance_rank",
    "train_pred",
)

def input_distances(train: Examples, x_rows: np.ndarray) -> Tensor:
    """Euclidean distances (m, n) from `x_rows` to every training input.

    Images in [0, 1] pixel units; features standardised with the training mean and std, so that
    one feature measured in large units does not decide who is "near".
    """
    from auditor.data.lazy import chunks, column_moments

    b = np.asarray(x_rows, dtype=np.float64).reshape(len(x_rows), -1)
    chunk = 2048  # training rows read and converted to float64 at a time: memory does not grow with n
    flat = lambda block: block.reshape(len(block), -1).astype(np.float64)  # noqa: E731
    if train.is_image:
        scale = lambda a: a / 255.0  # noqa: E731
    else:
        mean, std = column_moments(train.x, chunk)
        std[std < 1e-12] = 1.0
        scale = lambda a: (a - mean) / std  # noqa: E731
    bt = torch.from_numpy(scale(b))
    parts = [torch.cdist(bt, torch.from_numpy(scale(flat(block)))) for _, block in chunks(train.x, chunk)]
    return torch.cat(parts, dim=1)


def rank_positions(values: Tensor) -> Tensor:
    """1-based rank of each entry when sorted descending (1 = largest)."""
    order = torch.argsort(values, descending=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(values) + 1)
    return ranks


def choose_test_points(cfg: ExplainConfig, loss: Tensor, wrong: Tensor) -> tuple[list[int], str]:
    """Rows of the test set to explain, and how they were chosen (for the summary)."""
    m = len(loss)
    if cfg.test_indices is not None:
        bad = [i for i in cfg.test_indices if not 0 <= i < m]
        if bad:
            raise DataError(f"test index {bad[0]} is out of range: the test set has {m} rows")
        return list(dict.fromkeys(cfg.test_indices)), "indices"
    by_loss = torch.argsort(loss, descending=True).tolist()
    if cfg.errors:
        return [i for i in by_loss if bool(wrong[i])][: cfg.max_tests], "errors"
    return by_loss[: cfg.max_tests], "highest_loss"


# ---- analysis -------------------------------------------------------------------------------
@dataclass
class _Scores:
    """Everything about the chosen test points that the finding rows draw from."""

    chosen: list[int]
    up_loss: Tensor  # (n_train, m) I_up,loss
    removal: Tensor  # (n_train, m) predicted change in test loss if removed: -(1/n) I_up,loss
    distance: Tensor  # (m, n_train)
    test_loss: Tensor  # (n_test,)
    test_pred: Tensor  # (n_test,)
    train_pred: Tensor  # (n_train,)


def run(inp: AnalysisInput) -> AnalysisResult:
    """Helpful, harmful and nearest training examples for each chosen test point."""
    cfg = ExplainConfig.from_params(inp.params)
    train, test, progress = inp.train, inp.test, inp.progress
    setup = fit_for_test(inp, cfg.model, cfg.solver, "explain")
    fitted, inf, test_loss = setup.fitted, setup.influence, setup.test_loss
    x_test, y_test = setup.x_test, setup.y_test
    test_pred = fitted.predict_proba(x_test).argmax(-1)
    chosen, how = choose_test_points(cfg, test_loss, test_pred != y_test)
    summary: dict[str, Any] = {
        "selection": how,
        "n_train": len(train),
        "n_test": len(test),
        "top": cfg.top,
        "solver": inf.solver.describe(),
        "curvature": setup.fitted.curvature,
        "train_info": fitted.train_info,
        "finding_kinds": [
            "helpful:t{test_index}",
            "harmful:t{test_index}",
            "neighbour:t{test_index}",
        ],
    }
    if not chosen:
        progress(1.0, "no test point to explain")
        summary.update(test_points=[], note="no misclassified test point to explain")
        return AnalysisResult([], summary)
    progress(0.4, f"computing s_test for {len(chosen)} test point(s)")
    S = inf.test_factors(x_test[chosen], y_test[chosen])
    U = inf.up_loss_from_factors(fitted.x, fitted.y, S, scaled(progress, 0.45, 0.9))
    scores = _Scores(
        chosen=chosen,
        up_loss=U,
        removal=inf.removal_effect(U),
        distance=input_distances(train, test.x[chosen]),
        test_loss=test_loss,
        test_pred=test_pred,
        train_pred=fitted.predict_proba(fitted.x).argmax(-1),
    )
    progress(0.92, "ranking training examples")
    findings: list[FindingRecord] = []
    points = []
    for col in range(len(chosen)):
        rows, info = _explain_one(train, test, scores, col, cfg.top)
        findings.extend(rows)
        points.append(info)
    summary["test_points"] = points
    summary["mean_jaccard_influence_vs_nearest"] = float(np.mean([p["jaccard"] for p in points]))
    progress(1.0, f"explained {len(chosen)} test point(s)")
    return AnalysisResult(findings, summary)


def _explain_one(
    train: Examples, test: Examples, s: _Scores, col: int, top: int
) -> tuple[list[FindingRecord], dict[str, Any]]:
    """Finding rows and a summary entry for the test point in column `col`."""
    t = s.chosen[col]
    u, d = s.up_loss[:, col], s.distance[col]
    inf_rank, dist_rank = rank_positions(u.abs()), rank_positions(-d)
    context = {
        "test_index": t,
        "test_key": test.keys[t],
        "test_label": int(test.y[t]),
        "test_pred": int(s.test_pred[t]),
        "test_loss": float(s.test_loss[t]),
    }

    def row(i: int, kind: str, score: float, rank: int) -> FindingRecord:
        payload = dict(context)
        payload.update(
            influence=float(u[i]),
            predicted_loss_change_if_removed=float(s.removal[i, col]),
            distance=float(d[i]),
            influence_rank=int(inf_rank[i]),
            distance_rank=int(dist_rank[i]),
            train_pred=int(s.train_pred[i]),
        )
        return FindingRecord(
            i, train.keys[i], f"{kind}:t{t}", score, rank, int(train.y[i]), payload
        )

    k = min(top, len(u))
    # Only points on the right side of zero: a "harmful" row with negative influence would lie.
    helpful = [i for i in torch.argsort(u).tolist()[:k] if u[i] < 0]
    harmful = [i for i in torch.argsort(u, descending=True).tolist()[:k] if u[i] > 0]
    nearest = torch.argsort(d).tolist()[:k]
    rows = [row(i, "helpful", float(-u[i]), r) for r, i in enumerate(helpful, 1)]
    rows += [row(i, "harmful", float(u[i]), r) for r, i in enumerate(harmful, 1)]
    # Similarity 1 / (1 + distance): higher = nearer, like every other score (higher = notable).
    rows += [row(i, "neighbour", 1.0 / (1.0 + float(d[i])), r) for r, i in enumerate(nearest, 1)]
    most_influential = set(torch.argsort(u.abs(), descending=True).tolist()[:k])
    jaccard = len(most_influential & set(nearest)) / len(most_influential | set(nearest))
    info = dict(context, n_helpful=len(helpful), n_harmful=len(harmful), jaccard=jaccard)
    return rows, info
