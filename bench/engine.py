"""Self-influence for every training example: auditor's solvers next to captum, pyDVL and kronfluence.

    .venv-bench/bin/python bench/engine.py              # both workloads, every method
    .venv-bench/bin/python bench/engine.py --workloads logreg --methods ours-direct,pydvl-direct

The quantity is s_i = g_i^T (H + lambda I)^-1 g_i for all n training points, where H is the
Hessian of the mean training cross-entropy and lambda = weight decay (0.01): auditor's
objective is mean CE + wd/2 ||theta||^2, so its H already contains wd I. The peers take a loss of
(outputs, labels) that cannot see the parameters, so the L2 term goes in as their damping /
regularisation, which is the same matrix:
- pyDVL: mean-CE Hessian + `regularization=wd`                    -> s_i
- kronfluence: per-example mean curvature + `damping_factor=wd`    -> s_i
- captum: Hessian of the SUMMED loss (n H_CE) + `hessian_reg=n*wd` -> s_i / n
The table's "scale" column (median of peer / ours) checks this: 1, 1, and 1/n.

Every method runs in its own subprocess (fresh interpreter, same trained weights loaded from one
state_dict file), so its peak RSS is its own: the kernel's high-water mark is reset after imports
and data loading ("idle" is the RSS then) and read after the timed part. Times are fit + scores,
nothing else: "cold" is the first call in the fresh process, "warm" a second call there (only
when the first took under WARM_REPEAT_BELOW seconds). Slow methods score only a prefix of the
training set (the curvature is still fitted on all of it), are skipped on a workload with the
measured reason, or hit the per-method time limit; the table says which. Spearman is against
auditor's exact direct solver on the examples both scored; a brute-force check after each table
confirms that reference on a few examples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WEIGHT_DECAY = 0.01
NUM_CLASSES = 10
# On a busy 2-core machine libgomp's spinning threads made one 650 x 650 eigh take 19 s instead
# of 0.2 s (other processes held the cores); passive waiting and one thread per method make the
# timings about the work, not the scheduler. --threads changes the count.
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
WARM_REPEAT_BELOW = 30.0  # seconds: cheaper methods are timed a second time in the same process


@dataclass
class Method:
    """One row: which library, which algorithm, and its settings."""

    name: str
    library: str
    options: dict = field(default_factory=dict)
    dtype: str = "float64"
    score_limit: dict = field(default_factory=dict)  # workload -> score only the first k examples
    skip: dict = field(default_factory=dict)  # workload -> why this method is not run there
    timeout: int | None = None  # overrides --timeout

    def limit(self, workload: str) -> int | None:
        return self.score_limit.get(workload)


F32 = "float32"
# brute-force check per workload: (examples, damping). On 10 examples the CNN's Hessian at the
# trained weights is indefinite (smallest eigenvalue about -0.3), hence the damping there.
BRUTE_FORCE = {"logreg": (60, 0.0), "cnn": (10, 0.5)}
# Measured on the CNN (n = 200): the Hessian's eigenvalues run from 3.0e-5 to 6.5 (the CE part is
# indefinite; weight decay barely lifts it), condition number ~2e5.
LISSA_SKIP = (
    "not run: auto depth 3654 steps at ~0.11 s per step for 8 examples (~7 min), and that depth "
    "is far too short: LiSSA's estimated smallest eigenvalue is 0.018, the true one 3.0e-5"
)
CG_SKIP = (
    "not run: condition number ~2e5; ours needed 337 iterations (~100 s) for 2 examples at "
    "tol 1e-8, pyDVL block CG 150 s for 16 examples (n = 300)"
)
# Settings are matched to ours where the algorithms match: Arnoldi rank 100 from 200 Krylov
# vectors everywhere; EK-FAC with sampled labels (true Fisher) in ours and kronfluence; CG to a
# tight tolerance. Peers run in float32, the dtype they are written for (pyDVL's EK-FAC and
# kronfluence build float32 buffers); ours in float64 (the product's default) and float32.
METHODS = {
    m.name: m
    for m in [
        Method("ours-direct", "ours", {"solver": "direct"}, timeout=900),
        Method("ours-direct-f32", "ours", {"solver": "direct"}, F32),
        Method("captum-naive", "captum", {"kind": "naive"}, F32),
        Method("pydvl-direct", "pydvl", {"kind": "direct"}, F32),
        Method(
            "ours-cg", "ours", {"solver": "cg"}, score_limit={"logreg": 256}, skip={"cnn": CG_SKIP}
        ),
        Method("pydvl-cg", "pydvl", {"kind": "cg"}, F32, skip={"cnn": CG_SKIP}),
        Method("ours-arnoldi", "ours", {"solver": "arnoldi", "rank": 100}),
        Method("ours-arnoldi-f32", "ours", {"solver": "arnoldi", "rank": 100}, F32),
        Method("captum-arnoldi", "captum", {"kind": "arnoldi", "rank": 100, "krylov": 200}, F32),
        Method("pydvl-arnoldi", "pydvl", {"kind": "arnoldi", "rank": 100, "krylov": 200}, F32),
        Method("ours-ekfac", "ours", {"solver": "ekfac"}),
        Method("ours-ekfac-f32", "ours", {"solver": "ekfac"}, F32),
        Method("kronfluence-ekfac", "kronfluence", {}, F32),
        Method("pydvl-ekfac", "pydvl", {"kind": "ekfac"}, F32),
        Method(
            "ours-lissa",
            "ours",
            {"solver": "lissa"},
            score_limit={"logreg": 64},
            skip={"cnn": LISSA_SKIP},
        ),
    ]
}


# ---- workloads: train once with auditor, save weights and data ---------------------------------
def prepare_workload(name: str, workdir: Path, n_cnn: int) -> dict:
    """Train `name` on digits with auditor's trainer; save state_dict + data; return its info."""
    import torch

    from auditor.data.bundled import digits
    from auditor.models import TrainConfig, build_model, train

    ex = digits()
    x, y = ex.x, ex.y
    if name == "cnn":
        rows = np.random.default_rng(0).permutation(len(y))[:n_cnn]
        rows.sort()
        x, y = x[rows], y[rows]
    model = build_model(name, x, NUM_CLASSES, is_image=True, seed=0)
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.long)
    t0 = time.perf_counter()
    info = train(model, xt, yt, TrainConfig(weight_decay=WEIGHT_DECAY, max_iter=2000))
    info["train_seconds"] = time.perf_counter() - t0
    weights = workdir / f"{name}.pt"
    data = workdir / f"{name}-data.pt"
    torch.save(model.state_dict(), weights)
    torch.save({"x": xt, "y": yt}, data)
    return {
        "name": name,
        "weights": str(weights),
        "data": str(data),
        "n": int(len(y)),
        "p": int(sum(p.numel() for p in model.parameters())),
        "train": info,
    }


