"""EK-FAC: eigenvalue-corrected Kronecker-factored curvature (George et al. 2018; Grosse et al. 2023).

For a Linear or Conv2d layer with per-example gradient matrix G = ds a^T (output gradients times
inputs, bias as an extra input column), the Gauss-Newton curvature is approximated by
A (x) S with A = E[a a^T], S = E[ds ds^T]. In the Kronecker eigenbasis Q_S (x) Q_A the solve is a
division, and EK-FAC replaces the Kronecker eigenvalues with the exact second moments of the
rotated per-example gradients, E[(Q_S^T G Q_A)^2]. Layers are independent blocks.

Why it is here: self-influence for every example then costs two small matrix products per layer
per example, with no solve, which is what large label-check audits need.
Output gradients use labels sampled from the model's own predictive distribution (the true
Fisher, which equals the GGN for cross-entropy), seeded for determinism.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from auditor.errors import SolverError
from auditor.influence.grads import iter_gradients
from auditor.influence.model import FunctionalModel
from auditor.influence.solvers import InverseHVP


def kfac_parameters(module: nn.Module, names: list[str]) -> list[str]:
    """The parameters among `names` that EK-FAC can cover: weights (and their biases) of Linear
    and ungrouped Conv2d layers. The rest of a model (BatchNorm's affine parameters, embeddings,
    ...) is held fixed when EK-FAC is used, and the audit summary says so."""
    counted, out = set(names), set()
    for mname, mod in module.named_modules():
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            w = f"{mname}.weight" if mname else "weight"
            b = f"{mname}.bias" if mname else "bias"
            if w in counted:
                out.add(w)
                if mod.bias is not None and b in counted:
                    out.add(b)
    return [n for n in names if n in out]


class _Layer:
    def __init__(self, name: str, module: nn.Module, weight: str, bias: str | None) -> None:
        self.name, self.module, self.weight, self.bias = name, module, weight, bias
        self.A: Tensor | None = None
        self.S: Tensor | None = None


class EKFACSolver(InverseHVP):
    """Block-diagonal (per layer) EK-FAC inverse with damping lambda (plus the model's weight decay)."""

    name = "ekfac"

    def __init__(self, damping: float | None = 0.0, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(damping)
        self.batch_size, self.seed = batch_size, seed

    # ---- structure ----------------------------------------------------------------------
    def _layers(self, fm: FunctionalModel) -> list[_Layer]:
        counted = set(fm.names)
        layers, covered = [], set()
        for mname, mod in fm.module.named_modules():
            if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                continue
            w = f"{mname}.weight" if mname else "weight"
            b = f"{mname}.bias" if mname else "bias"
            if w not in counted:
                if b in counted:
                    raise SolverError(f"ekfac needs {w} counted together with {b}")
                continue
            if isinstance(mod, nn.Conv2d) and (mod.groups != 1):
                raise SolverError(f"ekfac does not support grouped convolutions ({mname})")
            layers.append(
                _Layer(mname, mod, w, b if (mod.bias is not None and b in counted) else None)
            )
            covered.update({w, b} & counted)
        missing = counted - covered
        if missing:
            raise SolverError(
                f"ekfac handles Linear/Conv2d weights only; {sorted(missing)[0]} is elsewhere: "
                "use --solver arnoldi or count only the last layer"
            )
        return layers

    # ---- fit ----------------------------------------------------------------------------
    def fit(self, fm: FunctionalModel, x: Tensor, y: Tensor) -> EKFACSolver:
        self.fm = fm
        self.layers = self._layers(fm)
        offsets, pos = {}, 0
        for name, numel in zip(fm.names, fm.numels, strict=True):
            offsets[name] = (pos, pos + numel)
            pos += numel
        self.offsets = offsets
        gen = torch.Generator().manual_seed(self.seed)
        sampled = self._covariances(fm, x, gen)
        for layer in self.layers:
            assert layer.A is not None and layer.S is not None
            _, layer.QA = torch.linalg.eigh(layer.A)
            _, layer.QS = torch.linalg.eigh(layer.S)
            layer.lam = torch.zeros(
                layer.QS.shape[0], layer.QA.shape[0], dtype=fm.dtype, device=fm.device
            )
        # eigenvalue correction: exact second moments of rotated per-example gradients
        n = x.shape[0]
        for _, G in iter_gradients(fm, x, sampled, self.batch_size):
            for layer in self.layers:
                M = self._rotate(self._matrix(layer, G), layer)
                layer.lam += (M**2).sum(0) / n
        undamped = torch.cat([layer.lam.reshape(-1) for layer in self.layers]) + fm.weight_decay
        self.choose_damping(float(undamped.mean()), float(undamped.min()))
        for layer in self.layers:
            layer.lam = layer.lam + fm.weight_decay + self.damping
            if float(layer.lam.min()) <= 0:
                raise SolverError(
                    f"ekfac eigenvalues of layer {layer.name or 'root'} are zero; set --damping > 0"
                )
        return self

    def _covariances(self, fm: FunctionalModel, x: Tensor, gen: Tensor) -> Tensor:
        """Accumulate A and S per layer with hooks; return the sampled labels used."""
        acts: dict[str, Tensor] = {}
        outs: dict[str, Tensor] = {}
        handles = []

        def fwd_hook(layer: _Layer):
            def hook(mod, inputs, output):
                acts[layer.name] = inputs[0].detach()
                outs[layer.name] = output

            return hook

        for layer in self.layers:
            handles.append(layer.module.register_forward_hook(fwd_hook(layer)))
        # parameters must require grad so that layer outputs join the autograd graph
        theta = fm.flat_params().requires_grad_(True)
        state = dict(fm.frozen)
        state.update(fm.unflatten(theta))
        labels = []
        try:
            for start in range(0, x.shape[0], self.batch_size):
                xb = x[start : start + self.batch_size].to(device=fm.device, dtype=fm.dtype)
                logits = functional_call(fm.module, state, (xb,))
                probs = torch.softmax(logits.detach(), -1).cpu()
                yb = torch.multinomial(probs.float(), 1, generator=gen).squeeze(1).to(fm.device)
                labels.append(yb)
                loss = fm.loss_fn(logits, yb).sum()
                grads = torch.autograd.grad(loss, [outs[layer.name] for layer in self.layers])
                for layer, ds in zip(self.layers, grads, strict=True):
                    a, s = self._unfold(layer, acts[layer.name], ds.detach())
                    layer.A = a.T @ a if layer.A is None else layer.A + a.T @ a
                    layer.S = s.T @ s if layer.S is None else layer.S + s.T @ s
        finally:
            for h in handles:
                h.remove()
        return torch.cat(labels)

    def _unfold(self, layer: _Layer, a: Tensor, ds: Tensor) -> tuple[Tensor, Tensor]:
        mod = layer.module
        if isinstance(mod, nn.Conv2d):
            patches = nn.functional.unfold(
                a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride
            )  # (B, C*k*k, L)
            a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
            ds = ds.flatten(2).transpose(1, 2).reshape(-1, ds.shape[1])
        else:
            a = a.reshape(-1, a.shape[-1])
            ds = ds.reshape(-1, ds.shape[-1])
        if layer.bias is not None:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)
        return a, ds

    # ---- flat <-> per-layer matrices ----------------------------------------------------------
    def _matrix(self, layer: _Layer, V: Tensor) -> Tensor:
        lo, hi = self.offsets[layer.weight]
        out_dim = layer.module.weight.shape[0]
        W = V[:, lo:hi].reshape(V.shape[0], out_dim, -1)
        if layer.bias is None:
            return W
        blo, bhi = self.offsets[layer.bias]
        return torch.cat([W, V[:, blo:bhi].unsqueeze(2)], 2)

    def _unmatrix(self, layer: _Layer, M: Tensor, out: Tensor) -> None:
        lo, hi = self.offsets[layer.weight]
        if layer.bias is None:
            out[:, lo:hi] = M.reshape(M.shape[0], -1)
            return
        out[:, lo:hi] = M[:, :, :-1].reshape(M.shape[0], -1)
        blo, bhi = self.offsets[layer.bias]
        out[:, blo:bhi] = M[:, :, -1]

    @staticmethod
    def _rotate(M: Tensor, layer: _Layer) -> Tensor:
        return layer.QS.T @ M @ layer.QA

    # ---- solve ----------------------------------------------------------------------------
    def _solve(self, V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        for layer in self.layers:
            M = self._rotate(self._matrix(layer, V), layer) / layer.lam
            self._unmatrix(layer, layer.QS @ M @ layer.QA.T, out)
        return out

    def quadratic(self, G: Tensor, chunk: int = 1024) -> Tensor:
        G = G.to(self.fm.flat_params())
        total = torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
        for layer in self.layers:
            M = self._rotate(self._matrix(layer, G), layer)
            total += ((M**2) / layer.lam).sum((1, 2))
        return total
