"""Influence vs leave-one-out retraining for each model and solver, as a markdown table.

    .venv/bin/python bench/validate.py [--n 1797] [--retrains 30] [--runs logreg:direct,logreg:cg,...]

Each run trains on the first N digits (20% held out for the test point), picks the misclassified
test point with the highest loss, retrains without each of the K most influential training
points and reports Pearson / Spearman r between predicted and actual change in test loss.
"""

from __future__ import annotations

import argparse
import time

from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.analyses.validate import ValidationConfig, validate
from auditor.data.base import Examples
from auditor.data.bundled import digits

DEFAULT_RUNS = "logreg:direct:0,logreg:cg:0,logreg:lissa:0,logreg:arnoldi:0,logreg:ekfac:0,mlp:direct:0.001,cnn:direct:0.001,cnn:ekfac:0.001"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1797)
    ap.add_argument("--retrains", type=int, default=30)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="model:solver:damping, comma-separated")
    args = ap.parse_args()
    ex = digits()
    ex = Examples(ex.x[: args.n], ex.y[: args.n], ex.keys[: args.n], is_image=True)
    print("| model | solver | damping | n | retrains | Pearson r | Spearman r | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs.split(","):
        model, solver, damping = run.split(":")
        t0 = time.perf_counter()
        r = validate(ex, None, ValidationConfig(ModelSpec(model), SolverSpec(solver, float(damping)), retrains=args.retrains))
        dt = time.perf_counter() - t0
        print(f"| {model} | {solver} | {damping} | {args.n} | {r.retrains} | {r.pearson:.4f} | {r.spearman:.4f} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    main()
