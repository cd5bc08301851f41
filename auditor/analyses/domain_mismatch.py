"""Find the thin training subgroup behind a model's worst test predictions (Koh & Liang 2017, 5.3).

The paper's readmission model had seen only a handful of healthy children; for a misclassified
test child, those few training children carried the largest |I_up,loss|, and the feature-wise
influence I_pert,loss pointed at the "child" feature. This audit generalises that diagnosis from
one test point to the `top_errors` highest-loss test points:

1. Train, pick the worst test points W (highest loss), compute s_test once for all of them and
   I_up,loss(z_i, w) for every training point (one streamed pass).
2. Influence share: for each w, each training point's |I_up,loss| as a fraction of the total
   |I_up,loss| on w; averaged over W. Shares make every worst point count equally (a point with
   a tenfold larger gradient would otherwise decide alone) and sum to 1 over the training set,
   so "these 4 examples carry 63% of the influence" is literal. Magnitudes, not signed values,
   are used: the paper's finding is about *how much* the few children shaped the prediction, and
   a point can pull two worst predictions in opposite directions without being unimportant.
3. Groups (when train and test both carry `groups`): counts, shares of the worst predictions,
   influence share, and the concentration score = influence share / training share: how many
   times more influence per training example the group carries than an average training
   example. It ranks first exactly the group the paper looks for, thin in training and heavily
   relied on for the errors; a large group's concentration is bounded by 1 / its share, and a
   group that is thin but irrelevant to the errors scores near 0. Groups with no training
   example cannot carry influence (score 0); the summary names them separately.
4. Features (tabular only): I_pert,loss of the most influential training examples w.r.t. their
   inputs, taken with the mean s_test over W (I_pert is linear in s_test, so this is the mean over
   W), in units of one training standard deviation of each feature.

Findings: kind "group" (example_key "group:{name}", example_index -1), "example" (training rows),
"feature" (example_key "feature:{name}", example_index = column). See `GROUP_PAYLOAD` etc.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auditor.analyses.base import AnalysisInput, AnalysisResult, FindingRecord
from auditor.analyses.fitting import as_tensors
from auditor.analyses.registry import DomainMismatchConfig
from auditor.analyses.testset import fit_for_test
from auditor.data.base import Examples
from auditor.data.lazy import column_moments
from auditor.influence import InfluenceModel
from auditor.influence.grads import example_losses
from auditor.progress import scaled

# A group is worth a sentence when each of its training examples carries at least twice the
# influence of an average one; a group's concentration is at most 1 / its training share, so
# the majority group of a data set can never reach this.
NOTABLE_CONCENTRATION = 2.0

GROUP_PAYLOAD = (
    "group",
    "n_train",
    "n_test",
    "n_worst",  # how many of the worst test predictions are in this group
    "train_share",
    "test_share",
    "worst_share",  # n_worst / number of worst test predictions
    "influence_share",  # share of |I_up,loss| on the worst predictions carried by the group
    "concentration",  # influence_share / train_share (the score)
    "thin_ratio",  # train_share / test_share (< 1: under-represented in training); None if n_test = 0
    "test_accuracy",
    "test_mean_loss",
)
EXAMPLE_PAYLOAD = (
    "group",
    "influence",  # mean signed I_up,loss over the worst test points (> 0: harmful to them)
    "abs_influence",  # mean |I_up,loss| over the worst test points
    "influence_share",  # the score: mean share of |I_up,loss| over the worst test points
    "predicted_loss_change_if_removed",  # summed over the worst test points: -(1/n) sum I_up,loss
    "train_pred",
    "train_loss",
)
FEATURE_PAYLOAD = (
    "feature",
    "influence_per_std",  # mean signed I_pert,loss * std over the top examples (> 0: raising it raises the loss)
    "magnitude_per_std",  # mean |I_pert,loss * std| (the score)
    "direction",  # "up" | "down": what raising the feature in those examples does to the loss
    "std",
)


def worst_test_points(cfg: DomainMismatchConfig, loss: Tensor) -> list[int]:
    """Test rows with the highest loss, worst first."""
    order = torch.argsort(loss, descending=True)
    if cfg.error_quantile is None:
        return order[: cfg.top_errors].tolist()
    cut = torch.quantile(loss, cfg.error_quantile)
    return [i for i in order.tolist() if loss[i] >= cut] or order[:1].tolist()


KEY_LIMIT = 64  # the store's example_key column is VARCHAR(64)


def named_key(prefix: str, name: str) -> str:
    """example_key for a group or feature row: "prefix:name", hashed down when it would not fit."""
    key = f"{prefix}:{name}"
    if len(key) <= KEY_LIMIT:
        return key
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{key[: KEY_LIMIT - 13]}~{digest}"


def feature_labels(names: list[str] | None, d: int) -> list[str]:
    """One distinct name per input column (finding keys must be unique): x0, x1, ... if unnamed."""
    if names is None or len(names) != d:
        return [f"x{j}" for j in range(d)]
    counts = Counter(names)
    return [f"{name}#{j}" if counts[name] > 1 else name for j, name in enumerate(names)]


def influence_shares(U: Tensor) -> Tensor:
    """(n,) mean over test columns of |U[i, j]| / sum_i |U[i, j]|; sums to 1 (0 if U is 0)."""
    A = U.abs()
    return (A / A.sum(0, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)).mean(1)


# ---- analysis -------------------------------------------------------------------------------
@dataclass
class _Context:
    """What the finding builders share."""

    train: Examples
    test: Examples
    worst: list[int]
    U: Tensor  # (n_train, |worst|) I_up,loss
    share: Tensor  # (n_train,) influence share
    train_pred: Tensor
    train_loss: Tensor
    test_pred: Tensor
    test_loss: Tensor
    sentences: list[str] = field(default_factory=list)


def run(inp: AnalysisInput) -> AnalysisResult:
    """Groups, training examples and features behind the worst test predictions."""
    cfg = DomainMismatchConfig.from_params(inp.params)
    train, test, progress = inp.train, inp.test, inp.progress
    setup = fit_for_test(inp, cfg.model, cfg.solver, "domain-mismatch")
    fitted, inf, test_loss = setup.fitted, setup.influence, setup.test_loss
    x_test, y_test = setup.x_test, setup.y_test
    worst = worst_test_points(cfg, test_loss)
    progress(0.4, f"computing s_test for the {len(worst)} worst test predictions")
    S = inf.test_factors(x_test[worst], y_test[worst])
    U = inf.up_loss_from_factors(fitted.x, fitted.y, S, scaled(progress, 0.45, 0.8))
    ctx = _Context(
        train=train,
        test=test,
        worst=worst,
        U=U,
        share=influence_shares(U),
        train_pred=fitted.predict_proba(fitted.x).argmax(-1),
        train_loss=example_losses(inf.fm, fitted.x, fitted.y),
        test_pred=fitted.predict_proba(x_test).argmax(-1),
        test_loss=test_loss,
    )
    progress(0.82, "summarising groups")
    top_examples = torch.argsort(ctx.share, descending=True)[: cfg.top].tolist()
    findings = _group_rows(ctx) + _example_rows(ctx, top_examples, inf)
    progress(0.88, "feature-wise influence")
    findings += _feature_rows(ctx, top_examples, inf, S.mean(0), cfg.top)
    summary = {
        "sentences": ctx.sentences,
        "worst_test_indices": worst,
        "worst_test_mean_loss": float(test_loss[worst].mean()),
        "n_train": len(train),
        "n_test": len(test),
        "groups": train.groups is not None and test.groups is not None,
        "solver": inf.solver.describe(),
        "curvature": setup.fitted.curvature,
        "train_info": fitted.train_info,
    }
    progress(1.0, "done")
    return AnalysisResult(findings, summary)


def _group_rows(ctx: _Context) -> list[FindingRecord]:
    """One "group" row per group, the thin influential one first; summary sentences."""
    train_groups, test_groups = ctx.train.groups, ctx.test.groups
    m = len(ctx.worst)
    if train_groups is None or test_groups is None:
        ctx.sentences.append(
            "no groups given for the training and the test set; "
            "groups are not compared (give a group column to both)"
        )
        return []
    train_g = np.asarray(train_groups).astype(str)
    test_g = np.asarray(test_groups).astype(str)
    worst_g = test_g[ctx.worst]
    share = ctx.share.cpu().numpy()
    correct = ctx.test_pred.cpu().numpy() == np.asarray(ctx.test.y)
    loss = ctx.test_loss.cpu().numpy()
    stats = []
    for name in sorted(set(train_g) | set(test_g)):
        in_train, in_test = train_g == name, test_g == name
        n_train, n_test = int(in_train.sum()), int(in_test.sum())
        train_share, test_share = n_train / len(train_g), n_test / len(test_g)
        influence_share = float(share[in_train].sum())
        stats.append(
            {
                "group": str(name),
                "n_train": n_train,
                "n_test": n_test,
                "n_worst": int((worst_g == name).sum()),
                "train_share": train_share,
                "test_share": test_share,
                "worst_share": float((worst_g == name).sum()) / m,
                "influence_share": influence_share,
                "concentration": influence_share / train_share if n_train else 0.0,
                "thin_ratio": train_share / test_share if n_test else None,
                "test_accuracy": float(correct[in_test].mean()) if n_test else None,
                "test_mean_loss": float(loss[in_test].mean()) if n_test else None,
            }
        )
    stats.sort(key=lambda s: (-s["concentration"], -s["worst_share"], s["group"]))
    ctx.sentences.extend(_group_sentences(stats, m))
    return [
        FindingRecord(
            -1, named_key("group", s["group"]), "group", s["concentration"], rank, None, s
        )
        for rank, s in enumerate(stats, 1)
    ]


def _group_sentences(stats: list[dict[str, Any]], m: int) -> list[str]:
    """Plain-language findings: groups missing from training, then the concentrated ones."""
    out = [
        f"group '{s['group']}' has no training examples but {s['n_test']} test examples "
        f"({s['n_worst']} of the {m} worst test predictions)"
        for s in stats
        if s["n_train"] == 0 and s["n_worst"] > 0
    ]
    for s in stats[:3]:
        if s["n_train"] == 0 or s["concentration"] < NOTABLE_CONCENTRATION:
            continue
        out.append(
            f"group '{s['group']}': {s['n_train']} training examples vs {s['n_test']} test examples; "
            f"these {s['n_train']} carry {s['influence_share']:.0%} of the influence on the {m} worst "
            f"test predictions ({s['concentration']:.1f}x their share of the training set; "
            f"{s['n_worst']} of the {m} are in this group)"
        )
    return out


def _example_rows(ctx: _Context, top: list[int], inf: InfluenceModel) -> list[FindingRecord]:
    """The training examples with the largest influence share on the worst predictions."""
    n = len(ctx.train)
    groups = None if ctx.train.groups is None else np.asarray(ctx.train.groups).astype(str)
    removal = inf.removal_effect(ctx.U).sum(1)
    rows = []
    for rank, i in enumerate(top, 1):
        payload = {
            "group": None if groups is None else str(groups[i]),
            "influence": float(ctx.U[i].mean()),
            "abs_influence": float(ctx.U[i].abs().mean()),
            "influence_share": float(ctx.share[i]),
            "predicted_loss_change_if_removed": float(removal[i]),
            "train_pred": int(ctx.train_pred[i]),
            "train_loss": float(ctx.train_loss[i]),
        }
        rows.append(
            FindingRecord(
                i,
                ctx.train.keys[i],
                "example",
                float(ctx.share[i]),
                rank,
                int(ctx.train.y[i]),
                payload,
            )
        )
    if top and n:
        carried = float(ctx.share[top].sum())
        ctx.sentences.append(
            f"the {len(top)} most influential of {n} training examples carry {carried:.0%} of the "
            f"influence on the {len(ctx.worst)} worst test predictions"
        )
    return rows


def _feature_rows(
    ctx: _Context, top: list[int], inf: InfluenceModel, s_mean: Tensor, k: int
) -> list[FindingRecord]:
    """Which input features of the most influential examples move the worst losses most.

    Images are skipped: a per-pixel ranking says little that the example rows do not.
    """
    train = ctx.train
    if train.is_image or not top:
        return []
    rows = train.subset(top)  # only these rows as floats, not the data set
    x, y = as_tensors(rows, inf.fm.dtype, inf.fm.device)
    P = inf.pert_loss(x, y, s_mean).reshape(len(top), -1)
    std = torch.as_tensor(column_moments(train.x)[1])
    std = torch.where(std > 1e-12, std, torch.ones_like(std)).to(P)
    per_std = P * std
    signed, magnitude = per_std.mean(0), per_std.abs().mean(0)
    names = feature_labels(train.feature_names, per_std.shape[1])
    order = torch.argsort(magnitude, descending=True)[:k].tolist()
    rows = []
    for rank, j in enumerate(order, 1):
        payload = {
            "feature": names[j],
            "influence_per_std": float(signed[j]),
            "magnitude_per_std": float(magnitude[j]),
            "direction": "up" if signed[j] > 0 else "down",
            "std": float(std[j]),
        }
        rows.append(
            FindingRecord(
                j,
                named_key("feature", names[j]),
                "feature",
                float(magnitude[j]),
                rank,
                None,
                payload,
            )
        )
    if order:
        j = order[0]
        verb = "raises" if signed[j] > 0 else "lowers"
        ctx.sentences.append(
            f"feature '{names[j]}' of those examples moves the loss on the worst test predictions "
            f"most: raising it {verb} that loss"
        )
    return rows