def load_model(workload: dict, dtype):
    import torch

    from auditor.models import build_model

    data = torch.load(workload["data"], weights_only=True)
    x_np = data["x"].numpy()
    model = build_model(workload["name"], x_np, NUM_CLASSES, is_image=True, seed=0, dtype=dtype)
    state = torch.load(workload["weights"], weights_only=True)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    model.eval()
    return model, data["x"].to(dtype), data["y"]


# ---- brute force on a tiny case: is the reference itself right? -------------------------------
def brute_force_check(workload: dict, n: int, damping: float) -> tuple[float, float]:
    """Max relative error of ours-direct vs g_i^T (H + damping I)^-1 g_i computed the slow way.

    H is `torch.autograd.functional.hessian` of the full objective (mean CE + wd/2 ||theta||^2)
    over a flat parameter vector, g_i a plain autograd gradient per example, and the quadratic a
    dense solve: nothing from auditor.influence. Runs on the first `n` examples of the workload
    (their own objective, at the trained weights). Returns (max relative error, smallest
    eigenvalue of H + damping I).
    """
    import torch
    from torch.func import functional_call

    from auditor.influence import FunctionalModel, InfluenceModel, make_solver

    model, x, y = load_model(workload, torch.float64)
    x, y = x[:n], y[:n]
    names = [k for k, _ in model.named_parameters()]
    shapes = [q.shape for _, q in model.named_parameters()]
    theta = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    buffers = dict(model.named_buffers())

    def unflat(flat):
        out, pos = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape))
            out[name] = flat[pos : pos + size].reshape(shape)
            pos += size
        return {**out, **buffers}

    def loss(flat, xb, yb):
        logits = functional_call(model, unflat(flat), (xb,))
        return torch.nn.functional.cross_entropy(logits, yb)

    def objective(flat):
        return loss(flat, x, y) + 0.5 * WEIGHT_DECAY * (flat * flat).sum()

    H = torch.autograd.functional.hessian(objective, theta, vectorize=True)
    H = H + damping * torch.eye(theta.numel(), dtype=H.dtype)
    brute = []
    for i in range(n):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(t, x[i : i + 1], y[i : i + 1]), t)
        brute.append(float(g @ torch.linalg.solve(H, g)))
    brute_t = torch.tensor(brute, dtype=torch.float64)
    fm = FunctionalModel.from_module(model, "all", weight_decay=WEIGHT_DECAY)
    ours = InfluenceModel(fm, make_solver("direct", damping=damping)).fit(x, y).self_influence(x, y)
    rel = float(((ours - brute_t).abs() / brute_t.abs()).max())
    return rel, float(torch.linalg.eigvalsh(H)[0])


