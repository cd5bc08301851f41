"""Label check at scale: every score for each of N examples with the CNN on one CPU.

    .venv/bin/python bench/label_check_scale.py [--n 60000] [--solver ekfac] [--size 28]

No 60k-image data set ships with the allowed packages, so the 1,797 digits are tiled with random
one-pixel shifts and grey-level noise (uint8, 8x8) up to N, and 10% of labels are flipped. Prints
the seconds of each phase and the peak RSS; training uses a few epochs of minibatch Adam and an
L-BFGS polish on a 20k-row subset (TrainConfig defaults for large n).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from auditor.analyses.label_check import (
    LabelCheckConfig,
    choose_ranking,
    ranking_score,
    recall_at_budgets,
    score_examples,
)
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples
from auditor.data.bundled import digits, flip_labels
from auditor.data.keys import example_keys


def tiled_digits(n: int, seed: int = 0, size: int = 8) -> Examples:
    base = digits()
    if size != 8:  # upsampled to size x size (28: MNIST's size), still uint8 0..255
        import torch

        up = torch.nn.functional.interpolate(torch.tensor(base.x, dtype=torch.float32)[:, None], size=(size, size), mode="bilinear")
        base = Examples(up[:, 0].round().clamp(0, 255).to(torch.uint8).numpy(), base.y, base.keys, is_image=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), n)
    x = base.x[idx].astype(np.int16)
    k = max(1, size // 8)  # shift by about one original pixel
    shifts = rng.integers(-1, 2, (n, 2)) * k
    for i, (dr, dc) in enumerate(shifts):
        x[i] = np.roll(x[i], (dr, dc), axis=(0, 1))
    x = np.clip(x + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
    y = base.y[idx]
    return Examples(x, y, example_keys(x, y), source=f"digits-tiled-{n}", is_image=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--solver", default="ekfac")
    ap.add_argument("--adam-epochs", type=int, default=3, help="60: the built-in cnn's own recipe (stops on stall)")
    ap.add_argument("--size", type=int, default=8, help="image side: 8 (digits as they are) or e.g. 28")
    args = ap.parse_args()
    noisy, flipped = flip_labels(tiled_digits(args.n, size=args.size), 0.1, 0)
    phases: dict[str, float] = {}
    current = {"key": "start", "since": time.perf_counter()}

    def progress(fraction: float, message: str) -> None:
        """Charge the time since the last message to the phase that message named."""
        now = time.perf_counter()
        phases[current["key"]] = phases.get(current["key"], 0.0) + now - current["since"]
        current["key"], current["since"] = message.split(":")[0].split(" on ")[0], now

    cfg = LabelCheckConfig(
        model=ModelSpec(name="cnn", adam_epochs=args.adam_epochs, max_iter=100),
        solver=SolverSpec(args.solver, None if args.solver == "auto" else 0.0),
    )
    t0 = time.perf_counter()
    scores = score_examples(noisy, cfg, progress)
    total = time.perf_counter() - t0
    progress(1.0, "end")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recall = {}
    for rank_by in ("auto", "self-influence", "loss"):
        order = scores.indices[np.argsort(-ranking_score(scores, rank_by), kind="stable")]
        recall[rank_by] = recall_at_budgets(order, flipped)[0.1]
    auto = choose_ranking(scores, "auto")[0]
    print("| n | size | solver | total s | peak RSS MB | recall@10% auto (chose) / self-influence / loss | phases (s) |")
    print("|---|---|---|---|---|---|---|")
    ph = ", ".join(f"{k}: {v:.0f}" for k, v in phases.items() if v >= 1)
    print(
        f"| {args.n} | {args.size}x{args.size} | {args.solver} -> {scores.curvature.get('solver')} | {total:.0f} | {rss:.0f} | {recall['auto']:.3f} ({auto}) / "
        f"{recall['self-influence']:.3f} / {recall['loss']:.3f} | {ph} |"
    )


if __name__ == "__main__":
    main()
