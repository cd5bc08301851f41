"""Peak memory of a label check of a team's trained model, data streamed from its stored bytes
(`Rows`, the default) against converted to float up front (the old path), at several n.

    .venv/bin/python bench/rows_memory.py --sizes 10000,40000

28x28 digits tiled with small shifts (uint8), the fixture CNN `user_models:small_cnn` (float32,
about 30k parameters) with random weights given as safetensors, --no-train, EK-FAC,
--why-top 0. Each run is its own process, so its peak RSS (ru_maxrss) is its own. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(n: int, mode: str, weights: str) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import numpy as np
    import torch

    from auditor.analyses import fitting
    from auditor.analyses.base import AnalysisInput
    from auditor.analyses.label_check import run
    from auditor.data.base import Examples
    from auditor.data.bundled import digits
    from auditor.data.keys import example_keys
    from auditor.factories import local_models

    d = digits()
    base = torch.nn.functional.interpolate(torch.tensor(d.x, dtype=torch.float32)[:, None], size=(28, 28), mode="bilinear")[:, 0]
    base = base.round().clamp(0, 255).to(torch.uint8).numpy()
    idx = np.arange(n) % len(base)
    x = np.roll(base[idx], 1, axis=2)
    x[len(base):] = np.clip(x[len(base):].astype(np.int16) + (np.arange(n - len(base)) % 5)[:, None, None], 0, 255).astype(np.uint8)
    y = d.y[idx]
    ex = Examples(x, y, example_keys(x, y), is_image=True)
    if mode == "in-memory":
        fitting.rows_of = lambda e, dtype, device: fitting.as_tensors(e, dtype, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = {"model": {"name": "user_models:small_cnn", "weights": weights, "train": False},
              "solver": {"name": "ekfac"}, "why_top": 0}  # fmt: skip
    start = time.perf_counter()
    with local_models():
        run(AnalysisInput(ex, None, params))
    return {"seconds": time.perf_counter() - start, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "before_mib": before / 1024}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,40000")
    ap.add_argument("--one", nargs=3, metavar=("N", "MODE", "WEIGHTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.one[2])))
        return
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import torch
    import user_models
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "w.safetensors")
        torch.manual_seed(0)
        save_file(user_models.small_cnn().eval().state_dict(), weights)
        rows = []
        for n in [int(s) for s in args.sizes.split(",")]:
            for mode in ("streamed", "in-memory"):
                print(f"n={n:,} {mode} ...", file=sys.stderr, flush=True)
                out = subprocess.run([sys.executable, __file__, "--one", str(n), mode, weights], capture_output=True, text=True, check=True)
                rows.append((n, mode, json.loads(out.stdout.strip().splitlines()[-1])))
    print("| n | data | stored bytes (MiB) | RSS before the audit (MiB) | peak RSS (MiB) | the audit's own (MiB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for n, mode, r in rows:
        own = r["peak_mib"] - r["before_mib"]
        print(f"| {n:,} | {mode} | {n * 784 / 2**20:.0f} | {r['before_mib']:.0f} | {r['peak_mib']:.0f} | {own:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
