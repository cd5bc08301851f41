"""The exact Hessian of logistic regression on 28x28 images (p = 7,850): the closed form for a
final Linear layer against the p HVPs it replaced, on the same model and data.

    .venv/bin/python bench/exact_hessian.py [--n 5000] [--hvp-n 1000]

Data: sklearn's digits upsampled to 28x28 and tiled with 1-pixel shifts up to n rows. The HVP
build is timed on --hvp-n rows (its cost is linear in n; the row says so) and both are checked
equal there. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from auditor.data.bundled import digits

    d = digits()
    x = torch.nn.functional.interpolate(torch.tensor(d.x, dtype=torch.float64)[:, None], size=(28, 28), mode="bilinear")[:, 0]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(d.y), n)
    shifts = rng.integers(-1, 2, (n, 2))
    xs = torch.stack([torch.roll(x[j], (int(a), int(b)), (0, 1)) for j, (a, b) in zip(pick, shifts, strict=True)])
    return xs, torch.as_tensor(d.y[pick])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--hvp-n", type=int, default=1000)
    args = ap.parse_args()
    from auditor.influence import FunctionalModel
    from auditor.influence.hvp import exact_hessian, hvp, last_linear_hessian
    from auditor.models import TrainConfig, build_model, train

    x, y = data(args.n)
    model = build_model("logreg", x.numpy(), 10, True)
    train(model, x, y, TrainConfig(weight_decay=0.01, max_iter=200))
    fm = FunctionalModel.from_module(model, weight_decay=0.01)
    p = fm.num_params
    print("| method | n | p | seconds |")
    print("|---|---|---|---|")
    start = time.perf_counter()
    H = exact_hessian(fm, x, y)
    print(f"| closed form (exact_hessian) | {args.n} | {p} | {time.perf_counter() - start:.1f} |", flush=True)
    xs, ys = x[: args.hvp_n], y[: args.hvp_n]
    start = time.perf_counter()
    eye = torch.eye(p, dtype=torch.float64)
    blocks = torch.cat([hvp(fm, xs, ys, eye[i : i + 128], 512) for i in range(0, p, 128)])
    seconds = time.perf_counter() - start
    print(f"| p HVPs in blocks of 128 (the previous build) | {args.hvp_n} | {p} | {seconds:.1f} (about {seconds * args.n / args.hvp_n:.0f} at n = {args.n}) |")
    closed = last_linear_hessian(fm, xs, ys)
    err = float((closed - 0.5 * (blocks + blocks.T)).abs().max() / blocks.abs().max())
    print(f"\nmax relative difference of the two on {args.hvp_n} rows: {err:.1e}; H at n = {args.n}: {tuple(H.shape)}")


if __name__ == "__main__":
    main()
