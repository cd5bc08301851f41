"""Hessian-vector products of the training objective, and the exact Hessian for small p.

H v is computed forward-over-reverse (`jvp` of `grad`), which costs about two gradient
evaluations and never forms H (Pearlmutter 1994). Several vectors are handled at once with
`vmap`, which is what block solvers (CG on many right-hand sides, Lanczos) want.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from auditor.influence.model import FunctionalModel


def _batch_objective(fm: FunctionalModel, n: int):
    """Batch part of R: sum of the batch's weighted losses / n (the regulariser is added apart)."""

    def f(theta: Tensor, xb: Tensor, yb: Tensor, wb: Tensor) -> Tensor:
        return (fm.losses(theta, xb, yb) * wb).sum() / n

    return f


def _weights(n: int, weights: Tensor | None, like: Tensor) -> Tensor:
    if weights is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    return weights.to(dtype=like.dtype, device=like.device)


def hvp(
    fm: FunctionalModel,
    x: Tensor,
    y: Tensor,
    v: Tensor,
    batch_size: int = 1024,
    weights: Tensor | None = None,
) -> Tensor:
    """(H + 0) v for one vector v (p,) or several (k, p), H the Hessian of R over (x, y).

    With `x`, `y` a minibatch this is the stochastic HVP that LiSSA uses.
    """
    theta = fm.flat_params()
    n = x.shape[0]
    w = _weights(n, weights, theta)
    f = _batch_objective(fm, n)
    single = v.dim() == 1
    V = v.unsqueeze(0) if single else v
    V = V.to(theta)
    out = fm.weight_decay * V
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device=fm.device, dtype=fm.dtype)
        yb = y[start : start + batch_size].to(fm.device)
        wb = w[start : start + batch_size]
        g = grad(f)

        def one(vec: Tensor, xb=xb, yb=yb, wb=wb, g=g) -> Tensor:
            return jvp(lambda t: g(t, xb, yb, wb), (theta,), (vec,))[1]

        out = out + vmap(one)(V).detach()
    return out[0] if single else out


def exact_hessian(
    fm: FunctionalModel,
    x: Tensor,
    y: Tensor,
    batch_size: int = 512,
    weights: Tensor | None = None,
    block: int = 128,
) -> Tensor:
    """The p x p Hessian of R, built from HVPs with blocks of unit vectors. Memory p^2: small p only.

    Blocks of `block` columns keep the vectorised HVP's memory at block x batch x activations,
    which `torch.func.hessian` on a whole batch would multiply by p.
    """
    theta = fm.flat_params()
    p = theta.numel()
    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    cols = [hvp(fm, x, y, eye[i : i + block], batch_size, weights) for i in range(0, p, block)]
    H = torch.cat(cols, 0)
    return 0.5 * (H + H.T)