# ---- one method, inside its own subprocess -----------------------------------------------------
def run_ours(method: Method, model, x, y, k: int):
    from auditor.influence import FunctionalModel, InfluenceModel, make_solver

    opts = dict(method.options)
    solver = make_solver(opts.pop("solver"), damping=0.0, **opts)
    fm = FunctionalModel.from_module(model, "all", weight_decay=WEIGHT_DECAY)
    inf = InfluenceModel(fm, solver).fit(x, y)
    return inf.self_influence(x[:k], y[:k])


def run_captum(method: Method, model, x, y, k: int, weights: str):
    import torch
    from captum.influence import NaiveInfluenceFunction
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from torch.utils.data import DataLoader, TensorDataset

    n = x.shape[0]
    p = sum(q.numel() for q in model.parameters())
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    train = TensorDataset(x, y)
    common = dict(
        checkpoint=weights,
        checkpoints_load_func=_captum_load(model.parameters().__next__().dtype),
        loss_fn=loss,
        batch_size=512,
        # captum's Hessian is of the summed loss: n * H_CE, so the L2 term is n * wd
        hessian_reg=n * WEIGHT_DECAY,
        hessian_inverse_tol=1e-12,
    )
    if method.options["kind"] == "naive":
        inf = NaiveInfluenceFunction(model, train, projection_dim=p, **common)
    else:
        inf = ArnoldiInfluenceFunction(
            model,
            train,
            projection_dim=method.options["rank"],
            arnoldi_dim=method.options["krylov"],
            **common,
        )
    return inf.self_influence(DataLoader(TensorDataset(x[:k], y[:k]), batch_size=512))


def _captum_load(dtype):
    """captum's default loader works too; this one casts the float64 file to the model's dtype."""

    def load(model, path):
        import torch

        state = torch.load(path, weights_only=True)
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        return 1.0

    return load


