"""EK-FAC over all of a torchvision ResNet-18 (11.2M parameters counted): seconds to fit the
factors and to score self-influence and leave-one-out outputs, per image, on the team-model
fixture (`tests/fixtures/user_models.py:resnet18`, 28x28 grey input).

    .venv/bin/python bench/resnet_ekfac.py [--n 256] [--threads 2]

Random weights and images: the timing does not depend on them. Prints one markdown row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    import torch
    import user_models

    from auditor.influence import FunctionalModel, InfluenceModel, make_solver
    from auditor.influence.ekfac import kfac_parameters

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = user_models.resnet18().eval()
    x = torch.randint(0, 255, (args.n, 28, 28)).float()
    y = torch.randint(0, 10, (args.n,))
    fm = FunctionalModel(model, kfac_parameters(model, [n for n, _ in model.named_parameters()]))
    start = time.perf_counter()
    inf = InfluenceModel(fm, make_solver("ekfac", damping=None, batch_size=args.batch_size)).fit(x, y)
    fitted = time.perf_counter()
    inf.self_scores(x, y)
    scored = time.perf_counter()
    print("| model | parameters counted | n | threads | fit s | score s | score s / image |")
    print("|---|---|---|---|---|---|---|")
    print(f"| resnet18 (28x28 grey) | {fm.num_params} | {args.n} | {args.threads} | {fitted - start:.1f} | "
          f"{scored - fitted:.1f} | {(scored - fitted) / args.n:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
