"""Inverse-HVP solvers: (H + lambda I)^-1 v for many v, behind one protocol.

Each solver is fitted once on the training data (factorise, estimate spectra, build a basis)
and then answers `solve(V)` for any number of right-hand sides, and `quadratic(G)` for the
diagonal g_i^T (H + lambda I)^-1 g_i that self-influence needs. Solvers that can do the
diagonal without a solve per row (direct, Arnoldi, EK-FAC) override `quadratic`.

Damping lambda is given, or chosen at fit time (`damping=None`): kronfluence's rule, a tenth of
the mean eigenvalue of the curvature (from the eigenvalues where the solver has them, otherwise a
Hutchinson estimate of trace(H) / p), raised where needed so that H + lambda I is positive
definite. A model trained here to a minimum usually needs none: built with `prefer_undamped` the
solver keeps lambda = 0 when the undamped curvature is positive definite. The value and the reason
are in `describe()`.

What a solver can do is declared, not probed: each class says in `capabilities` (a frozen
`Capabilities`, as kronfluence's `FactorConfig` says what a strategy needs) which options it takes,
whether its fitted factors can be stored, whether it has a self-scores fast path, and whether it
checks the undamped curvature before keeping lambda = 0. Callers read the declaration instead of
`getattr` or `inspect.signature`; tests/test_influence_engine.py holds each class to it.

Failure is loud: a Hessian that is not positive definite without damping, CG meeting negative
curvature, LiSSA's recursion growing or producing NaN all raise `SolverError` with a message that
names the setting to change, so a caller never ranks examples by garbage.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from auditor.errors import SolverError
from auditor.influence.budget import dense_budget, dense_bytes
from auditor.influence.hvp import exact_hessian, hvp
from auditor.influence.model import FunctionalModel
from auditor.progress import Progress, no_progress

log = logging.getLogger(__name__)

AUTO_DAMPING_FRACTION = 0.1
FULL_BATCH_ROWS = 4096  # LiSSA: up to this many rows, every step uses all of them
STOCHASTIC_BATCH = 256  # of the mean eigenvalue (kronfluence's default damping)


def mean_eigenvalue(
    fm: FunctionalModel, x: Tensor, y: Tensor, probes: int = 8, rows: int = 2048, seed: int = 0
) -> float:
    """trace(H) / p by Hutchinson's estimator (Rademacher probes, one HVP pass each) on at most
    `rows` rows: what the automatic damping needs when a solver has no eigenvalues of its own."""
    theta = fm.flat_params()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:rows]
    Z = (torch.randint(0, 2, (probes, theta.numel()), generator=gen) * 2 - 1).to(theta)
    HZ = hvp(fm, x[idx], y[idx], Z)
    return float((Z * HZ).sum(1).mean()) / theta.numel()


@dataclass
class SelfScores:
    """What each training example does to its own fit (see `InfluenceModel.self_scores`)."""

    self_influence: Tensor  # (n,) g_i^T (H + lambda I)^-1 g_i
    outputs: Tensor  # (n, k) f(x_i; theta)
    loo_outputs: Tensor  # (n, k) f(x_i; theta_-i), first order


@dataclass(frozen=True)
class Capabilities:
    """What a solver class can do, declared once (see the module docstring).

    options: the keyword options its constructor takes besides `damping` and `prefer_undamped`
      (`make_solver` refuses others; `--solver auto` drops the ones the chosen solver does not take).
    storable_factors: `factors()` / `load_factors()` keep the fit across processes and audits (CG and
      LiSSA keep nothing worth storing: every solve uses the data).
    self_scores_fast_path: `self_scores(x, y, n_train, ...)` gives self-influence and leave-one-out
      outputs without flat per-example gradients (EK-FAC, from its layer taps).
    diagonal_without_solve: `quadratic(G)` needs no solve per row (a factorised inverse).
    checks_undamped: with `prefer_undamped`, lambda = 0 is kept only when the solver has seen the
      undamped curvature's smallest eigenvalue be positive; without it, on the training's word.
    """

    options: frozenset[str] = frozenset()
    storable_factors: bool = False
    self_scores_fast_path: bool = False
    diagonal_without_solve: bool = False
    checks_undamped: bool = False


class InverseHVP(ABC):
    """Protocol: `fit(fm, x, y)` once, then `solve(V)` / `quadratic(G)` many times.

    `prefer_undamped`, with automatic damping (`damping=None`): keep lambda = 0 when the undamped
    curvature is positive definite (a model trained here to a minimum of the regularised objective).
    """

    name: str = "base"
    capabilities: Capabilities = Capabilities()

    def __init__(self, damping: float | None = 0.0, *, prefer_undamped: bool = False) -> None:
        if damping is not None and (damping < 0 or not math.isfinite(damping)):
            raise SolverError(f"damping must be a finite number >= 0, got {damping}")
        self.auto_damping = damping is None
        self.damping = 0.0 if damping is None else float(damping)
        self.damping_reason = "automatic" if damping is None else "given"
        self.prefer_undamped = prefer_undamped
        self.fm: FunctionalModel | None = None

    def choose_damping(self, mean_eig: float, lam_min: float | None = None) -> None:
        """Set the automatic damping from the undamped curvature's mean eigenvalue and, where the
        solver knows it, its smallest (see the module docstring). No-op for a given damping."""
        if not self.auto_damping:
            return
        if self.prefer_undamped and lam_min is not None and lam_min > 1e-8 * max(abs(mean_eig), 1e-30):
            self.damping, self.damping_reason = 0.0, "none needed: the curvature is positive definite at these weights"
            return
        if self.prefer_undamped and lam_min is None:
            self.damping, self.damping_reason = 0.0, "none: the model was trained to a minimum here"
            return
        lam = AUTO_DAMPING_FRACTION * abs(mean_eig)
        reason = f"{AUTO_DAMPING_FRACTION:g} x the mean eigenvalue ({mean_eig:.3g}) of the curvature"
        if lam_min is not None and lam_min + lam <= 1e-6 * abs(mean_eig):
            lam = 1.1 * -lam_min + 1e-3 * abs(mean_eig)
            reason += f", raised above the most negative eigenvalue ({lam_min:.3g}) so H + damping is positive definite"
        if not math.isfinite(lam) or lam <= 0:
            raise SolverError(f"cannot choose a damping: the curvature's mean eigenvalue is {mean_eig}; set --damping")
        self.damping, self.damping_reason = float(lam), reason

    @abstractmethod
    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> InverseHVP: ...

    @abstractmethod
    def _solve(self, V: Tensor) -> Tensor:
        """Solve for a block V (k, p) -> (k, p)."""

    def solve(self, v: Tensor) -> Tensor:
        """(H + lambda I)^-1 v for v (p,) or each row of V (k, p)."""
        if self.fm is None:
            raise SolverError(f"{self.name} solver used before fit()")
        single = v.dim() == 1
        V = (v.unsqueeze(0) if single else v).to(self.fm.flat_params())
        out = self._solve(V)
        if not torch.isfinite(out).all():
            raise SolverError(f"{self.name} solver produced NaN/inf; increase --damping")
        return out[0] if single else out

    def quadratic(self, G: Tensor, chunk: int = 128) -> Tensor:
        """g_i^T (H + lambda I)^-1 g_i for each row of G (B, p); never an n x n matrix."""
        out = []
        for start in range(0, G.shape[0], chunk):
            Gb = G[start : start + chunk]
            out.append((Gb * self.solve(Gb)).sum(1))
        return torch.cat(out)

    def self_scores(
        self, x: Tensor, y: Tensor, n_train: int, progress: Progress = no_progress, outputs: bool = True
    ) -> SelfScores:
        """The self-scores fast path, for solvers that declare `self_scores_fast_path`."""
        raise SolverError(f"the {self.name} solver has no self-scores fast path")

    def describe(self) -> dict:
        return {"solver": self.name, "damping": self.damping, "damping_reason": self.damping_reason}

    # ---- fitted factors as data: fit once, score many (across processes and audits) ------------
    def factors(self) -> tuple[dict[str, Tensor], dict]:
        """The fitted state as named tensors and JSON metadata, to be saved (safetensors) and
        given back to `load_factors` of a new solver of the same kind and settings."""
        if self.fm is None:
            raise SolverError(f"{self.name} solver has no factors before fit()")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self._factor_tensors().items()}
        return tensors, {"solver": self.name, "damping": self.damping, "damping_reason": self.damping_reason}

    def load_factors(self, fm: FunctionalModel, tensors: dict[str, Tensor], meta: dict) -> InverseHVP:
        """Become the solver that produced `factors()` for the model `fm`, without fitting."""
        if meta.get("solver") != self.name:
            raise SolverError(f"stored factors are {meta.get('solver')!r}, not {self.name!r}")
        self.fm = fm
        self.damping, self.damping_reason = float(meta["damping"]), str(meta["damping_reason"])
        self._load_tensors(fm, {k: v.to(fm.device) for k, v in tensors.items()})
        return self

    def _factor_tensors(self) -> dict[str, Tensor]:
        raise SolverError(f"the {self.name} solver has no factors to store")

    def _load_tensors(self, fm: FunctionalModel, tensors: dict[str, Tensor]) -> None:
        raise SolverError(f"the {self.name} solver has no factors to load")

    def _auto_from_trace(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> None:
        """Automatic damping for solvers without eigenvalues of their own."""
        if self.auto_damping:
            self.choose_damping(mean_eigenvalue(fm, x, y) if not self.prefer_undamped else 0.0)


def _hessian_hint(lam_min: float) -> str:
    need = max(-lam_min, 0.0) * 1.1 + 1e-6
    return (
        f"smallest eigenvalue {lam_min:.3g}; set --damping above {need:.2g} (or add weight decay)"
    )


class DirectSolver(InverseHVP):
    """Exact: eigendecomposition of the full Hessian. O(p^3) once, then O(p^2) per vector.

    The reference every other solver is compared with. The Hessian is built in the model's dtype
    and decomposed in float64; how large it may be is a memory budget taken from the device
    (`budget.dense_budget`), not a fixed parameter count.
    """

    name = "direct"
    capabilities = Capabilities(
        options=frozenset({"max_bytes"}), storable_factors=True, diagonal_without_solve=True, checks_undamped=True
    )

    def __init__(
        self, damping: float | None = 0.0, max_bytes: int | None = None, *, prefer_undamped: bool = False
    ) -> None:
        super().__init__(damping, prefer_undamped=prefer_undamped)
        self.max_bytes = max_bytes

    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> DirectSolver:
        p = fm.num_params
        budget = self.max_bytes if self.max_bytes is not None else dense_budget(fm.device)
        if dense_bytes(p) > budget:
            raise SolverError(
                f"the direct solver needs {dense_bytes(p) / 2**30:.1f} GiB for the {p} x {p} Hessian, "
                f"more than this device's budget ({budget / 2**30:.1f} GiB); use --solver ekfac or cg, "
                "or count fewer parameters (--params last)"
            )
        self.fm = fm
        H = exact_hessian(fm, x, y).to(torch.float64)
        evals, evecs = torch.linalg.eigh(H)
        self.choose_damping(float(evals.mean()), float(evals[0]))
        evals = evals + self.damping
        lam_min, lam_max = float(evals[0]), float(evals[-1])
        if not math.isfinite(lam_max):
            raise SolverError("the Hessian contains NaN/inf; the model or data is not finite")
        if lam_min <= 1e-10 * max(abs(lam_max), 1.0):
            raise SolverError(
                f"the Hessian (+ damping) is singular or not positive definite: {_hessian_hint(lam_min - self.damping)}"
            )
        self.evals, self.evecs = evals, evecs
        self.eigenvalue_range = (lam_min, lam_max)
        return self

    def _factor_tensors(self) -> dict[str, Tensor]:
        return {"evals": self.evals, "evecs": self.evecs}

    def _load_tensors(self, fm: FunctionalModel, tensors: dict[str, Tensor]) -> None:
        if tensors["evecs"].shape != (fm.num_params, fm.num_params):
            raise SolverError("stored factors do not match the model's parameters")
        self.evals, self.evecs = tensors["evals"], tensors["evecs"]
        self.eigenvalue_range = (float(self.evals[0]), float(self.evals[-1]))

    def _solve(self, V: Tensor) -> Tensor:
        return (((V.to(self.evecs) @ self.evecs) / self.evals) @ self.evecs.T).to(V.dtype)

    def quadratic(self, G: Tensor, chunk: int = 4096) -> Tensor:
        out = (((G.to(self.evecs) @ self.evecs) ** 2) / self.evals).sum(1)
        return out.to(G.dtype) if G.is_floating_point() else out


class CGSolver(InverseHVP):
    """Conjugate gradient on min_t 1/2 t^T (H + lambda I) t - v^T t, one HVP pass per iteration.

    Many right-hand sides run as independent CG iterations vectorised together.
    """

    name = "cg"
    capabilities = Capabilities(options=frozenset({"max_iter", "tol", "batch_size", "block"}))

    def __init__(
        self,
        damping: float | None = 0.0,
        max_iter: int = 500,
        tol: float = 1e-8,
        batch_size: int = 2048,
        block: int = 64,
        *,
        prefer_undamped: bool = False,
    ) -> None:
        super().__init__(damping, prefer_undamped=prefer_undamped)
        self.max_iter, self.tol, self.batch_size, self.block = max_iter, tol, batch_size, block

    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> CGSolver:
        self.fm, self.x, self.y = fm, x, y
        self._auto_from_trace(fm, x, y)
        return self

    def _matvec(self, P: Tensor) -> Tensor:
        assert self.fm is not None
        return hvp(self.fm, self.x, self.y, P, self.batch_size) + self.damping * P

    def _solve(self, V: Tensor) -> Tensor:
        return torch.cat(
            [self._solve_block(V[i : i + self.block]) for i in range(0, len(V), self.block)]
        )

    def _solve_block(self, V: Tensor) -> Tensor:
        X = torch.zeros_like(V)
        R = V.clone()
        P = R.clone()
        rs = (R * R).sum(1)
        vnorm = rs.sqrt().clamp_min(1e-300)
        active = torch.ones(len(V), dtype=torch.bool, device=V.device)
        for _ in range(self.max_iter):
            HP = self._matvec(P[active])
            pHp = (P[active] * HP).sum(1)
            if not torch.isfinite(pHp).all():
                raise SolverError(
                    "CG produced NaN/inf; the model or data is not finite, or increase --damping"
                )
            if (pHp <= 0).any():
                raise SolverError(
                    "CG met negative curvature: the Hessian is not positive definite at these "
                    "weights; increase --damping (e.g. 0.01) or train longer"
                )
            alpha = rs[active] / pHp
            X[active] += alpha[:, None] * P[active]
            R[active] -= alpha[:, None] * HP
            rs_new = (R[active] * R[active]).sum(1)
            beta = rs_new / rs[active]
            P[active] = R[active] + beta[:, None] * P[active]
            rs[active] = rs_new
            active = rs.sqrt() / vnorm > self.tol
            if not active.any():
                return X
        rel = float((rs.sqrt() / vnorm).max())
        if rel > 1e-3:
            raise SolverError(
                f"CG did not converge in {self.max_iter} iterations (relative residual {rel:.2g}); "
                "increase --damping, or use --solver direct for small models"
            )
        log.warning("CG stopped at max_iter with relative residual %.2g", rel)
        return X


def power_iteration(matvec, p: int, like: Tensor, iters: int = 50, seed: int = 0) -> float:
    """Largest eigenvalue of a symmetric PSD operator, by power iteration."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(p, generator=gen, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = matvec(v)
        lam_new = float(v @ w)
        nrm = w.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            break
        v = w / nrm
        if abs(lam_new - lam) <= 1e-4 * abs(lam_new):
            lam = lam_new
            break
        lam = lam_new
    return lam


