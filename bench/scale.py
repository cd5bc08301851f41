"""Label check at scale: every score for each of N examples with the CNN on one CPU.

    .venv/bin/python bench/scale.py [--n 60000] [--solver ekfac]

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

from auditor.analyses.common import ModelSpec, SolverSpec
from auditor.analyses.label_check import (
    LabelCheckConfig,
    choose_ranking,
    ranking_score,
    recall_at_budgets,
    score_examples,
)
from auditor.data.base import Examples
from auditor.data.bundled import digits, flip_labels
from auditor.data.keys import example_keys


def tiled_digits(n: int, seed: int = 0) -> Examples:
    base = digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), n)
    x = base.x[idx].astype(np.int16)
    shifts = rng.integers(-1, 2, (n, 2))
    for i, (dr, dc) in enumerate(shifts):
        x[i] = np.roll(x[i], (dr, dc), axis=(0, 1))
    x = np.clip(x + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
    y = base.y[idx]
    return Examples(x, y, example_keys(x, y), source=f"digits-tiled-{n}", is_image=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--solver", default="ekfac")
    ap.add_argument("--adam-epochs", type=int, default=3)
    args = ap.parse_args()
    noisy, flipped = flip_labels(tiled_digits(args.n), 0.1, 0)
    phases: dict[str, float] = {}
    current = {"key": "start", "since": time.perf_counter()}

    def progress(fraction: float, message: str) -> None:
        """Charge the time since the last message to the phase that message named."""
        now = time.perf_counter()
        phases[current["key"]] = phases.get(current["key"], 0.0) + now - current["since"]
        current["key"], current["since"] = message.split(":")[0].split(" on ")[0], now

    cfg = LabelCheckConfig(
        model=ModelSpec(name="cnn", adam_epochs=args.adam_epochs, max_iter=100),
        solver=SolverSpec(args.solver, 0.0),
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
    print("| n | solver | total s | peak RSS MB | recall@10% auto (chose) / self-influence / loss | phases (s) |")
    print("|---|---|---|---|---|---|")
    ph = ", ".join(f"{k}: {v:.0f}" for k, v in phases.items() if v >= 1)
    print(
        f"| {args.n} | {args.solver} | {total:.0f} | {rss:.0f} | {recall['auto']:.3f} ({auto}) / "
        f"{recall['self-influence']:.3f} / {recall['loss']:.3f} | {ph} |"
    )


if __name__ == "__main__":
    main()
