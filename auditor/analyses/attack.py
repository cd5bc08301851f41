"""Training-set attack (Koh & Liang 2017, section 5.2): how fragile is a prediction to poisoning?

For a target test point z_test, the audit perturbs a few training images so that retraining on
them raises the target's loss, and then *checks by retraining* whether the target's prediction
flips. A flip that the retrain does not confirm is never reported.

Algorithm, per target (each target is attacked separately, starting from the clean training set):

1. s_test = H^-1 g(z_test) at the trained parameters theta (objective="margin": H^-1 times the
   gradient of runner-up logit minus label logit instead of the loss gradient).
2. Pick the `budget` training images whose perturbation can move the target's loss most to first
   order: the largest L1 norm of I_pert,loss(z_i, z_test). Inside the box of allowed changes,
   the first-order gain of image i is at most HALF_GREY * ||I_pert,loss(z_i)||_1 / n, so this is
   the ranking the attack itself optimises (select="up" ranks by |I_up,loss| instead).
3. Iterate x~ := Pi(x~ + step * sign(I_pert,loss(x~, z_test))). I_pert,loss is the derivative of
   the target's loss with respect to the training input (scaled by 1/n), so *ascending* it raises
   the target's loss. I_pert is recomputed at the current x~ every iteration; theta and s_test stay
   fixed during crafting (the paper retrained and re-solved periodically): the whole perturbation
   is below half a grey level, and on digits the first-order prediction made with the clean
   theta matches the retrain to about 1% (payload: predicted_change vs actual_change).
4. Verify: replace the images by the perturbed floats, retrain the non-frozen parameters to
   convergence (warm start from the clean optimum), and compare the target's prediction and
   confidence, and the accuracy on the other test points, before and after.

Units. Inputs are raw pixel values 0..255 as floats (the built-in models divide by 255 inside),
so `step` is in grey levels. The paper's step 0.02 was on [0, 1]-scaled pixels, i.e. 5.1 grey
levels: bigger than the whole box, so each of its steps jumps to a corner. Our default 0.02 grey
levels crosses the box in 25 steps, leaving the sign pattern room to settle over 100 iterations.

Projection Pi. Every pixel stays in [max(0, x - HALF_GREY), min(255, x + HALF_GREY)] with
HALF_GREY = 0.5 - 1e-4, so rounding the perturbed image to 8 bits (np.rint, clip, uint8) gives
back exactly the stored bytes, also for pixels at 0 and 255 (the range is clipped to valid
intensities) and also after a cast to float32 (its spacing near 255 is 1.5e-5). The flip side is
stated in the summary: once saved as 8-bit images, the poisoned images ARE the original images.
The attack matters only for a pipeline that trains on the floats an attacker hands over.

Findings. One row kind="target" per target (example_key: the test point's key; score: drop in
the confidence in its label after the retrain), and one row kind="poison:t{target_index}" per
perturbed training image (example_key: the training key; score: its selection score). The target
index is in the poison kind because one training image may be poisoned for several targets, and
findings are unique per (audit, example_key, kind). The target payload has target_index,
target_key, target_label, pred_before/after, flipped, conf_before/after (probability of the
label), margin_before/after, loss_before/after, objective, runner_up, predicted_change (first
order) and actual_change (retrain) of the objective, other_test_acc_before/after, budget,
training_indices, training_keys, max_abs_change, bytes_unchanged, retrain_grad_max, seconds and,
with an artifacts_dir, npz_path (perturbed floats, original bytes, indices) and png_path
(original | perturbed | difference x255, upscaled), relative to that directory.

Frozen parameters (`frozen`). As in the paper's frozen Inception features, only the last layer is
retrained (and is the layer influence is computed over) by default; for logreg that is the whole
model. Gradients with respect to pixels still flow through the frozen layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from auditor.analyses.base import (
    AnalysisInput,
    AnalysisResult,
    FindingRecord,
    Progress,
    no_progress,
)
from auditor.analyses.fitting import as_tensors, fit_model
from auditor.analyses.registry import OBJECTIVES, SELECT, AttackConfig
from auditor.analyses.testset import require_test_set
from auditor.data.base import Examples
from auditor.errors import DataError, ModelError
from auditor.influence import FunctionalModel, InfluenceModel, select_parameters
from auditor.progress import scaled

__all__ = ["OBJECTIVES", "SELECT", "AttackConfig", "attack", "prepare", "run"]

HALF_GREY = 0.5 - 1e-4  # largest change per pixel: rounding to 8 bits still gives the stored byte
RETRAIN_TOL = 1e-10  # L-BFGS: largest gradient component at convergence (float64)
RETRAIN_MAX_ITER = 2000
NEWTON_STEPS = 20
POLISH_REFIT = 1e-6  # polish moved theta more than this: recompute the curvature at the optimum


# ---- the box of allowed perturbations ---------------------------------------------------------
def allowed_box(original: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel bounds (lo, hi) of the perturbed image: within HALF_GREY and within [0, 255]."""
    base = original.to(torch.float64)
    return (base - HALF_GREY).clamp(min=0.0), (base + HALF_GREY).clamp(max=255.0)


