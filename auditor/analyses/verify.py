"""Close the loop: retrain with a label check's decisions applied and measure what they changed.

Influence predicts, to first order and without retraining, how the test loss and accuracy move
when a flagged label is changed (a label finding's `fix_value`). This analysis measures it: the
source audit's model is trained twice with the same recipe and seed, once on the labels as given
and once on the labels the reviewers' decisions give (confirm: the suggested label; relabel: the
reviewer's label; dismiss or undecided: as given), and both are scored on the same rows. The
report sets the measured change beside the predicted one.

The rows scored are the source audit's test set; without one, a seeded held-out slice of the
training rows, left out of both trainings and scored with the decisions applied (the best labels
known for them), so both models answer to the same labels.

The decisions arrive in the params (`VerifyConfig.corrections`, written from the store when the
verification was asked for), so a verification is reproducible: it applies the decisions as they
stood then, wherever and whenever a worker runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from auditor.analyses.base import AnalysisInput, AnalysisResult, Progress
from auditor.analyses.fitting import fit_model
from auditor.analyses.registry import VerifyConfig, check_verify
from auditor.analyses.settings import ModelSpec
from auditor.data.base import MAX_CLASSES, Examples, check_test_set
from auditor.errors import DataError

EVAL_BATCH = 4096
NO_PREDICTION = (
    "the source audit's findings carry no fix_value: influence predicted nothing to compare"
)


@dataclass
class EvalRows:
    """The rows both models are scored on, with the labels they answer to and how to name them."""

    examples: Examples
    y: np.ndarray
    described: str


def training_spec(cfg: VerifyConfig) -> ModelSpec:
    """The source audit's model with the training the verification asked for: its own recipe,
    or the team's `--train-fn` (then trained from the audit's weights, if it had any)."""
    check_verify(cfg, local=True)  # refuses a --no-train model without a --train-fn
    if cfg.train_fn:
        return replace(cfg.model, train=True, train_fn=cfg.train_fn)
    return cfg.model


def corrected_labels(y: np.ndarray, corrections: dict) -> np.ndarray:
    """The labels with each correction (row -> label) applied; a row or label out of range is a
    one-line error (params written by hand)."""
    out = np.asarray(y).astype(np.int64).copy()
    for row, label in corrections.items():
        i, new = int(row), int(label)
        if not 0 <= i < len(out):
            raise DataError(
                f"correction of row {i} is outside the data set's rows 0..{len(out) - 1}"
            )
        if not 0 <= new < MAX_CLASSES:
            raise DataError(f"correction of row {i} to label {new} is not a class index")
        out[i] = new
    return out


def split_rows(
    inp: AnalysisInput, cfg: VerifyConfig, corrected: np.ndarray
) -> tuple[np.ndarray, EvalRows]:
    """(training rows, rows to score): all rows and the test set, or without a test set the
    training rows less a seeded held-out slice (`cfg.holdout`, the model's seed)."""
    n = len(inp.train)
    if inp.test is not None and len(inp.test):
        check_test_set(inp.train, inp.test, labels=False)
        name = cfg.test_name or "the audit's test set"
        return np.arange(n), EvalRows(
            inp.test, np.asarray(inp.test.y), f"test set {name} ({len(inp.test)} rows)"
        )
    held = max(1, int(round(cfg.holdout * n)))
    if n - held < 2:
        raise DataError(
            f"{n} training rows are too few to hold {held} out for scoring; give the audit a test set"
        )
    perm = np.random.default_rng(cfg.model.seed).permutation(n)
    test_rows, train_rows = np.sort(perm[:held]), np.sort(perm[held:])
    described = (
        f"held-out rows ({held} of {n} training rows, seed {cfg.model.seed}, left out of both trainings "
        "and scored with the decisions applied; the audit has no test set)"
    )
    return train_rows, EvalRows(inp.train.subset(test_rows), corrected[test_rows], described)


def evaluate(
    module: nn.Module, dtype: torch.dtype, device: torch.device, rows: EvalRows
) -> dict[str, float]:
    """Mean cross-entropy and accuracy (fraction) of `module` on `rows`, a batch at a time."""
    module.eval()
    total_loss, correct, n = 0.0, 0, len(rows.y)
    with torch.no_grad():
        for start in range(0, n, EVAL_BATCH):
            x = torch.as_tensor(
                np.asarray(rows.examples.x[start : start + EVAL_BATCH]), dtype=dtype, device=device
            )
            y = torch.as_tensor(rows.y[start : start + EVAL_BATCH], dtype=torch.long, device=device)
            out = module(x)
            total_loss += float(nn.functional.cross_entropy(out.double(), y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    return {"test_loss": total_loss / n, "test_accuracy": correct / n}


def train_and_score(
    train: Examples, spec: ModelSpec, classes: int, rows: EvalRows, progress: Progress, cache=None
) -> tuple[dict[str, float], dict]:
    """Train `spec` on `train` (auditor's recipe or the team's function) and score it on `rows`."""
    fitted = fit_model(
        train, spec, num_classes=classes, progress=progress, cache=cache, lazy_rows=True
    )
    return evaluate(fitted.module, fitted.x.dtype, fitted.device, rows), fitted.train_info


def run(inp: AnalysisInput) -> AnalysisResult:
    cfg = VerifyConfig.from_params(inp.params)
    spec = training_spec(cfg)
    given = np.asarray(inp.train.y).astype(np.int64)
    corrected = corrected_labels(given, cfg.corrections)
    train_rows, rows = split_rows(inp, cfg, corrected)
    classes = max(
        inp.train.num_classes, int(corrected.max()) + 1, int(rows.y.max()) + 1 if len(rows.y) else 0
    )
    before_set = inp.train.subset(train_rows)
    after_set = replace(before_set, y=corrected[train_rows])
    changed = int((before_set.y != after_set.y).sum())

    inp.progress(0.02, "training on the labels as given")
    # the given labels: the audit's own model, loaded from the cache when it was stored; the
    # corrected labels keep the given examples' keys, so they must never meet the cache
    before, before_info = train_and_score(
        before_set,
        spec,
        classes,
        rows,
        lambda f, m: inp.progress(0.02 + 0.46 * f, f"before: {m}"),
        inp.cache,
    )
    inp.progress(0.5, f"training with the decisions applied ({changed} labels changed)")
    after, after_info = train_and_score(
        after_set, spec, classes, rows, lambda f, m: inp.progress(0.5 + 0.46 * f, f"after: {m}")
    )
    inp.progress(1.0, "done")
    change = {k: after[k] - before[k] for k in before}
    predicted = cfg.predicted_change
    note = NO_PREDICTION if predicted is None else predicted.get("note")
    return AnalysisResult(
        [],
        {
            "audit": cfg.audit,
            "before": before,
            "after": after,
            "change": change,
            "predicted_change": predicted,
            "predicted_note": note,
            "applied": cfg.applied,
            "labels_changed": changed,
            "evaluated_on": rows.described,
            "n_train": len(train_rows),
            "training": {
                "by": f"train_fn {spec.train_fn}" if spec.train_fn else "auditor's recipe",
                "seed": spec.seed,
                "started_from": "the audit's weights"
                if spec.weights
                else "the model's seeded initialisation",
                "before": before_info,
                "after": after_info,
            },
            "model": spec.to_dict(),
        },
    )
