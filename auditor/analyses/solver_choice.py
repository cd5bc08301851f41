"""Which solver an analysis uses: `--solver auto` made concrete (with its reason, from the
device's memory budget and a timed probe of the exact solve), the parameters the chosen solver
covers, and the solver built with the options it declares (`Capabilities.options`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from auditor.analyses.settings import SolverSpec
from auditor.errors import ModelError
from auditor.influence import FunctionalModel, InverseHVP, make_solver
from auditor.influence.budget import dense_budget, dense_bytes
from auditor.influence.ekfac import kfac_parameters
from auditor.influence.factory import solver_class
from auditor.influence.hvp import hvp, last_linear, last_linear_hessian

# `--solver auto` takes the exact solver while the Hessian fits the device's memory budget and
# building it takes at most this long (estimated from a timed HVP on the data); EK-FAC (or CG)
# otherwise. Time matters as much as memory: the exact CNN Hessian on 1,000 28x28 images fits in
# 90 MB but takes half an hour on two cores.
EXACT_SECONDS = 60.0


def estimate_exact_seconds(fm: FunctionalModel, x: Tensor, y: Tensor, probes: int = 16) -> float:
    """Seconds for the exact solve: building the Hessian (the closed form for a final Linear layer,
    timed on a few rows, or p HVPs over all n rows, from one timed HVP block) and its
    eigendecomposition (p^3, from one timed smaller `eigh`)."""
    p = fm.num_params
    if last_linear(fm, x) is not None:
        rows = min(x.shape[0], 256)
        start = time.perf_counter()
        last_linear_hessian(fm, x[:rows], y[:rows])
        build = (time.perf_counter() - start) * x.shape[0] / rows
    else:
        rows = min(x.shape[0], 64)
        V = torch.zeros(min(probes, p), p, dtype=fm.dtype, device=fm.device)
        V[torch.arange(V.shape[0]), torch.arange(V.shape[0])] = 1.0
        hvp(fm, x[:2], y[:2], V[:2])  # warm-up: vmap traces the model once
        start = time.perf_counter()
        hvp(fm, x[:rows], y[:rows], V)
        per = (time.perf_counter() - start) / (V.shape[0] * rows)
        build = per * p * x.shape[0]
    m = min(p, 1000)
    A = torch.randn(m, m, dtype=torch.float64, device=fm.device)
    start = time.perf_counter()
    torch.linalg.eigh(A @ A.T)
    decompose = (time.perf_counter() - start) * (p / m) ** 3
    return build + decompose


def choose_solver(
    spec: SolverSpec, fm: FunctionalModel, x: Tensor, y: Tensor, *, few_solves: bool
) -> tuple[SolverSpec, str]:
    """`auto` made concrete, in one place for every analysis and `validate`, with the reason.

    Exact while the Hessian fits the device's memory budget and EXACT_SECONDS; otherwise EK-FAC
    when the model's counted layers are Linear/Conv2d (they always are after `kfac_parameters`
    unless none is), or CG for analyses that solve for a few test points only. Never refuses.
    """
    if spec.name != "auto":
        return spec, "requested"
    p = fm.num_params
    need, budget = dense_bytes(p), dense_budget(fm.device)
    if need > budget:
        why = f"the {p} x {p} Hessian needs {need / 2**30:.2f} GiB, over this device's budget of {budget / 2**30:.2f} GiB"
    else:
        seconds = estimate_exact_seconds(fm, x, y)
        if seconds <= EXACT_SECONDS:
            return replace(spec, name="direct"), (
                f"exact: the {p} x {p} Hessian takes {need / 2**20:.0f} MiB and about {seconds:.0f} s here"
            )
        why = f"the exact {p} x {p} Hessian would take about {seconds:.0f} s here (budget {EXACT_SECONDS:.0f} s)"
    if kfac_parameters(fm.module, fm.names):
        return replace(spec, name="ekfac"), f"EK-FAC: {why}"
    if few_solves:
        return replace(
            spec, name="cg"
        ), f"CG: {why}, and the model has no Linear/Conv2d layer for EK-FAC"
    return replace(
        spec, name="arnoldi"
    ), f"Arnoldi: {why}, and the model has no Linear/Conv2d layer for EK-FAC"


@dataclass(frozen=True)
class SolverChoice:
    """The solver an analysis fits: `spec` with `auto` resolved, the model view `fm` restricted to
    the parameters it covers, `engine` built (unfitted) with `options`, and `reason` (why)."""

    spec: SolverSpec
    fm: FunctionalModel
    engine: InverseHVP
    options: dict
    reason: str


def build_solver(
    requested: SolverSpec,
    fm: FunctionalModel,
    x: Tensor,
    y: Tensor,
    *,
    few_solves: bool,
    prefer_undamped: bool,
) -> SolverChoice:
    """`choose_solver`, then the solver built for it. EK-FAC counts only the Linear/Conv2d weights
    among the counted parameters (the rest held fixed). Options meant for a solver `auto` did not
    pick are dropped: only those the chosen solver declares apply. `prefer_undamped`: a model
    trained here to a minimum, so automatic damping keeps lambda = 0 where the curvature allows."""
    chosen, why = choose_solver(requested, fm, x, y, few_solves=few_solves)
    if chosen.name == "ekfac":
        counted = kfac_parameters(fm.module, fm.names)
        if not counted:
            raise ModelError(
                "ekfac needs Linear or Conv2d layers among the counted parameters; use --solver cg"
            )
        if counted != fm.names:
            fm = FunctionalModel(fm.module, counted, fm.weight_decay, fm.loss_fn)
    options = chosen.options
    if requested.name == "auto":
        accepted = solver_class(chosen.name).capabilities.options
        options = {k: v for k, v in options.items() if k in accepted}
    engine = make_solver(chosen.name, chosen.damping, prefer_undamped=prefer_undamped, **options)
    return SolverChoice(chosen, fm, engine, options, why)