def project(x: Tensor, original: Tensor) -> Tensor:
    """Pi: the nearest image to `x` whose 8-bit rounding is `original` (see the module docstring)."""
    lo, hi = allowed_box(original)
    return torch.minimum(torch.maximum(x.to(torch.float64), lo), hi)


def to_bytes(x: np.ndarray | Tensor) -> np.ndarray:
    """What storing an image as 8 bits does: round to nearest, clip to 0..255, uint8."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)


# ---- which parameters are retrained, and retraining them ---------------------------------------
def trainable_names(module: nn.Module, frozen: str | None) -> list[str]:
    """Names of the parameters that influence is computed over and that the retrain updates."""
    if frozen is None:
        return select_parameters(module, "all")
    if frozen == "features":
        return select_parameters(module, "last")
    fixed = set(select_parameters(module, [p.strip() for p in frozen.split(",") if p.strip()]))
    names = [n for n in select_parameters(module, "all") if n not in fixed]
    if not names:
        raise ModelError(f"frozen={frozen!r} freezes every parameter; nothing is left to retrain")
    return names


class Retrainer:
    """Minimises R(theta) = mean_i L(z_i) + wd/2 ||theta||^2 over the trainable parameters only.

    This is exactly the objective `FunctionalModel` differentiates, so the clean optimum is where
    the influence formulas are valid and a retrain measures what they predict. When the model is
    an `nn.Sequential` whose last child holds every trainable parameter (the frozen-feature case),
    the frozen features are computed once and only the poisoned rows are recomputed.
    """

    def __init__(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> None:
        self.fm, self.x, self.y = fm, x, y
        self.head: FunctionalModel | None = None
        module = fm.module
        if isinstance(module, nn.Sequential) and len(module) > 1:
            last = str(len(module) - 1)
            if all(n.startswith(f"{last}.") for n in fm.names) and len(fm.names) == len(
                list(module[-1].parameters())
            ):
                self.features = module[:-1]
                self.head = FunctionalModel.from_module(module[-1], "all", fm.weight_decay)
                self.clean_features = self._features(x)

    def _features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.features(x.to(self.fm.dtype))

    def fit(
        self,
        theta0: Tensor,
        rows: Tensor | None = None,
        x_rows: Tensor | None = None,
        solve: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, float]:
        """Train from `theta0` on the training set with rows `rows` replaced by `x_rows`.

        With `solve` (v -> H0^-1 v at the clean optimum) it first takes Newton steps with that
        fixed Hessian, which converge in a few steps for a perturbation this small; L-BFGS
        finishes whatever is left. Either way the result is judged only by the gradient of the
        poisoned objective, so it is a real retrain, not the influence prediction.
        Returns (theta, largest gradient component at the end).
        """
        if self.head is not None:
            inputs, model = self.clean_features, self.head
            if rows is not None and x_rows is not None:
                inputs = inputs.clone()
                inputs[rows] = self._features(x_rows)
        else:
            inputs, model = self.x.to(self.fm.dtype), self.fm
            if rows is not None and x_rows is not None:
                inputs = inputs.clone()
                inputs[rows] = x_rows.to(inputs.dtype)

        def objective(theta: Tensor) -> Tensor:
            return model.losses(theta, inputs, self.y).mean() + model.regulariser(theta)

        def gradient(theta: Tensor) -> tuple[Tensor, Tensor]:
            theta = theta.detach().requires_grad_(True)
            loss = objective(theta)
            (g,) = torch.autograd.grad(loss, theta)
            if not torch.isfinite(loss) or not torch.isfinite(g).all():
                raise ModelError("retraining on the perturbed images gave a NaN/inf loss")
            return loss.detach(), g

        theta = theta0.detach().clone()
        _, g = gradient(theta)
        if solve is not None:
            for _ in range(NEWTON_STEPS):
                if float(g.abs().max()) <= RETRAIN_TOL:
                    break
                step = theta - solve(g)
                _, g_new = gradient(step)
                if float(g_new.abs().max()) > 0.5 * float(g.abs().max()):
                    break  # not contracting: leave the rest to L-BFGS
                theta, g = step, g_new
        if float(g.abs().max()) > RETRAIN_TOL:
            theta = self._lbfgs(objective, theta)
            _, g = gradient(theta)
        return theta.detach(), float(g.abs().max())

    @staticmethod
    def _lbfgs(objective: Callable[[Tensor], Tensor], theta0: Tensor) -> Tensor:
        theta = theta0.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [theta],
            lr=1,
            max_iter=RETRAIN_MAX_ITER,
            tolerance_grad=RETRAIN_TOL,
            tolerance_change=1e-16,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = objective(theta)
            loss.backward()
            return loss

        opt.step(closure)
        return theta.detach()


def logits_at(fm: FunctionalModel, theta: Tensor, x: Tensor, batch: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat(
            [fm.forward(theta, x[s : s + batch].to(fm.dtype)) for s in range(0, x.shape[0], batch)]
        )


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """Logit of the label minus the largest other logit (> 0: correctly classified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other[torch.arange(len(y)), y] = -torch.inf
    return true - other.max(1).values


# ---- analysis -------------------------------------------------------------------------------
def check_images(examples: Examples, what: str) -> None:
    x = np.asarray(examples.x)
    if not examples.is_image or x.dtype != np.uint8:
        kind = "images" if examples.is_image else "features"
        raise DataError(
            f"the attack perturbs 8-bit images, but the {what} set {examples.source or ''} holds "
            f"{x.dtype} {kind}; use a dataset of uint8 images".replace("  ", " ")
        )


def choose_targets(cfg: AttackConfig, margin: Tensor) -> tuple[list[int], str]:
    if cfg.target_indices is not None:
        return list(dict.fromkeys(cfg.target_indices)), "indices"
    correct = torch.nonzero(margin > 0)[:, 0]
    order = correct[torch.argsort(margin[correct], stable=True)]
    return order[: cfg.targets].tolist(), "smallest_margin_correct"


@dataclass
class AttackSetup:
    """The clean model, its influence and the test-set state before any poisoning."""

    train: Examples
    test: Examples
    fm: FunctionalModel
    inf: InfluenceModel
    retrainer: Retrainer
    theta: Tensor
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    logits_test: Tensor
    train_info: dict
    seconds: float  # training, polishing and fitting the curvature


def run(inp: AnalysisInput) -> AnalysisResult:
    """Poison `budget` training images per target within half a grey level; verify by retraining."""
    cfg = AttackConfig.from_params(inp.params)
    inp.progress(0.0, "training the model")
    setup = prepare(inp.train, inp.test, cfg, scaled(inp.progress, 0.0, 0.15))
    return attack(setup, cfg, inp.artifacts_dir, scaled(inp.progress, 0.15, 1.0))


def prepare(
    train: Examples, test: Examples | None, cfg: AttackConfig, progress: Progress | None = None
) -> AttackSetup:
    """Check the data, train the model and fit the curvature once; `attack` may then run many
    times on the result (the bench compares budgets this way). Uses cfg.model, cfg.solver and
    cfg.frozen; the other settings are `attack`'s."""
    check_images(train, "training")
    test = require_test_set(train, test, "attack")
    check_images(test, "test")
    if cfg.budget > len(train):
        raise DataError(f"budget {cfg.budget} exceeds the {len(train)} training examples")
    bad = [i for i in cfg.target_indices or [] if not 0 <= i < len(test)]
    if bad:
        raise DataError(f"target index {bad[0]} is out of range: the test set has {len(test)} rows")
    return _prepare(train, test, cfg, progress)


def attack(
    setup: AttackSetup,
    cfg: AttackConfig,
    artifacts_dir: Any | None = None,
    progress: Progress = no_progress,
) -> AnalysisResult:
    """Attack the chosen targets of a prepared model, each from the clean training set."""
    if cfg.budget > setup.x.shape[0]:
        raise DataError(f"budget {cfg.budget} exceeds the {setup.x.shape[0]} training examples")
    margin = margins(setup.logits_test, setup.y_test)
    chosen, how = choose_targets(cfg, margin)
    out_dir = Path(artifacts_dir) if artifacts_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    targets, poisons, seconds = [], [], []
    for j, t in enumerate(chosen):
        progress(j / len(chosen), f"attacking target {j + 1}/{len(chosen)} (test row {t})")
        start = time.perf_counter()
        target, rows = _attack_one(setup, cfg, t, out_dir)
        seconds.append(time.perf_counter() - start)
        target.payload["seconds"] = seconds[-1]
        targets.append(target)
        poisons.extend(rows)
    progress(1.0, f"attacked {len(chosen)} target(s)")
    _rank(targets, poisons)
    summary = _summary(cfg, setup, targets, seconds, how)
    return AnalysisResult(targets + poisons, summary)


def _prepare(
    train: Examples, test: Examples, cfg: AttackConfig, progress: Progress | None
) -> AttackSetup:
    start_time = time.perf_counter()
    # float64: the retrain check polishes to a gradient float32 cannot resolve
    fitted = fit_model(train, cfg.model, num_classes=train.num_classes, progress=progress).as_float64()
    names = trainable_names(fitted.module, cfg.frozen)
    fm = FunctionalModel(fitted.module, names, weight_decay=cfg.model.l2)
    x_test, y_test = as_tensors(test, fitted.x.dtype, fitted.device)
    inf = fitted.influence(cfg.solver, few_solves=True, fm=fm)
    fm, engine = inf.fm, inf.solver  # EK-FAC may count fewer parameters (Linear/Conv2d only)
    retrainer = Retrainer(fm, fitted.x, fitted.y)
    # Polish the trainable parameters to the optimum of exactly the objective used after
    # poisoning (so "before" and "after" differ by the poison only, not by extra training), then
    # take the curvature there: influence is a statement about that optimum.
    start = fm.flat_params()
    theta, gmax = retrainer.fit(start, solve=inf.solver.solve)
    fm.params = fm.unflatten(theta)
    if float((theta - start).abs().max()) > POLISH_REFIT:
        inf = InfluenceModel(fm, engine).fit(fitted.x, fitted.y)
    logits = logits_at(fm, theta, x_test)
    info = {**fitted.train_info, "polish_grad_max": gmax}
    seconds = time.perf_counter() - start_time
    return AttackSetup(
        train,
        test,
        fm,
        inf,
        retrainer,
        theta,
        fitted.x,
        fitted.y,
        x_test,
        y_test,
        logits,
        info,
        seconds,
    )


def _objective_value(logits: Tensor, label: int, runner_up: int, objective: str) -> float:
    """The quantity the attack raises: test loss, or runner-up logit minus label logit."""
    if objective == "loss":
        return float(-torch.log_softmax(logits, -1)[label])
    return float(logits[runner_up] - logits[label])


def _test_factor(
    setup: AttackSetup, objective: str, x_t: Tensor, y_t: Tensor, runner_up: int
) -> Tensor:
    """H^-1 grad_theta f(z_test), f the objective; pert_loss(x, y, .) of it is df/d(input)."""
    if objective == "loss":
        return setup.inf.test_factors(x_t, y_t)[0]
    fm, label = setup.fm, int(y_t[0])

    def f(theta: Tensor) -> Tensor:
        logits = fm.forward(theta, x_t.to(fm.dtype))[0]
        return logits[runner_up] - logits[label]

    return setup.inf.solver.solve(torch.func.grad(f)(fm.flat_params()))


def _craft(
    setup: AttackSetup, cfg: AttackConfig, s_test: Tensor, rows: Tensor
) -> tuple[Tensor, float]:
    """Sign ascent of the objective in the chosen rows; returns (images, predicted change)."""
    original = setup.x[rows].to(torch.float64)
    y_rows = setup.y[rows]
    x = original.clone()
    for _ in range(cfg.iterations):
        grad_x = setup.inf.pert_loss(x, y_rows, s_test)
        x = project(x + cfg.step * torch.sign(grad_x), original)
    # First-order prediction: d(objective) ~ (1/n) sum_i I_pert(z_i) . delta_i.
    grad0 = setup.inf.pert_loss(original, y_rows, s_test)
    predicted = float((grad0 * (x - original)).sum()) / setup.x.shape[0]
    return x, predicted


def _attack_one(
    setup: AttackSetup, cfg: AttackConfig, t: int, out_dir: Path | None
) -> tuple[FindingRecord, list[FindingRecord]]:
    train, test = setup.train, setup.test
    inf, n = setup.inf, setup.x.shape[0]
    x_t, y_t = setup.x_test[t : t + 1], setup.y_test[t : t + 1]
    runner_up = int(setup.logits_test[t].clone().index_fill_(0, y_t, -torch.inf).argmax())
    s_test = _test_factor(setup, cfg.objective, x_t, y_t, runner_up)
    if cfg.select == "pert":
        score = inf.pert_loss(setup.x, setup.y, s_test).reshape(n, -1).abs().sum(1)
    else:
        score = inf.up_loss_from_factors(setup.x, setup.y, s_test[None])[:, 0].abs()
    rows = torch.argsort(score, descending=True, stable=True)[: cfg.budget]
    x_new, predicted = _craft(setup, cfg, s_test, rows)

    original_bytes = np.asarray(train.x)[rows.numpy()]
    x_np = x_new.numpy()
    max_change = float(np.abs(x_np - original_bytes.astype(np.float64)).max())
    # Not an `assert` (python -O drops those): a perturbation that changes the stored bytes is a bug.
    if max_change >= 0.5 or not np.array_equal(to_bytes(x_np), original_bytes):
        raise RuntimeError(f"attack on test point {t} changed the 8-bit image: bug in project()")

    label = int(y_t[0])
    probs_before = torch.softmax(setup.logits_test, -1)
    pred_before = int(setup.logits_test[t].argmax())
    others = torch.ones(len(setup.y_test), dtype=torch.bool)
    others[t] = False
    acc_before = _accuracy(setup.logits_test[others], setup.y_test[others])
    loss_before = float(-torch.log(probs_before[t, label]))
    payload: dict[str, Any] = {
        "target_index": t,
        "target_key": test.keys[t],
        "target_label": label,
        "pred_before": pred_before,
        "conf_before": float(probs_before[t, label]),
        "margin_before": float(margins(setup.logits_test[t : t + 1], y_t)[0]),
        "loss_before": loss_before,
        "other_test_acc_before": acc_before,
        "objective": cfg.objective,
        "runner_up": runner_up,
        "predicted_change": predicted,
        "budget": cfg.budget,
        "training_indices": rows.tolist(),
        "training_keys": [train.keys[i] for i in rows.tolist()],
        "max_abs_change": max_change,
        "bytes_unchanged": True,
        "pred_after": None,
        "flipped": None,
        "conf_after": None,
        "margin_after": None,
        "loss_after": None,
        "actual_change": None,
        "other_test_acc_after": None,
        "retrain_grad_max": None,
    }
    if cfg.retrain_check:
        theta_after, gmax = setup.retrainer.fit(
            setup.theta, rows, x_new, solve=setup.inf.solver.solve
        )
        logits_after = logits_at(setup.fm, theta_after, setup.x_test)
        probs_after = torch.softmax(logits_after[t], -1)
        payload.update(
            pred_after=int(logits_after[t].argmax()),
            conf_after=float(probs_after[label]),
            margin_after=float(margins(logits_after[t : t + 1], y_t)[0]),
            loss_after=float(-torch.log(probs_after[label])),
            other_test_acc_after=_accuracy(logits_after[others], setup.y_test[others]),
            retrain_grad_max=gmax,
        )
        payload["flipped"] = payload["pred_after"] != pred_before
        payload["actual_change"] = _objective_value(
            logits_after[t], label, runner_up, cfg.objective
        ) - _objective_value(setup.logits_test[t], label, runner_up, cfg.objective)
    if out_dir is not None:
        payload.update(_save_artifacts(out_dir, t, rows, original_bytes, x_np, train, test))
    # Score: how far the retrain moved the target's confidence in its label (without the retrain
    # check, the first-order predicted change in its loss: a prediction, labelled as such).
    if cfg.retrain_check:
        score_t = payload["conf_before"] - payload["conf_after"]
    else:
        score_t = predicted
    target = FindingRecord(t, test.keys[t], "target", float(score_t), 0, label, payload)
    poison_rows = []
    for r, i in enumerate(rows.tolist()):
        delta = x_np[r] - original_bytes[r].astype(np.float64)
        poison_rows.append(
            FindingRecord(
                i,
                train.keys[i],
                f"poison:t{t}",
                float(score[i]),
                r,
                int(train.y[i]),
                {
                    "target_index": t,
                    "target_key": test.keys[t],
                    "selection": cfg.select,
                    "selection_score": float(score[i]),
                    "max_abs_change": float(np.abs(delta).max()),
                    "mean_abs_change": float(np.abs(delta).mean()),
                    "flipped": payload["flipped"],
                    **{k: v for k, v in payload.items() if k.endswith("_path")},
                },
            )
        )
    return target, poison_rows


def _accuracy(logits: Tensor, y: Tensor) -> float | None:
    return float((logits.argmax(-1) == y).double().mean()) if len(y) else None


def _rank(targets: list[FindingRecord], poisons: list[FindingRecord]) -> None:
    """Targets: flipped first, then by confidence drop. Poisons: in their target's order."""
    targets.sort(key=lambda f: (not f.payload["flipped"], -f.score))
    order = {f.payload["target_index"]: r for r, f in enumerate(targets, 1)}
    for f in targets:
        f.rank = order[f.payload["target_index"]]
    poisons.sort(key=lambda f: (order[f.payload["target_index"]], f.rank))
    for r, f in enumerate(poisons, 1):
        f.rank = r


def _summary(
    cfg: AttackConfig,
    setup: AttackSetup,
    targets: list[FindingRecord],
    seconds: list[float],
    how: str,
) -> dict[str, Any]:
    verified = [f for f in targets if f.payload["flipped"] is not None]
    flipped = sum(bool(f.payload["flipped"]) for f in verified)
    rate = flipped / len(verified) if verified else None
    return {
        "n_targets": len(targets),
        "n_flipped": flipped if cfg.retrain_check else None,
        "success_rate": rate,
        "by_budget": {
            str(cfg.budget): {"targets": len(targets), "flipped": flipped, "success_rate": rate}
        },
        "mean_seconds_per_target": float(np.mean(seconds)) if seconds else None,
        "max_abs_change": max((f.payload["max_abs_change"] for f in targets), default=0.0),
        "target_selection": how,
        "target_indices": [f.payload["target_index"] for f in targets],
        "step_grey_levels": cfg.step,
        "iterations": cfg.iterations,
        "budget": cfg.budget,
        "select": cfg.select,
        "objective": cfg.objective,
        "frozen": cfg.frozen,
        "trained_params": list(setup.fm.names),
        "num_params": setup.fm.num_params,
        "retrain_check": cfg.retrain_check,
        "solver": setup.inf.solver.describe(),
        "train_info": setup.train_info,
        "prepare_seconds": setup.seconds,
        "n_train": int(setup.x.shape[0]),
        "n_test": int(setup.x_test.shape[0]),
        "config": cfg.to_dict(),
        "finding_kinds": ["target", "poison:t{target_index}"],
        "note": (
            f"each pixel moved by at most {HALF_GREY} grey levels, so the poisoned images round to "
            "the stored 8-bit bytes exactly: the attack works only on a pipeline that trains on "
            "the float images; flipped is decided by retraining, never by the prediction"
        ),
    }


# ---- artefacts ------------------------------------------------------------------------------
def _save_artifacts(
    out_dir: Path,
    t: int,
    rows: Tensor,
    original: np.ndarray,
    perturbed: np.ndarray,
    train: Examples,
    test: Examples,
) -> dict[str, str]:
    npz_name, png_name = f"attack_t{t}.npz", f"attack_t{t}.png"
    idx = rows.numpy()
    np.savez_compressed(
        out_dir / npz_name,
        x_perturbed=perturbed.astype(np.float64),
        x_original=original,
        training_indices=idx,
        training_keys=np.array([train.keys[i] for i in idx], dtype=str),
        target_index=np.array(t),
        target_key=np.array(test.keys[t], dtype=str),
    )
    preview(original, perturbed).save(out_dir / png_name)
    return {"npz_path": npz_name, "png_path": png_name}


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """(H, W) or (C, H, W) with C in (1, 3) -> (H, W) or (H, W, 3) for PIL."""
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
        return img[..., 0] if img.shape[-1] == 1 else img
    return img


def preview(original: np.ndarray, perturbed: np.ndarray, target_px: int = 128):
    """One row per poisoned image: original | perturbed | difference (x255 around mid-grey)."""
    from PIL import Image

    tiles = []
    for o, p in zip(original, perturbed, strict=True):
        diff = 127.5 + 255.0 * (p - o.astype(np.float64))  # +-0.5 grey level -> full range
        row = [o.astype(np.float64), p, diff]
        tiles.append(np.concatenate([_as_hwc(np.clip(a, 0, 255)) for a in row], axis=1))
    grid = np.rint(np.concatenate(tiles, axis=0)).astype(np.uint8)
    h = _as_hwc(original[0]).shape[0]
    zoom = max(1, target_px // max(h, 1))
    img = Image.fromarray(grid)
    return img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
