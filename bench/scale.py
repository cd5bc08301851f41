"""Self-influence of every example at scale: seconds per phase, examples/s and peak RSS for
auditor's label check (data read from disk a batch at a time) against kronfluence's EK-FAC on the
same model, weights and data, in one run (issue 14).

    .venv-bench/bin/python bench/scale.py                       # everything below (about an hour on 2 cores)
    .venv-bench/bin/python bench/scale.py --workloads cnn --sizes 10000 --curve ""   # one row

Workloads (a team's float32 model given as safetensors weights, audited with --no-train):
- cnn: `bench_cnn` (Conv-BN-ReLU, a residual block, two Linear layers; 120k parameters) on 28x28
  grey images: sklearn's digits upsampled, shifted and noised, 10% of labels flipped
  (bench/user_model.py's data), n = --sizes.
- resnet: `small_resnet18` (ResNet-18's layout at a quarter of its width, 0.7M parameters, BatchNorm)
  on 3x32x32 colour images (the same digits padded to 32x32 and tinted), n = --resnet-sizes.
- curve: the peak-RSS curve up to n = 1M with a model cheap enough for two cores: a CNN's last
  layer (`linear_head`, 650 parameters) on 64 stored features per example, n = --curve.

The data sets are uncompressed .npz files under --data-dir (made once, then reused), read by
auditor as a team's data set would be (`load_examples`, kept on disk: AUDITOR_STREAM_BYTES=0).
kronfluence gets a torch Dataset over the same arrays loaded in memory as stored (uint8 pixels,
converted to float per item), which is how its examples feed it. Each method runs in its own
process; peak RSS is that process's VmHWM, and "idle" is its RSS after imports, before any data.
Phases: load (ours: the scan that computes the content keys), fit (curvature factors), score
(self-influence of every example, and for ours the findings made from it); ours also reports
storing the findings in a fresh SQLite store (not in total or examples/s) and a second audit of
the same model and data with the fitted factors kept (fit once, score many). Spearman compares each ranking with ours.
Two torch threads per process, OMP_WAIT_POLICY=PASSIVE. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

MODELS = {"cnn": "user_models:bench_cnn", "resnet": "user_models:small_resnet18", "curve": "user_models:linear_head"}


# ---- data and weights, made once ----------------------------------------------------------------
def make_images(kind: str, n: int, path: Path) -> None:
    from user_model import make_data

    x, y, _ = make_data(n)
    if kind == "resnet":  # 3x32x32: padded to 32x32 and tinted with a random colour per image
        rng = np.random.default_rng(1)
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        tint = rng.uniform(0.3, 1.0, (n, 3, 1, 1)).astype(np.float32)
        x = (padded[:, None].astype(np.float32) * tint).round().astype(np.uint8)
    np.savez(path, x=x, y=y)


def make_features(n: int, path: Path, d: int = 64, k: int = 10) -> None:
    """Class means plus noise, 10% of labels flipped: what a trained CNN's penultimate layer gives."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1.5, (k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 100_000):
        b = min(a + 100_000, n)
        x[a:b] = means[y[a:b]] + rng.normal(0, 1, (b - a, d)).astype(np.float32)
    flip = rng.choice(n, n // 10, replace=False)
    y[flip] = (y[flip] + rng.integers(1, k, len(flip))) % k
    np.savez(path, x=x, y=y)


def data_file(kind: str, n: int, folder: Path) -> Path:
    path = folder / f"{kind}-{n}.npz"
    if not path.exists():
        print(f"making {path} ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".tmp.npz")
        (make_features(n, tmp) if kind == "curve" else make_images(kind, n, tmp))
        tmp.rename(path)
    return path


def weights_file(kind: str, folder: Path) -> Path:
    """The team's training: Adam for 2 epochs on 5,000 examples (trained, not to a minimum)."""
    path = folder / f"{kind}.safetensors"
    if path.exists():
        return path
    import torch
    from safetensors.torch import save_file

    from auditor.factories import local_models
    from auditor.models.loading import build_user_model

    z = np.load(data_file(kind, 10_000, folder))
    x, y = torch.as_tensor(z["x"][:5000], dtype=torch.float32), torch.as_tensor(z["y"][:5000])
    torch.manual_seed(0)
    with local_models():
        model = build_user_model(MODELS[kind], tuple(x.shape[1:]), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    save_file(model.eval().state_dict(), str(path))
    return path


# ---- methods, each in a fresh process -----------------------------------------------------------
def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemoryCache:
    """A FitCache in this process (the real one is auditor.artifacts.ArtifactStore): the second
    audit finds the curvature the first one fitted."""

    def __init__(self) -> None:
        self.kept: dict = {}

    def load(self, kind: str, key: str):
        return self.kept.get((kind, key))

    def save(self, kind: str, key: str, tensors: dict, meta: dict) -> None:
        self.kept[(kind, key)] = (tensors, meta)


def store_findings(findings, folder: Path) -> float:
    """Seconds to store the findings in a fresh SQLite store (the embedded default)."""
    from auditor.data.base import Examples
    from auditor.store import audits as audit_store
    from auditor.store import datasets as dataset_store
    from auditor.store import findings as finding_store
    from auditor.store import open_store

    sessions = open_store(f"sqlite:///{folder / 'auditor.db'}")
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "bench", str(folder), "npz")
        s.flush()
        dataset_store.record_snapshot(s, dataset, Examples(np.zeros((1, 1)), np.zeros(1, dtype=np.int64), ["k"]))
        audit_id = audit_store.create_audit(s, "label-check", dataset).id
    start = time.perf_counter()
    with sessions() as s, s.begin():
        finding_store.upsert_findings(s, audit_id, findings)
    return time.perf_counter() - start


def run_ours(kind: str, data: Path, weights: Path, lazy: bool = True) -> dict:
    from auditor.analyses.base import AnalysisInput
    from auditor.analyses.label_check import run
    from auditor.data.load import load_examples
    from auditor.factories import local_models

    idle = rss_mb("VmRSS")
    start = time.perf_counter()
    examples = load_examples(data, lazy=lazy)
    loaded = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(fraction: float, message: str) -> None:
        for phase in ("fitting the curvature", "scoring with", "finding why", "done"):
            if message.startswith(phase):
                marks.setdefault(phase, time.perf_counter())

    params = {"model": {"name": MODELS[kind], "weights": str(weights), "train": False, "device": "cpu"},
              "solver": {"name": "ekfac"}, "why_top": 0}  # fmt: skip
    cache = MemoryCache()
    with local_models():
        result = run(AnalysisInput(examples, None, params, progress=progress, cache=cache))
        end = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:  # stored as an audit stores them
            store_seconds = store_findings(result.findings, Path(scratch))
        again = time.perf_counter()
        run(AnalysisInput(examples, None, params, cache=cache))
        second = time.perf_counter() - again
    scores = np.zeros(len(examples))
    for f in result.findings:
        scores[f.example_index] = f.payload["self_influence"]
    return {
        "load": loaded - start, "fit": marks["scoring with"] - marks["fitting the curvature"],
        "score": end - marks["scoring with"], "total": end - start, "second": second, "store": store_seconds,
        "idle_mb": idle, "scores": scores.tolist(), "stream": lazy,
    }  # fmt: skip


def run_kronfluence(kind: str, data: Path, weights: Path) -> dict:
    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from safetensors.torch import load_file
    from user_model import classification_task

    from auditor.factories import local_models
    from auditor.models.loading import build_user_model

    class Stored(torch.utils.data.Dataset):
        """The arrays as stored (uint8 pixels), one float example at a time."""

        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            return torch.as_tensor(self.x[i], dtype=torch.float32), int(self.y[i])

    idle = rss_mb("VmRSS")
    start = time.perf_counter()
    z = np.load(data)
    ds = Stored(z["x"], z["y"])
    loaded = time.perf_counter()
    with local_models():
        model = build_user_model(MODELS[kind], tuple(ds.x.shape[1:]), 10)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    task = classification_task()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as scratch:
        analyzer = Analyzer("bench", model=model, task=task, cpu=True, disable_model_save=True,
                            disable_tqdm=True, output_dir=scratch)  # fmt: skip
        fit_start = time.perf_counter()
        analyzer.fit_all_factors("ekfac", dataset=ds, per_device_batch_size=256,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)  # fmt: skip
        fitted = time.perf_counter()
        analyzer.compute_self_scores("self", factors_name="ekfac", train_dataset=ds,
                                     per_device_train_batch_size=256, overwrite_output_dir=True)  # fmt: skip
        scores = analyzer.load_self_scores("self")["all_modules"]
        end = time.perf_counter()
    return {
        "load": loaded - start, "fit": fitted - fit_start, "score": end - fitted, "total": end - start,
        "idle_mb": idle, "scores": scores.tolist(),
    }  # fmt: skip


METHODS = {
    "ours": run_ours,
    "ours-in-memory": lambda k, d, w: run_ours(k, d, w, lazy=False),
    "kronfluence": run_kronfluence,
}


def child(method: str, kind: str, data: str, weights: str, out: str) -> None:
    import torch

    torch.set_num_threads(2)
    doc = METHODS[method](kind, Path(data), Path(weights))
    doc["peak_mb"] = rss_mb("VmHWM")
    Path(out).write_text(json.dumps(doc))


def measure(python: str, method: str, kind: str, data: Path, weights: Path, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "AUDITOR_STREAM_BYTES": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [python, __file__, "--child", method, kind, str(data), str(weights), str(out)]
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"not done in {timeout:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:120]}
        return json.loads(out.read_text())


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="cnn,resnet,curve")
    ap.add_argument("--sizes", default="10000,100000", help="n for the CNN")
    ap.add_argument("--resnet-sizes", default="10000")
    ap.add_argument("--curve", default="10000,100000,300000,1000000", help="n for the last-layer curve")
    ap.add_argument("--peer", default=sys.executable, help="python with kronfluence (.venv-bench)")
    ap.add_argument("--peer-max-n", type=int, default=100_000, help="largest n kronfluence runs on for the CNN and ResNet")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "auditor-scale")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"cnn": args.sizes, "resnet": args.resnet_sizes, "curve": args.curve}
    print("| workload | n | method | load s | fit s | score s | total s | examples/s | second audit s | store s | peak RSS MB (idle) | Spearman vs ours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in [w for w in args.workloads.split(",") if w]:
        weights = weights_file(kind, args.data_dir)
        for n in [int(s) for s in sizes[kind].split(",") if s]:
            data = data_file(kind, n, args.data_dir)
            methods = ["ours"] + (["ours-in-memory"] if kind == "curve" else [])
            if kind == "curve" or n <= args.peer_max_n:
                methods.append("kronfluence")
            ours = None
            for method in methods:
                python = args.peer if method == "kronfluence" else sys.executable
                print(f"{kind} n={n:,} {method} ...", file=sys.stderr, flush=True)
                r = measure(python, method, kind, data, weights, args.timeout)
                if "error" in r:
                    print(f"| {kind} | {n:,} | {method} | | | | | | | | | {r['error']} |", flush=True)
                    continue
                if method == "ours":
                    ours = r
                rho = spearman(r["scores"], ours["scores"]) if ours is not None and method != "ours" else None
                second = f"{r['second']:.1f} ({r['total'] / r['second']:.1f}x faster)" if "second" in r else ""
                stored = f"{r['store']:.1f}" if "store" in r else ""
                print(f"| {kind} | {n:,} | {method} | {r['load']:.1f} | {r['fit']:.1f} | {r['score']:.1f} | "
                      f"{r['total']:.1f} | {n / r['total']:,.0f} | {second} | {stored} | "
                      f"{r['peak_mb']:.0f} ({r['idle_mb']:.0f}) | "
                      f"{'' if rho is None else f'{rho:.3f}'} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
    else:
        main()
