"""Hessian-vector products of the training objective, and the exact Hessian for small p.

H v is computed forward-over-reverse (`jvp` of `grad`), which costs about two gradient
evaluations and never forms H (Pearlmutter 1994). Several vectors are handled at once with
`vmap`, which is what block solvers (CG on many right-hand sides, Lanczos) want.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from auditor.influence.model import FunctionalModel, cross_entropy


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
    """The p x p Hessian of R. Memory p^2: small p only.

    When the counted parameters are one Linear layer whose output is the model's output under
    cross-entropy (logistic regression; `--params last` of any classifier), the Hessian has the
    closed form (1/n) sum_i w_i A_i (x) a_i a_i^T + weight_decay I, with A_i = diag(p_i) - p_i p_i^T
    and a_i the layer's input with a 1 for the bias: k^2 matrix products of the inputs, tens of
    times faster than p HVPs (bench/lds.py). Otherwise it is built from HVPs with blocks of unit
    vectors; blocks of `block` columns keep the vectorised HVP's memory at block x batch x
    activations, which `torch.func.hessian` on a whole batch would multiply by p.
    """
    closed = last_linear_hessian(fm, x, y, batch_size, weights)
    if closed is not None:
        return closed
    theta = fm.flat_params()
    p = theta.numel()
    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    cols = [hvp(fm, x, y, eye[i : i + block], batch_size, weights) for i in range(0, p, block)]
    H = torch.cat(cols, 0)
    return 0.5 * (H + H.T)


def last_linear(fm: FunctionalModel, x: Tensor) -> nn.Linear | None:
    """The Linear layer whose weight (and bias) are all the counted parameters, if the model's
    output is that layer's output unchanged; else None."""
    if fm.loss_fn is not cross_entropy:
        return None
    for mname, mod in fm.module.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        names = {f"{mname}.weight" if mname else "weight"}
        if mod.bias is not None:
            names.add(f"{mname}.bias" if mname else "bias")
        if set(fm.names) != names:
            continue
        seen: list[Tensor] = []
        handle = mod.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
        try:
            with torch.no_grad():
                out = fm.forward(fm.flat_params(), x[:2].to(device=fm.device, dtype=fm.dtype))
        finally:
            handle.remove()
        return mod if seen and seen[-1] is out else None
    return None


def last_linear_hessian(
    fm: FunctionalModel, x: Tensor, y: Tensor, batch_size: int = 1024, weights: Tensor | None = None
) -> Tensor | None:
    """The exact Hessian in closed form when only a final Linear layer counts (see
    `exact_hessian`), or None when the model is not of that form."""
    layer = last_linear(fm, x)
    if layer is None:
        return None
    n = x.shape[0]
    w = _weights(n, weights, fm.flat_params())
    k, d = layer.out_features, layer.in_features
    has_bias = layer.bias is not None
    da = d + int(has_bias)
    H4 = torch.zeros(k, da, k, da, dtype=fm.dtype, device=fm.device)
    inputs: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb = x[start : start + batch_size].to(device=fm.device, dtype=fm.dtype)
                logits = fm.forward(fm.flat_params(), xb)
                a = inputs.pop().reshape(xb.shape[0], d)
                if has_bias:
                    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)
                p = torch.softmax(logits, -1)
                wb = w[start : start + batch_size, None]
                # sum_i w_i (diag(p_i) - p_i p_i^T) (x) a_i a_i^T: the diagonal blocks, then the
                # outer-product part as one product of the rows sqrt(w_i) p_i (x) a_i
                for c in range(k):
                    H4[c, :, c, :] += (a * (wb * p[:, c : c + 1])).T @ a
                R = ((wb.sqrt() * p)[:, :, None] * a[:, None, :]).reshape(a.shape[0], k * da)
                H4 -= (R.T @ R).reshape(k, da, k, da)
    finally:
        handle.remove()
    H4 /= n
    # flat order: the weight (k x d, row-major), then the bias (k), as fm.names lists them
    W = H4[:, :d, :, :d].reshape(k * d, k * d)
    if not has_bias:
        H = W
    else:
        Wb = H4[:, :d, :, d].reshape(k * d, k)
        bb = H4[:, d, :, d]
        H = torch.cat([torch.cat([W, Wb], 1), torch.cat([Wb.T, bb], 1)], 0)
        if fm.names[0].endswith("bias"):  # bias listed first
            perm = torch.cat([torch.arange(k * d, k * d + k), torch.arange(k * d)]).to(H.device)
            H = H[perm][:, perm]
    H = H + fm.weight_decay * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return 0.5 * (H + H.T)
