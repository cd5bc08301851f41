"""Deterministic training to (near) convergence.

Influence functions describe the minimiser of the training objective, so the built-in models are
trained to convergence on exactly the objective the engine differentiates:
R(theta) = sum_i w_i L_i / n + weight_decay / 2 ||theta||^2. Full-batch L-BFGS (as the paper's
logistic regression) is deterministic on CPU and converges tightly, which leave-one-out
validation needs; larger or non-convex models (the CNN) use seeded minibatch Adam first, which
gets through the flat start that full-batch L-BFGS stalls in, and L-BFGS to finish. Both phases
stop when progress stalls instead of running to their step limits.
Removing a point for leave-one-out is weight 0 with n unchanged: exactly the epsilon = -1/n
perturbation that the influence formulas predict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from auditor.errors import ModelError
from auditor.influence.model import cross_entropy


@dataclass
class TrainConfig:
    weight_decay: float = 0.01
    max_iter: int = 2000
    tol: float = 1e-9
    adam_epochs: int = 0  # > 0: minibatch Adam before L-BFGS (large n)
    batch_size: int = 256
    lr: float = 1e-2
    seed: int = 0
    max_lbfgs_rows: int = 20000  # above this, L-BFGS polishes on minibatches of this size
    stall_epochs: int = 2  # Adam: halve the step after this many epochs without a 1% lower loss
    lr_halvings: int = 4  # ... and stop once it has been halved this often
    stall_tol: float = 1e-10  # L-BFGS: stop when LBFGS_CHUNK steps lower the objective less (relative)


LBFGS_CHUNK = 50  # L-BFGS steps between stall checks


def objective(
    model: nn.Module, x: Tensor, y: Tensor, weight_decay: float, w: Tensor | None, n: int
) -> Tensor:
    losses = cross_entropy(model(x), y)
    if w is not None:
        losses = losses * w
    reg = sum((p * p).sum() for p in model.parameters())
    return losses.sum() / n + 0.5 * weight_decay * reg


def final_objective(
    model: nn.Module, x: Tensor, y: Tensor, weight_decay: float, w: Tensor | None, n: int, chunk: int = 4096
) -> tuple[Tensor, float]:
    """The objective over all n rows and its gradient norm, summed a chunk of rows at a time, so
    `x` may be `Rows` (examples converted a batch at a time) and memory does not grow with n."""
    params = list(model.parameters())
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    grads = [torch.zeros_like(p) for p in params]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        losses = cross_entropy(model(x[start:stop]), y[start:stop])
        if w is not None:
            losses = losses * w[start:stop]
        part = losses.sum() / n
        for g, d in zip(grads, torch.autograd.grad(part, params, allow_unused=True), strict=True):
            if d is not None:
                g += d
        total = total + part.detach()
    for g, p in zip(grads, params, strict=True):
        g += weight_decay * p.detach()
    total = total + 0.5 * weight_decay * sum((p.detach() * p.detach()).sum() for p in params)
    return total, float(torch.sqrt(sum((g * g).sum() for g in grads)))


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig | None = None,
    sample_weight: Tensor | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Train `model` in place; returns {"loss", "grad_norm", "iterations"}. Raises on NaN.

    `progress(fraction, message)` is called every few steps. Training is the longest phase of an
    audit, and a service's progress callback is also where a cancel request is noticed (it raises),
    so without these calls a cancel would wait for the whole fit.

    `x` may be `auditor.influence.rows.Rows`: every use slices it (minibatches, the L-BFGS rows,
    the final objective in chunks), so at most `max_lbfgs_rows` rows are floats at once.
    """
    cfg = config or TrainConfig()
    report = progress or (lambda fraction, message: None)
    torch.manual_seed(cfg.seed)
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    n = x.shape[0]
    w = None if sample_weight is None else sample_weight.to(dtype)
    model.train()
    epochs_run = 0
    if cfg.adam_epochs > 0:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, stalled, halvings = float("inf"), 0, 0
        for epoch in range(cfg.adam_epochs):
            report(0.5 * epoch / cfg.adam_epochs, f"training: Adam epoch {epoch + 1}/{cfg.adam_epochs}")
            perm = torch.randperm(n, generator=gen).to(x.device)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                opt.zero_grad()
                loss = objective(
                    model, x[idx], y[idx], cfg.weight_decay, None if w is None else w[idx], len(idx)
                )
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            epochs_run = epoch + 1
            epoch_loss = total / n
            if not epoch_loss < float("inf"):
                break  # NaN/inf: reported below, after the final check
            stalled = stalled + 1 if epoch_loss > best * 0.99 else 0
            best = min(best, epoch_loss)
            if stalled >= cfg.stall_epochs:
                halvings += 1
                if halvings > cfg.lr_halvings:
                    break
                stalled = 0
                for group in opt.param_groups:
                    group["lr"] *= 0.5
    rows = torch.arange(n)
    if n > cfg.max_lbfgs_rows:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[
            : cfg.max_lbfgs_rows
        ]
    rows = rows.to(x.device)
    xl, yl = x[rows], y[rows]
    wl = None if w is None else w[rows]
    nl = len(rows)
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=min(LBFGS_CHUNK, max(cfg.max_iter, 1)),
        tolerance_grad=cfg.tol,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    state = {"iterations": 0}

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective(model, xl, yl, cfg.weight_decay, wl, nl)
        loss.backward()
        state["iterations"] += 1
        if state["iterations"] % 10 == 0:
            start = 0.5 if cfg.adam_epochs > 0 else 0.0
            done = min(1.0, state["iterations"] / cfg.max_iter)
            report(start + (1 - start) * done, f"training: L-BFGS step {state['iterations']}, loss {float(loss.detach()):.4g}")
        return loss

    previous = None
    while state["iterations"] < cfg.max_iter:
        before = state["iterations"]
        current = float(opt.step(closure).detach())
        if state["iterations"] == before or not current < float("inf"):
            break  # converged (L-BFGS returns at once) or diverged
        if previous is not None and previous - current <= cfg.stall_tol * max(abs(previous), 1e-12):
            break  # stalled: another chunk of steps would not change the model
        previous = current
    model.eval()
    loss, gnorm = final_objective(model, x, y, cfg.weight_decay, w, n)
    if not torch.isfinite(loss):
        raise ModelError(
            "training loss became NaN/inf; check the data for extreme values or lower the learning rate"
        )
    return {
        "loss": float(loss.detach()),
        "grad_norm": gnorm,
        "iterations": state["iterations"],
        "adam_epochs": epochs_run,
    }