def run_pydvl(method: Method, model, x, y, k: int):
    import torch
    import torch.nn.functional as F
    from pydvl.influence.torch import (
        ArnoldiInfluence,
        CgInfluence,
        DirectInfluence,
        EkfacInfluence,
    )
    from torch.utils.data import DataLoader, TensorDataset

    kind = method.options["kind"]
    p = sum(q.numel() for q in model.parameters())
    # torch.func.hessian holds p tangents per batch: keep batch * p small
    batch = max(16, min(x.shape[0], 2_000_000 // (p * 20))) if kind == "direct" else 512
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    if kind == "direct":
        inf = DirectInfluence(model, F.cross_entropy, regularization=WEIGHT_DECAY)
    elif kind == "cg":
        inf = CgInfluence(
            model,
            F.cross_entropy,
            regularization=WEIGHT_DECAY,
            rtol=1e-6,
            atol=1e-8,
            maxiter=500,
            solve_simultaneously=True,
        )
    elif kind == "arnoldi":
        inf = ArnoldiInfluence(
            model,
            F.cross_entropy,
            regularization=WEIGHT_DECAY,
            rank=method.options["rank"],
            krylov_dimension=method.options["krylov"],
        )
    elif kind == "ekfac":
        inf = EkfacInfluence(model, update_diagonal=True, hessian_regularization=WEIGHT_DECAY)
    else:
        raise ValueError(kind)
    inf = inf.fit(loader)
    # pyDVL has no self-influence path: influences(x, y) is the k x k matrix of g_i^T H^-1 g_j;
    # take its diagonal in chunks so the matrix stays small.
    out = []
    for start in range(0, k, 512):
        xb, yb = x[start : min(k, start + 512)], y[start : min(k, start + 512)]
        out.append(torch.diagonal(inf.influences(xb, yb, mode="up")))
    return torch.cat(out)


def run_kronfluence(method: Method, model, x, y, k: int, scratch: str):
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            xb, yb = batch
            logits = model(xb)
            if sample:  # true Fisher: labels drawn from the model's own predictions
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), -1)
                    yb = torch.multinomial(probs, 1).flatten()
            return F.cross_entropy(logits, yb, reduction="sum")

        def compute_measurement(self, batch, model):
            xb, yb = batch
            return F.cross_entropy(model(xb), yb, reduction="sum")

    task = Classification()
    model = prepare_model(model, task)
    analyzer = Analyzer(
        analysis_name="bench",
        model=model,
        task=task,
        cpu=True,
        disable_model_save=True,
        disable_tqdm=True,
        output_dir=scratch,
    )
    dt = x.dtype
    analyzer.fit_all_factors(
        factors_name="ekfac",
        dataset=TensorDataset(x, y),
        per_device_batch_size=256,
        factor_args=FactorArguments(
            strategy="ekfac",
            activation_covariance_dtype=dt,
            gradient_covariance_dtype=dt,
            lambda_dtype=dt,
        ),
        overwrite_output_dir=True,
    )
    analyzer.compute_self_scores(
        scores_name="self",
        factors_name="ekfac",
        train_dataset=TensorDataset(x[:k], y[:k]),
        per_device_train_batch_size=256,
        score_args=ScoreArguments(
            damping_factor=WEIGHT_DECAY,
            per_sample_gradient_dtype=dt,
            precondition_dtype=dt,
            score_dtype=dt,
        ),
        overwrite_output_dir=True,
    )
    return analyzer.load_self_scores(scores_name="self")["all_modules"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0), so imports and data loading don't count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def score(method: Method, workload: dict, model, x, y, k: int):
    if method.library == "ours":
        return run_ours(method, model, x, y, k)
    if method.library == "captum":
        return run_captum(method, model, x, y, k, workload["weights"])
    if method.library == "pydvl":
        return run_pydvl(method, model, x, y, k)
    if method.library == "kronfluence":
        with tempfile.TemporaryDirectory() as scratch:
            return run_kronfluence(method, model, x, y, k, scratch)
    raise ValueError(method.library)


def worker(method: Method, workload: dict, out: Path) -> None:
    """Fit + score one method; write scores (.npy) and a JSON line of timings to `out`.

    The first ("cold") run pays each library's one-time costs in a fresh process (torch.func
    and autograd set-up, lazy imports); when it is short, a second ("warm") run on a freshly
    loaded model times the work alone, as a long-lived worker process would see it.
    """
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dtype = getattr(torch, method.dtype)
    # import the library before the clock and the idle RSS, so neither counts imports
    if method.library == "captum":
        import captum.influence  # noqa: F401
    elif method.library == "pydvl":
        import pydvl.influence.torch  # noqa: F401
    elif method.library == "kronfluence":
        import kronfluence.analyzer  # noqa: F401
    else:
        import auditor.influence  # noqa: F401
    model, x, y = load_model(workload, dtype)
    k = min(x.shape[0], method.limit(workload["name"]) or x.shape[0])
    idle = rss_mb()
    reset_peak_rss()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    s = score(method, workload, model, x, y, k)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    peak = peak_rss_mb()
    result = {"seconds": seconds, "cpu": cpu, "peak_mb": peak, "idle_mb": idle, "k": k}
    if seconds < WARM_REPEAT_BELOW:
        model, x, y = load_model(workload, dtype)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        score(method, workload, model, x, y, k)
        result.update(warm=time.perf_counter() - t0, warm_cpu=cpu_seconds() - cpu0)
    s = np.asarray(s.detach().double().cpu().numpy() if hasattr(s, "detach") else s, dtype=float)
    np.save(out.with_suffix(".npy"), s.reshape(-1))
    out.write_text(json.dumps(result))


# ---- the parent: run every method in a subprocess, compare, print ------------------------------
def run_method(method: Method, workload: dict, workdir: Path, timeout: int, threads: int) -> dict:
    out = workdir / f"{workload['name']}-{method.name}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method.name,
        "--workload-json",
        json.dumps(workload),
        "--result",
        str(out),
    ]
    limit = method.timeout or timeout
    t0 = time.perf_counter()
    try:
        env = {**os.environ, **CHILD_ENV, "BENCH_THREADS": str(threads)}
        env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {limit} s", "wall": time.perf_counter() - t0}
    if proc.returncode != 0 or not out.exists():
        last = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        return {"status": "error: " + (last[-1][:160] if last else f"exit {proc.returncode}")}
    res = json.loads(out.read_text())
    res["scores"] = np.load(out.with_suffix(".npy"))
    res["status"] = "ok"
    return res


