"""A team's own trained CNN, audited as it is: auditor's label check with --no-train against
kronfluence's EK-FAC self-influence on the same weights, and the training-loss ranking.

Set-up (what a team has): 10,000 grey 28x28 images (sklearn's digits, upsampled and shifted by up
to 2 pixels with a little noise so that no two are equal) with 10% of the labels flipped, and a
float32 CNN of about 120k parameters (Conv-BN-ReLU-MaxPool, a residual block, Dropout, two Linear
layers) trained with Adam for 15 epochs; its weights are saved with safetensors. Each method runs
in its own process, so its peak RSS is its own; seconds are wall seconds of the scoring only
(model loading included, data generation and the team's training excluded).

    .venv/bin/python bench/user_model.py                 # ours and the training loss
    .venv/bin/python bench/user_model.py --peer .venv-bench/bin/python   # + kronfluence

The peer needs kronfluence beside torch; bench/README.md says how to make `.venv-bench` without
a second copy of torch. Prints one markdown table (BENCHMARKS.md keeps the latest).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT))


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (n, 28, 28), noisy labels, indices of the flipped labels)."""
    import torch

    from auditor.data.bundled import digits

    d = digits()
    rng = np.random.default_rng(seed)
    base = torch.tensor(d.x, dtype=torch.float32)[:, None]
    base = torch.nn.functional.interpolate(base, size=(28, 28), mode="bilinear")[:, 0]  # digits are 0..255 already
    pick = rng.integers(0, len(d.y), n)
    shifts = rng.integers(-2, 3, (n, 2))
    x = np.empty((n, 28, 28), dtype=np.uint8)
    for i, (j, (dy, dx)) in enumerate(zip(pick, shifts, strict=True)):
        img = np.roll(base[j].numpy(), (dy, dx), axis=(0, 1)) + rng.normal(0, 8, (28, 28))
        x[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    y = d.y[pick].copy()
    flipped = np.sort(rng.choice(n, n // 10, replace=False))
    y[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return x, y, flipped


def team_training(x: np.ndarray, y: np.ndarray, epochs: int, out: Path) -> dict:
    """The team's run: Adam, batch 64, lr 1e-3; returns seconds per epoch."""
    import torch
    import user_models
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = user_models.bench_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    save_file(model.state_dict(), str(out))
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return {"epoch_seconds": seconds / epochs, "params": params, "train_agreement": acc}


# ---- methods, each run in a fresh process ------------------------------------------------------
def run_ours(data: Path, weights: Path, solver_options: dict | None = None) -> dict:
    from auditor.analyses.base import AnalysisInput
    from auditor.analyses.label_check import run
    from auditor.data.base import Examples

    z = np.load(data)
    ex = Examples(z["x"], z["y"], [str(i) for i in range(len(z["y"]))], is_image=True)
    start = time.perf_counter()
    params = {"model": {"name": "user_models:bench_cnn", "weights": str(weights), "train": False, "device": "cpu"}}
    if solver_options:
        params["solver"] = {"name": "ekfac", "options": solver_options}
    from auditor.factories import local_models

    with local_models():  # the team's factory runs here, as with `auditor audit run`
        result = run(AnalysisInput(ex, None, params))
    seconds = time.perf_counter() - start
    order = [f.example_index for f in sorted(result.findings, key=lambda f: f.rank)]
    si = {f.example_index: f.payload["self_influence"] for f in result.findings}
    return {
        "seconds": seconds,
        "ranking": order,
        "self_influence_ranking": sorted(si, key=lambda i: -si[i]),
        "rank_by": result.summary["rank_by"],
        "solver": result.summary["curvature"]["solver"],
        "damping": result.summary["curvature"]["damping"],
    }


def run_loss(data: Path, weights: Path) -> dict:
    import torch
    import user_models
    from safetensors.torch import load_file

    z = np.load(data)
    start = time.perf_counter()
    model = user_models.bench_cnn()
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    with torch.no_grad():
        loss = torch.cat([
            torch.nn.functional.cross_entropy(
                model(torch.as_tensor(z["x"][i : i + 1024], dtype=torch.float32)),
                torch.as_tensor(z["y"][i : i + 1024]),
                reduction="none",
            )
            for i in range(0, len(z["y"]), 1024)
        ])  # fmt: skip
    return {"seconds": time.perf_counter() - start, "ranking": torch.argsort(-loss).tolist()}


def classification_task():
    """kronfluence's Task for cross-entropy classification: summed loss, and labels drawn from the
    model's own predictions when it asks for a sample (the true Fisher, as auditor's EK-FAC)."""
    import torch
    import torch.nn.functional as F
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            xb, yb = batch
            logits = model(xb)
            if sample:
                with torch.no_grad():
                    yb = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, yb, reduction="sum")

        def compute_measurement(self, batch, model):
            xb, yb = batch
            return F.cross_entropy(model(xb), yb, reduction="sum")

    return Classification()


def run_kronfluence(data: Path, weights: Path) -> dict:
    import torch
    import user_models
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from safetensors.torch import load_file
    from torch.utils.data import TensorDataset

    z = np.load(data)
    ds = TensorDataset(torch.as_tensor(z["x"], dtype=torch.float32), torch.as_tensor(z["y"]))
    start = time.perf_counter()
    model = user_models.bench_cnn()
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    task = classification_task()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as scratch:
        analyzer = Analyzer("bench", model=model, task=task, cpu=True, disable_model_save=True,
                            disable_tqdm=True, output_dir=scratch)  # fmt: skip
        analyzer.fit_all_factors("ekfac", dataset=ds, per_device_batch_size=256,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)  # fmt: skip
        analyzer.compute_self_scores("self", factors_name="ekfac", train_dataset=ds,
                                     per_device_train_batch_size=256, overwrite_output_dir=True)  # fmt: skip
        scores = analyzer.load_self_scores("self")["all_modules"]
    return {"seconds": time.perf_counter() - start, "ranking": torch.argsort(-scores).tolist()}


FIT_SAMPLE = 2048
METHODS = {
    "ours": run_ours,
    f"ours-fit{FIT_SAMPLE}": lambda d, w: run_ours(d, w, {"fit_rows": FIT_SAMPLE}),
    "loss": run_loss,
    "kronfluence": run_kronfluence,
}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage: Linux carries ru_maxrss over from the
    parent through fork and exec, so every child would report at least the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, data: str, weights: str, out: str) -> None:
    doc = METHODS[method](Path(data), Path(weights))
    doc["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(doc))


def recall(ranking: list[int], flipped: np.ndarray, budget: float = 0.1) -> float:
    top = set(ranking[: int(round(budget * len(ranking)))])
    return len(top.intersection(int(i) for i in flipped)) / len(flipped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--peer", help="python with kronfluence installed (e.g. .venv-bench/bin/python)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # method data weights out
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import torch

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-user-model-"))
    x, y, flipped = make_data(args.n)
    np.savez(scratch / "data.npz", x=x, y=y)
    weights = scratch / "cnn.safetensors"
    team = team_training(x, y, args.epochs, weights)
    print(f"team model: {team['params']} parameters, {args.epochs} Adam epochs at {team['epoch_seconds']:.1f} s each, "
          f"fits {team['train_agreement']:.1%} of the given labels; n = {args.n}, {len(flipped)} flipped", flush=True)  # fmt: skip
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    for method in METHODS:
        python = args.peer if method == "kronfluence" else sys.executable
        if python is None:
            continue
        out = scratch / f"{method}.json"
        proc = subprocess.run([python, __file__, "--child", method, str(scratch / "data.npz"), str(weights), str(out)],
                              env=env, capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            print(f"{method} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        doc = json.loads(out.read_text())
        rows.append((method, doc))
        if method == "ours":
            rows.append(("ours (self-influence ranking)", {**doc, "ranking": doc["self_influence_ranking"]}))
    print()
    print("| method | seconds | / training epoch | peak RSS MB | recall@10% |")
    print("|---|---|---|---|---|")
    for name, doc in rows:
        extra = f" ({doc['rank_by']}, {doc['solver']}, damping {doc['damping']:.2g})" if "rank_by" in doc and "self-influence" not in name else ""
        print(f"| {name}{extra} | {doc['seconds']:.1f} | {doc['seconds'] / team['epoch_seconds']:.2f} | "
              f"{doc['peak_rss_mb']:.0f} | {recall(doc['ranking'], flipped):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
