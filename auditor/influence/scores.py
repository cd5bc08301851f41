"""Influence scores (Koh & Liang 2017, section 2), on top of a fitted inverse-HVP solver.

Sign conventions follow the paper:
- I_up,params(z)          = -H^-1 g(z)
- I_up,loss(z, z_test)    = -g(z_test)^T H^-1 g(z)   (> 0: up-weighting z raises the test loss)
- self-influence          =  g(z)^T H^-1 g(z)        (the magnitude -I_up,loss(z, z))
- I_pert,loss(z, z_test)  = -g(z_test)^T H^-1 d/dx grad_theta L(z)   (shape of x)
Removing z from n training points is epsilon = -1/n, so the predicted change in test loss is
-(1/n) I_up,loss(z, z_test) = (1/n) g_test^T H^-1 g(z), and the parameters move by
theta_-z - theta = -(1/n) I_up,params(z) = (1/n) H^-1 g(z).

The structure follows pyDVL / kronfluence: `fit` the curvature once, compute the test factors
s_test = H^-1 g_test once per test point, then stream training gradients and take dot products.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from auditor.errors import SolverError
from auditor.influence.grads import gradients, iter_gradients
from auditor.influence.model import FunctionalModel
from auditor.influence.solvers import InverseHVP, SelfScores
from auditor.progress import Progress, no_progress

__all__ = ["InfluenceModel", "SelfScores"]


class InfluenceModel:
    """A trained model's influence: `fit(x, y)` (or `from_factors`) then query scores for many
    points."""

    def __init__(self, fm: FunctionalModel, solver: InverseHVP, batch_size: int = 256) -> None:
        self.fm, self.solver, self.batch_size = fm, solver, batch_size
        self.n: int | None = None

    def fit(self, x: Tensor, y: Tensor) -> InfluenceModel:
        self.fm.check_inputs(x, y)
        self.solver.fit(self.fm, x, y)
        self.n = int(x.shape[0])
        return self

    # ---- fitted once, kept: the factors as data -------------------------------------------------
    def factors(self) -> tuple[dict[str, Tensor], dict]:
        """The fitted solver's factors (`InverseHVP.factors`) with the number of training rows
        they were fitted for: all `from_factors` needs to give back this model."""
        if not self.solver.capabilities.storable_factors:
            raise SolverError(f"the {self.solver.name} solver has no factors to store")
        if self.n is None:
            raise SolverError(f"{self.solver.name} solver has no factors before fit()")
        tensors, meta = self.solver.factors()
        return tensors, {**meta, "n": self.n}

    @classmethod
    def from_factors(
        cls,
        fm: FunctionalModel,
        solver: InverseHVP,
        tensors: dict[str, Tensor],
        meta: dict,
        *,
        n: int | None = None,
        batch_size: int = 256,
    ) -> InfluenceModel:
        """The model `factors()` came from, for `fm`, without fitting: the one way to build an
        influence model from stored curvature. `solver` is a new solver of the same kind and
        settings; `n` (the training rows) is read from `meta`, or given for factors stored
        without it, and must agree when both say."""
        if not solver.capabilities.storable_factors:
            raise SolverError(f"the {solver.name} solver has no factors to load")
        stored_n = meta.get("n")
        if stored_n is not None and n is not None and int(stored_n) != int(n):
            raise SolverError(f"stored factors were fitted on {stored_n} rows, not {n}")
        rows = stored_n if stored_n is not None else n
        if rows is None:
            raise SolverError("stored factors do not say how many training rows they were fitted on")
        inf = cls(fm, solver.load_factors(fm, tensors, meta), batch_size)
        inf.n = int(rows)
        return inf

    # ---- building blocks ------------------------------------------------------------------
    def test_factors(self, x_test: Tensor, y_test: Tensor) -> Tensor:
        """s_test = (H + lambda I)^-1 g(z_test) for each test point: (m, p)."""
        return self.solver.solve(gradients(self.fm, x_test, y_test, self.batch_size))

    def mean_test_factor(self, x_test: Tensor, y_test: Tensor) -> Tensor:
        """s = (H + lambda I)^-1 (1/m sum_t g(z_test_t)): the factor of the *mean* loss of m test
        points, (p,). The gradients are summed as they stream and solved once, so a test set costs
        one solve (a CG or LiSSA run), not m."""
        total = torch.zeros(self.fm.num_params, dtype=self.fm.dtype, device=self.fm.device)
        for _, G in iter_gradients(self.fm, x_test, y_test, self.batch_size):
            total += G.sum(0)
        return self.solver.solve((total / max(int(x_test.shape[0]), 1))[None])[0]

    def up_params(self, x: Tensor, y: Tensor) -> Tensor:
        """I_up,params = -H^-1 g(z): (B, p)."""
        return -self.solver.solve(gradients(self.fm, x, y, self.batch_size))

    # ---- scores ---------------------------------------------------------------------------
    def up_loss(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        progress: Progress = no_progress,
    ) -> Tensor:
        """I_up,loss(z_i, z_test_j) as an (n_train, m_test) matrix, streamed over training data."""
        S = self.test_factors(x_test, y_test)
        return self.up_loss_from_factors(x_train, y_train, S, progress)

    def up_loss_from_factors(
        self, x_train: Tensor, y_train: Tensor, S: Tensor, progress: Progress = no_progress
    ) -> Tensor:
        out = []
        n = x_train.shape[0]
        for start, G in iter_gradients(self.fm, x_train, y_train, self.batch_size):
            out.append(-(G @ S.T))
            progress(min(1.0, (start + G.shape[0]) / n), f"scoring training examples ({start + G.shape[0]:,}/{n:,} examples)")
        return torch.cat(out)

    def self_influence(self, x: Tensor, y: Tensor, progress: Progress = no_progress) -> Tensor:
        """g_i^T (H + lambda I)^-1 g_i for every row: (n,). Diagonal only, never n x n."""
        if self.solver.capabilities.self_scores_fast_path:  # EK-FAC: layer taps, no flat gradients
            return self.solver.self_scores(x, y, self.n or x.shape[0], progress, outputs=False).self_influence
        out = []
        n = x.shape[0]
        for start, G in iter_gradients(self.fm, x, y, self.batch_size):
            out.append(self.solver.quadratic(G))
            progress(min(1.0, (start + G.shape[0]) / n), f"self-influence ({start + G.shape[0]:,}/{n:,} examples)")
        return torch.cat(out)

    def self_scores(self, x: Tensor, y: Tensor, progress: Progress = no_progress) -> SelfScores:
        """Self-influence and leave-one-out outputs of every row, from one pass over the gradients.

        theta_-i, the model trained without z_i, is predicted without retraining: theta + (1/n)
        H^-1 g_i (the paper's I_up,params at epsilon = -1/n). It is pushed through the model to
        first order, f(x_i; theta_-i) ~ f(x_i; theta) + J_i (1/n) H^-1 g_i, with one
        Jacobian-vector product per example. This is what cross-validation estimates by
        retraining k times (cleanlab's out-of-fold probabilities): how the model would judge z_i
        had it never seen it. First order under-estimates large removals (1.24x on the largest
        in the tests), and from a memorised example, whose gradient is near zero, the step is
        small (BENCHMARKS.md, label check). The same H^-1 g_i gives the self-influence
        g_i^T H^-1 g_i for free.
        """
        assert self.n is not None, "fit() first"
        if self.solver.capabilities.self_scores_fast_path:  # EK-FAC: layer taps, no flat gradients
            return self.solver.self_scores(x, y, self.n, progress)
        return self.self_scores_flat(x, y, progress)

    def self_scores_flat(self, x: Tensor, y: Tensor, progress: Progress = no_progress) -> SelfScores:
        """`self_scores` from flat per-example gradients and one `solve` per batch: what every
        solver supports, and the reference the EK-FAC shortcut is tested against."""
        assert self.n is not None, "fit() first"
        theta = self.fm.flat_params()

        def one(xi: Tensor, vi: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(lambda th: self.fm.forward(th, xi.unsqueeze(0))[0], (theta,), (vi,))

        per_example = vmap(one)
        sis, outs, loos = [], [], []
        n = x.shape[0]
        for start, G in iter_gradients(self.fm, x, y, self.batch_size):
            V = self.solver.solve(G)
            xb = x[start : start + G.shape[0]].to(device=self.fm.device, dtype=self.fm.dtype)
            out, delta = per_example(xb, V / self.n)
            sis.append((G * V).sum(1))
            outs.append(out.detach())
            loos.append((out + delta).detach())
            progress(min(1.0, (start + G.shape[0]) / n), f"self-influence and leave-one-out outputs ({start + G.shape[0]:,}/{n:,} examples)")
        return SelfScores(torch.cat(sis), torch.cat(outs), torch.cat(loos))

    def removal_effect(self, up_loss: Tensor) -> Tensor:
        """Predicted change in test loss when each training point is removed: -(1/n) I_up,loss."""
        assert self.n is not None, "fit() first"
        return -up_loss / self.n

    def pert_loss(self, x_train: Tensor, y_train: Tensor, s_test: Tensor) -> Tensor:
        """I_pert,loss(z_i, z_test) for each training row, given s_test = H^-1 g_test (p,).

        = -d/dx [s_test . grad_theta L(x, y)]: one double-backward per example, vectorised, without
        forming the (p x d) mixed derivative.
        """
        theta = self.fm.flat_params()
        s = s_test.to(theta)
        g_theta = grad(self.fm.example_loss)

        def directional(xi: Tensor, yi: Tensor) -> Tensor:
            return -(g_theta(theta, xi, yi) * s).sum()

        per_example = vmap(grad(directional), in_dims=(0, 0))
        out = []
        for start in range(0, x_train.shape[0], self.batch_size):
            xb = x_train[start : start + self.batch_size].to(
                device=self.fm.device, dtype=self.fm.dtype
            )
            out.append(
                per_example(
                    xb, y_train[start : start + self.batch_size].to(self.fm.device)
                ).detach()
            )
        return torch.cat(out)
