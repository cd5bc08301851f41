"""Fit once, score many: the same label check twice, the second reusing the stored trained model
and curvature (issue 14's aim: the second audit at least 3x faster).

    .venv/bin/python bench/reuse.py [--n 10000]

Two settings on 28x28 images (bench/user_model.py's data: upsampled, shifted digits, 10% of
labels flipped): a team's float32 CNN of about 120k parameters given as safetensors weights
(--no-train, EK-FAC), and logistic regression that auditor trains itself (EK-FAC). Each audit
goes through `label_check.run` with the real artifact store (SQLite + safetensors files in a
scratch folder); seconds are wall seconds of the whole analysis. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from user_model import make_data, team_training  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    from auditor.analyses.base import AnalysisInput
    from auditor.analyses.label_check import run
    from auditor.artifacts import ArtifactStore, list_artifacts
    from auditor.data.base import Examples
    from auditor.data.keys import example_keys
    from auditor.factories import local_models
    from auditor.store import open_store

    x, y, _ = make_data(args.n)
    ex = Examples(x, y, example_keys(x, y), is_image=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "team.safetensors"
        print("training the team's CNN ...", file=sys.stderr, flush=True)
        team_training(x, y, args.epochs, weights)
        sessions = open_store(f"sqlite:///{tmp / 'a.db'}")
        settings = {
            f"team CNN, --no-train, EK-FAC (n={args.n:,})": {
                "model": {"name": "user_models:bench_cnn", "weights": str(weights), "train": False, "device": "cpu"},
                "solver": {"name": "ekfac"}, "why_top": 0,
            },
            f"logreg trained by auditor, EK-FAC (n={args.n:,})": {
                "model": {"name": "logreg", "device": "cpu"}, "solver": {"name": "ekfac"}, "why_top": 0,
            },
        }  # fmt: skip
        for name, params in settings.items():
            store = ArtifactStore(sessions, None, folder=tmp / name.split(",")[0].replace(" ", "_"))
            store.folder.mkdir(parents=True, exist_ok=True)
            times, results = [], []
            for attempt in ("first", "second"):
                print(f"{name}: {attempt} audit ...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                with local_models():  # the team's factory runs here, as with `auditor audit run`
                    results.append(run(AnalysisInput(ex, None, params, cache=store)))
                times.append(time.perf_counter() - start)
            a = np.array([f.payload["self_influence"] for f in sorted(results[0].findings, key=lambda f: f.example_index)])
            b = np.array([f.payload["self_influence"] for f in sorted(results[1].findings, key=lambda f: f.example_index)])
            with sessions() as s:
                size = sum(i.bytes for i in list_artifacts(s, store.folder) if Path(i.path).parent == store.folder)
            reused = results[1].summary["curvature"]["reused"]
            rows.append((name, times[0], times[1], times[0] / times[1], size, reused, float(np.max(np.abs(a - b) / np.abs(a).max()))))
    print("| setting | first audit (s) | second audit (s) | speed-up | stored (MiB) | curvature reused | max rel. score diff |")
    print("|---|---|---|---|---|---|---|")
    for name, t1, t2, sp, size, reused, diff in rows:
        print(f"| {name} | {t1:.1f} | {t2:.1f} | {sp:.1f}x | {size / 2**20:.1f} | {reused} | {diff:.1e} |")


if __name__ == "__main__":
    main()