class LissaSolver(InverseHVP):
    """LiSSA (Agarwal et al. 2017): h_j = v + h_{j-1} - (H_j + lambda I) h_{j-1} / scale.

    H_j is the Hessian on a random minibatch, and h_depth / scale -> (H + lambda I)^-1 v. The
    recursion contracts only when scale exceeds the largest eigenvalue of every H_j + lambda I,
    so by default `scale` is set from a power-iteration estimate (max over the full data and a
    few minibatches, times a margin) instead of a magic constant, and `depth` from an estimate of
    the smallest eigenvalue so that the error (1 - lambda_min/scale)^depth is below `tol`.
    """

    name = "lissa"
    capabilities = Capabilities(
        options=frozenset(
            {"scale", "depth", "repeats", "batch_size", "max_depth", "tol", "seed", "block", "max_residual"}
        )
    )

    def __init__(
        self,
        damping: float | None = 0.0,
        scale: float | None = None,
        depth: int | None = None,
        repeats: int = 1,
        batch_size: int | None = None,
        max_depth: int = 20000,
        tol: float = 1e-3,
        seed: int = 0,
        block: int = 256,
        max_residual: float = 0.1,
        *,
        prefer_undamped: bool = False,
    ) -> None:
        super().__init__(damping, prefer_undamped=prefer_undamped)
        self.max_residual = max_residual
        self.scale, self.depth, self.repeats = scale, depth, repeats
        self.batch_size, self.max_depth, self.tol, self.seed, self.block = (
            batch_size,
            max_depth,
            tol,
            seed,
            block,
        )

    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> LissaSolver:
        self.fm, self.x, self.y = fm, x, y
        if self.batch_size is None:
            # Small data: every step on all rows, which makes the recursion the deterministic
            # Neumann series (minibatch noise alone left a 0.2 residual on 1,400 digits).
            self.batch_size = x.shape[0] if x.shape[0] <= FULL_BATCH_ROWS else STOCHASTIC_BATCH
        self._auto_from_trace(fm, x, y)
        theta = fm.flat_params()
        p, n = theta.numel(), x.shape[0]
        full = lambda v: hvp(fm, x, y, v) + self.damping * v  # noqa: E731
        lam_max = power_iteration(full, p, theta, seed=self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        for k in range(3):
            idx = torch.randperm(n, generator=gen)[: self.batch_size]
            mb = lambda v, idx=idx: hvp(fm, x[idx], y[idx], v) + self.damping * v  # noqa: E731
            lam_max = max(lam_max, power_iteration(mb, p, theta, iters=30, seed=self.seed + k + 1))
        self.lam_max = lam_max
        if self.scale is None:
            self.scale = 1.5 * lam_max
        elif self.scale <= lam_max:
            log.warning(
                "LiSSA scale %.3g <= estimated top eigenvalue %.3g: it may diverge",
                self.scale,
                lam_max,
            )
        s = self.scale
        # smallest eigenvalue of H + lambda I = s - top eigenvalue of (s I - H - lambda I)
        shifted = lambda v: s * v - full(v)  # noqa: E731
        lam_min = s - power_iteration(shifted, p, theta, iters=200, seed=self.seed + 7)
        # Power iteration approaches the top of (sI - H) from below, so it over-estimates the
        # smallest eigenvalue when the gap is small, and the depth comes out too short (LiSSA then
        # stops at a residual of 0.17 on logistic regression). A model at a minimum of its
        # regularised objective has H >= weight_decay, which bounds lambda_min from below.
        floor = fm.weight_decay + self.damping
        if floor > 0 and lam_min > floor:
            lam_min = floor
        self.lam_min = lam_min
        if lam_min <= 0:
            raise SolverError(
                f"LiSSA needs a positive definite Hessian: {_hessian_hint(lam_min - self.damping)}"
            )
        if self.depth is None:
            need = math.log(self.tol) / math.log1p(-min(lam_min / s, 0.5))
            self.depth = int(min(self.max_depth, max(100, math.ceil(need))))
            if need > self.max_depth:
                log.warning(
                    "LiSSA depth capped at %d (needs ~%d for tol %.0e); increase --damping for accuracy",
                    self.max_depth,
                    int(need),
                    self.tol,
                )
        return self

    def _solve(self, V: Tensor) -> Tensor:
        return torch.cat(
            [self._solve_block(V[i : i + self.block]) for i in range(0, len(V), self.block)]
        )

    def _solve_block(self, V: Tensor) -> Tensor:
        assert self.fm is not None and self.scale is not None and self.depth is not None
        n = self.x.shape[0]
        s = self.scale
        bound = 100.0 * s / max(self.lam_min, 1e-12) * float(V.norm(dim=1).max()) + 1.0
        total = torch.zeros_like(V)
        for r in range(self.repeats):
            gen = torch.Generator().manual_seed(self.seed + 1000 + r)
            h = V.clone()
            for j in range(self.depth):
                if self.batch_size >= n:
                    xb, yb = self.x, self.y
                else:
                    idx = torch.randint(0, n, (self.batch_size,), generator=gen)
                    xb, yb = self.x[idx], self.y[idx]
                Hh = hvp(self.fm, xb, yb, h) + self.damping * h
                h = V + h - Hh / s
                if j % 50 == 0 or j == self.depth - 1:
                    nrm = float(h.norm(dim=1).max())
                    if not math.isfinite(nrm) or nrm > bound:
                        raise SolverError(
                            f"LiSSA diverged at step {j} (norm {nrm:.3g}); raise --lissa-scale above "
                            f"the largest Hessian eigenvalue (estimated {self.lam_max:.3g}, scale used {s:.3g}) "
                            "or increase --damping"
                        )
            total += h / s
        X = total / self.repeats
        self._check_residual(V, X)
        return X

    def _check_residual(self, V: Tensor, X: Tensor) -> None:
        """One full-data HVP: how far (H + lambda I) X is from V.

        The automatic depth rests on a power-iteration estimate of the smallest eigenvalue, which
        is an over-estimate on ill-conditioned Hessians; so the result is checked, not assumed.
        """
        assert self.fm is not None
        R = V - (hvp(self.fm, self.x, self.y, X) + self.damping * X)
        rel = float((R.norm(dim=1) / V.norm(dim=1).clamp_min(1e-300)).max())
        self.last_residual = rel
        if not math.isfinite(rel) or rel > self.max_residual:
            raise SolverError(
                f"LiSSA did not converge: relative residual {rel:.2g} after depth {self.depth} "
                f"(scale {self.scale:.3g}); raise --lissa-depth, increase --damping, or use --solver cg"
            )

    def describe(self) -> dict:
        return {
            **super().describe(),
            "scale": self.scale,
            "depth": self.depth,
            "repeats": self.repeats,
            "estimated_eigenvalue_range": [
                getattr(self, "lam_min", None),
                getattr(self, "lam_max", None),
            ],
        }


class ArnoldiSolver(InverseHVP):
    """Low-rank inverse (Schioppa et al. 2022): Krylov basis from HVPs, keep the top-k Ritz pairs.

    H is approximated by Q diag(e) Q^T on the span of its top eigenvectors, so
    (H + lambda I)^-1 v ~ Q diag(1 / (e + lambda)) Q^T v. Costs `iterations` full-data HVPs once;
    afterwards every vector costs two (k x p) products, which makes self-influence for every
    example cheap. Lanczos (Arnoldi for a symmetric H) with full re-orthogonalisation.
    """

    name = "arnoldi"
    capabilities = Capabilities(
        options=frozenset({"rank", "iterations", "batch_size", "seed"}),
        storable_factors=True,
        diagonal_without_solve=True,
    )

    def __init__(
        self,
        damping: float | None = 0.0,
        rank: int = 100,
        iterations: int | None = None,
        batch_size: int = 2048,
        seed: int = 0,
        *,
        prefer_undamped: bool = False,
    ) -> None:
        super().__init__(damping, prefer_undamped=prefer_undamped)
        self.rank, self.iterations, self.batch_size, self.seed = rank, iterations, batch_size, seed

    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> ArnoldiSolver:
        self.fm = fm
        self._auto_from_trace(fm, x, y)
        theta = fm.flat_params()
        p = theta.numel()
        m = min(p, self.iterations or max(2 * self.rank, self.rank + 20))
        gen = torch.Generator().manual_seed(self.seed)
        q = torch.randn(p, generator=gen, dtype=theta.dtype).to(theta.device)
        Q = torch.zeros(m, p, dtype=theta.dtype, device=theta.device)
        alphas, betas = [], []
        Q[0] = q / q.norm()
        for j in range(m):
            w = hvp(fm, x, y, Q[j], self.batch_size)
            a = float(Q[j] @ w)
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)  # full re-orthogonalisation
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
            alphas.append(a)
            if j == m - 1:
                break
            b = float(w.norm())
            if not math.isfinite(b):
                raise SolverError("Arnoldi produced NaN/inf; the model or data is not finite")
            if b < 1e-10 * max(abs(a), 1.0):  # invariant subspace found: the basis is complete
                m = j + 1
                break
            betas.append(b)
            Q[j + 1] = w / b
        Q = Q[:m]
        T = torch.diag(torch.tensor(alphas[:m], dtype=theta.dtype))
        if m > 1:
            off = torch.tensor(betas[: m - 1], dtype=theta.dtype)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(T)
        order = torch.argsort(evals.abs(), descending=True)[: self.rank]
        evals, evecs = evals[order], evecs[:, order]
        evals = evals + self.damping
        keep = evals > 1e-10 * evals.abs().max()
        if not keep.all():
            log.warning(
                "Arnoldi dropped %d non-positive Ritz values; consider --damping",
                int((~keep).sum()),
            )
        self.evals = evals[keep].to(theta.device)
        self.basis = evecs[:, keep].to(theta.device).T @ Q  # (k, p) orthonormal rows
        return self

    def _factor_tensors(self) -> dict[str, Tensor]:
        return {"evals": self.evals, "basis": self.basis}

    def _load_tensors(self, fm: FunctionalModel, tensors: dict[str, Tensor]) -> None:
        if tensors["basis"].shape[1] != fm.num_params:
            raise SolverError("stored factors do not match the model's parameters")
        self.evals, self.basis = tensors["evals"], tensors["basis"]

    def _solve(self, V: Tensor) -> Tensor:
        return ((V @ self.basis.T) / self.evals) @ self.basis

    def quadratic(self, G: Tensor, chunk: int = 4096) -> Tensor:
        G = G.to(self.basis)
        return (((G @ self.basis.T) ** 2) / self.evals).sum(1)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "rank": int(self.evals.numel()) if hasattr(self, "evals") else self.rank,
        }
