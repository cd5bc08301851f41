"""The GPU check, one short script for a lent accelerator: a label check of a team's float32 CNN
(--no-train, safetensors weights) with --device cuda and with --device cpu on the same data,
compared score by score. Pass: Spearman >= 0.99 for self-influence and for the ranking score.

    .venv/bin/python bench/gpu_check.py --n 10000          # prints one markdown table

Uses bench/user_model.py's data and model (no downloads); exits 1 when CUDA is missing or the
check fails, so a wrapper notices.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT))


def audit(x: np.ndarray, y: np.ndarray, weights: Path, device: str) -> tuple[dict, float, dict]:
    import torch

    from auditor.analyses.base import AnalysisInput
    from auditor.analyses.label_check import run
    from auditor.data.base import Examples

    ex = Examples(x, y, [str(i) for i in range(len(y))], is_image=True)
    params = {"model": {"name": "user_models:bench_cnn", "weights": str(weights), "train": False, "device": device}}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run(AnalysisInput(ex, None, params))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    by_index = {f.example_index: f for f in result.findings}
    return by_index, seconds, result.summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import torch
    from scipy.stats import spearmanr
    from user_model import make_data, team_training

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    x, y, _ = make_data(args.n)
    weights = scratch / "cnn.safetensors"
    team_training(x, y, args.epochs, weights)
    gpu, gpu_s, summary = audit(x, y, weights, "cuda")
    cpu, cpu_s, _ = audit(x, y, weights, "cpu")
    idx = sorted(gpu)
    rho_si = spearmanr([gpu[i].payload["self_influence"] for i in idx], [cpu[i].payload["self_influence"] for i in idx])[0]
    rho_score = spearmanr([gpu[i].score for i in idx], [cpu[i].score for i in idx])[0]
    device = torch.cuda.get_device_name(0)
    print(f"| n | device | solver | seconds cuda | seconds cpu | Spearman self-influence | Spearman ranking ({summary['rank_by']}) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.n} | {device} | {summary['curvature']['solver']} | {gpu_s:.1f} | {cpu_s:.1f} | {rho_si:.4f} | {rho_score:.4f} |")
    ok = rho_si >= 0.99 and rho_score >= 0.99
    print("PASS" if ok else "FAIL: Spearman below 0.99")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
