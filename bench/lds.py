"""LDS of every solver of ours next to dattri's attributors, on the same trained model and the
same ground truth (one set of half-subset retrains), in one run.

    .venv-bench/bin/python bench/lds.py [--datasets digits,digits28] [--models logreg,mlp]
                                        [--subsets 50] [--test-points 50]

The model is trained once by auditor (float64, weight decay 0.01, full-batch L-BFGS); the ground
truth is its test losses after retraining with the same recipe on S seeded half-subsets
(`auditor.analyses.lds`). Ours: `I_up,loss` from each solver (its default or automatic damping).
dattri (pip package `dattri`, in .venv-bench): explicit IF, CG, LiSSA, Arnoldi, EK-FAC, TracIn
and TRAK on the same weights, each with the model's weight decay as its regularization/damping
(their loss has no L2 term, so this makes their Hessian the one the model was trained with);
TracIn and TRAK from this one checkpoint (TRAK-1, not the published TRAK-50). Scores are scored
with dattri's own convention (higher = helps the test point, against the negative test loss).
`digits28` is sklearn's digits upsampled to 28x28 (p = 7,850 for logreg).
Prints one markdown table; BENCHMARKS.md keeps the latest.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.analyses.fitting import fit_model  # noqa: E402
from auditor.analyses.lds import lds_per_test, subset_masks, subset_outcomes  # noqa: E402
from auditor.analyses.settings import ModelSpec, SolverSpec  # noqa: E402
from auditor.analyses.validate import split_holdout  # noqa: E402
from auditor.data.base import Examples  # noqa: E402
from auditor.data.bundled import digits  # noqa: E402

OURS = ("direct", "cg", "lissa", "arnoldi", "ekfac")
WEIGHT_DECAY = 0.01


def dataset(name: str) -> Examples:
    d = digits()
    if name == "digits":
        return d
    if name == "digits28":
        x = torch.nn.functional.interpolate(torch.tensor(d.x, dtype=torch.float32)[:, None], size=(28, 28), mode="bilinear")
        x = x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        return Examples(x, d.y, d.keys, source="digits28", is_image=True)
    raise SystemExit(f"unknown dataset {name}")


def lds_mean(scores: np.ndarray, masks: np.ndarray, outcomes: np.ndarray) -> float:
    return float(np.nanmean(lds_per_test(scores, masks, outcomes)))


def dattri_scores(method: str, module, x, y, x_test, y_test) -> np.ndarray:
    """(n, M) dattri attributions, higher = the training point lowers the test loss."""
    from dattri.algorithm.influence_function import (
        IFAttributorArnoldi,
        IFAttributorCG,
        IFAttributorEKFAC,
        IFAttributorExplicit,
        IFAttributorLiSSA,
    )
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    def f(params, batch):  # a batch (the IF attributors)
        xb, yb = batch
        return nn.functional.cross_entropy(torch.func.functional_call(module, params, xb), yb.long())

    def f_one(params, pair):  # one example (TracIn, TRAK vmap over examples)
        xi, yi = pair
        logits = torch.func.functional_call(module, params, xi.unsqueeze(0))
        return nn.functional.cross_entropy(logits, yi.long().unsqueeze(0))

    per_example = method in ("TracIn", "TRAK-1")
    task = AttributionTask(loss_func=f_one if per_example else f, model=module, checkpoints=module.state_dict())
    train = DataLoader(TensorDataset(x, y), batch_size=len(y))
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=len(y_test))
    if method == "IF explicit":
        att = IFAttributorExplicit(task, regularization=WEIGHT_DECAY)
    elif method == "IF CG":
        att = IFAttributorCG(task, regularization=WEIGHT_DECAY, max_iter=50)
    elif method == "IF LiSSA":
        att = IFAttributorLiSSA(task, damping=WEIGHT_DECAY, recursion_depth=1000, batch_size=64)
    elif method == "IF Arnoldi":
        att = IFAttributorArnoldi(task, regularization=WEIGHT_DECAY, proj_dim=100)
    elif method == "IF EK-FAC":
        att = IFAttributorEKFAC(task, damping=WEIGHT_DECAY)
    elif method == "TracIn":
        att = TracInAttributor(task, weight_list=torch.tensor([1.0]), normalized_grad=False)
        return att.attribute(train, test).detach().cpu().numpy()
    elif method == "TRAK-1":

        def m(params, pair):
            xi, yi = pair
            logits = torch.func.functional_call(module, params, xi.unsqueeze(0))
            return torch.exp(-nn.functional.cross_entropy(logits, yi.long().unsqueeze(0)))

        att = TRAKAttributor(task, correct_probability_func=m, projector_kwargs={"proj_dim": 512, "device": "cpu"})
        att.cache(train)
        return att.attribute(test).detach().cpu().numpy()
    else:
        raise ValueError(method)
    att.cache(train)
    return att.attribute(train, test).detach().cpu().numpy()


DATTRI = ("IF explicit", "IF CG", "IF LiSSA", "IF Arnoldi", "IF EK-FAC", "TracIn", "TRAK-1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--models", default="logreg,mlp")
    ap.add_argument("--subsets", type=int, default=50)
    ap.add_argument("--test-points", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma-separated methods to leave out")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print("| data | model | p | method | LDS | seconds |")
    print("|---|---|---|---|---|---|", flush=True)
    for data in args.datasets.split(","):
        full = dataset(data)
        train_set, test_set = split_holdout(full, 0.2, args.seed)
        k = full.num_classes
        for model in args.models.split(","):
            spec = ModelSpec(name=model, weight_decay=WEIGHT_DECAY, seed=args.seed)
            fitted = fit_model(train_set, spec, num_classes=k).as_float64()
            rows = np.sort(np.random.default_rng(args.seed).permutation(len(test_set))[: args.test_points])
            x_test = fitted.tensor(test_set.x[rows])
            y_test = torch.as_tensor(test_set.y[rows], dtype=torch.long)
            p = sum(q.numel() for q in fitted.module.parameters())
            masks = subset_masks(len(train_set), args.subsets, 0.5, args.seed)
            start = time.perf_counter()
            outcomes = subset_outcomes(train_set, test_set.x[rows], test_set.y[rows], spec, masks, k)
            print(f"| {data} | {model} | {p} | (ground truth: {args.subsets} retrains) | - | {time.perf_counter() - start:.1f} |", flush=True)
            for solver in OURS:
                name = f"auditor {solver}"
                if name in skip or solver in skip:
                    continue
                start = time.perf_counter()
                try:
                    inf = fitted.influence(SolverSpec(solver, None), few_solves=True)
                    scores = inf.up_loss(fitted.x, fitted.y, x_test, y_test).cpu().numpy()
                    lds, note = lds_mean(scores, masks, outcomes), f" (damping {inf.solver.damping:.3g})"
                except Exception as exc:  # noqa: BLE001 - a bench row says what failed
                    lds, note = float("nan"), f" (failed: {type(exc).__name__}: {str(exc)[:200]})"
                print(f"| {data} | {model} | {p} | {name}{note} | {lds:.3f} | {time.perf_counter() - start:.1f} |", flush=True)
            for method in DATTRI:
                if method in skip:
                    continue
                start = time.perf_counter()
                try:  # dattri's attributors work in float32 (LiSSA and Arnoldi fail on float64)
                    module32 = copy.deepcopy(fitted.module).float()
                    scores = dattri_scores(method, module32, fitted.x.float(), fitted.y, x_test.float(), y_test)
                    bad = int((~np.isfinite(scores)).sum())
                    lds = lds_mean(np.nan_to_num(scores), masks, -outcomes) if bad < scores.size else float("nan")
                    note = f" ({bad} of {scores.size} scores NaN/inf, taken as 0)" if bad else ""
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc(file=sys.stderr)
                    lds, note = float("nan"), f" (failed: {type(exc).__name__}: {str(exc)[:200]})"
                print(f"| {data} | {model} | {p} | dattri {method}{note} | {lds:.3f} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