def compare(scores: np.ndarray, ref: np.ndarray | None) -> dict:
    from scipy.stats import spearmanr

    if ref is None:
        return {}
    r = ref[: len(scores)]
    ratio = scores / r
    scale = float(np.median(ratio))
    rel = np.abs(scores / scale - r) / np.abs(r)
    return {
        "spearman": float(spearmanr(scores, r).statistic),
        "scale": scale,
        "rel_err": float(np.median(rel)),
        "negative": int((scores < 0).sum()),
    }


def fmt_scale(scale: float, n: int) -> str:
    if abs(scale * n - 1) < 0.05:
        return f"1/n ({scale:.3g})"
    return f"{scale:.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="logreg,cnn")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--timeout", type=int, default=120, help="seconds per method (fit + scores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per method")
    ap.add_argument("--n-cnn", type=int, default=200, help="training examples for the CNN")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload-json", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(METHODS[args.worker], json.loads(args.workload_json), Path(args.result))
        return 0

    methods = [METHODS[m] for m in args.methods.split(",")]
    if methods[0].name != "ours-direct":  # the reference runs first
        methods = [METHODS["ours-direct"]] + [m for m in methods if m.name != "ours-direct"]
    os.environ.update(CHILD_ENV)  # before torch starts its thread pool (training runs here)
    import torch

    torch.set_num_threads(args.threads)

    print(
        f"# self-influence for every training example ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {args.threads} torch thread(s) per method, OMP_WAIT_POLICY=PASSIVE, "
        f"torch {torch.__version__})\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for wname in args.workloads.split(","):
            wl = prepare_workload(wname, workdir, args.n_cnn)
            tr = wl["train"]
            print(
                f"## {wname} on sklearn digits: n = {wl['n']}, p = {wl['p']}, weight decay "
                f"{WEIGHT_DECAY}; trained once by auditor (L-BFGS, {tr['iterations']} evals, "
                f"|grad| {tr['grad_norm']:.1e}, {tr['train_seconds']:.1f} s)\n"
            )
            print(
                "| method | dtype | n scored | p | seconds cold (CPU) | seconds warm (CPU) "
                "| peak RSS MB (idle) "
                "| Spearman vs ours-direct | scale vs ours | median rel. err | note |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            ref = None
            for m in methods:
                if wname in m.skip:
                    print(f"| {m.name} | {m.dtype} | | {wl['p']} | | | | | | | {m.skip[wname]} |")
                    continue
                res = run_method(m, wl, workdir, args.timeout, args.threads)
                if res["status"] != "ok":
                    print(f"| {m.name} | {m.dtype} | | {wl['p']} | | | | | | | {res['status']} |")
                    sys.stdout.flush()
                    continue
                if m.name == "ours-direct":
                    ref = res["scores"]
                cmp = compare(res["scores"], ref)
                warm = f"{res['warm']:.2f} ({res['warm_cpu']:.2f})" if "warm" in res else "= cold"
                note = []
                if res["k"] < wl["n"]:
                    note.append(f"first {res['k']} scored (curvature on all {wl['n']})")
                if cmp.get("negative"):
                    note.append(f"{cmp['negative']} negative scores")
                print(
                    f"| {m.name} | {m.dtype} | {res['k']} | {wl['p']} | {res['seconds']:.2f} ({res['cpu']:.2f}) | "
                    f"{warm} | "
                    f"{res['peak_mb']:.0f} ({res['idle_mb']:.0f}) | "
                    f"{cmp.get('spearman', float('nan')):.4f} | "
                    f"{fmt_scale(cmp['scale'], wl['n']) if cmp else ''} | "
                    f"{cmp.get('rel_err', float('nan')):.1e} | {'; '.join(note)} |"
                )
                sys.stdout.flush()
            print()
            n_bf, damping = BRUTE_FORCE[wname]
            rel, lam_min = brute_force_check(wl, n_bf, damping)
            print(
                f"Brute force (torch.autograd.functional.hessian of the whole objective, dense "
                f"solve; first {n_bf} examples, damping {damping}, smallest eigenvalue "
                f"{lam_min:.3g}): ours-direct max relative error {rel:.1e}.\n"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
