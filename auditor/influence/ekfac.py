"""EK-FAC: eigenvalue-corrected Kronecker-factored curvature (George et al. 2018; Grosse et al. 2023).

For a Linear or Conv2d layer with per-example gradient matrix G = ds a^T (output gradients times
inputs, bias as an extra input column), the Gauss-Newton curvature is approximated by
A (x) S with A = E[a a^T], S = E[ds ds^T]. In the Kronecker eigenbasis Q_S (x) Q_A the solve is a
division, and EK-FAC replaces the Kronecker eigenvalues with the exact second moments of the
rotated per-example gradients, E[(Q_S^T G Q_A)^2]. Layers are independent blocks.

Why it is here: self-influence for every example then costs two small matrix products per layer
per example, with no solve, which is what large label-check audits need. Fitting and scoring read
each layer's inputs and output gradients with hooks (`auditor.influence.taps`) instead of forming
flat per-example gradients; `solve` and `quadratic` on flat vectors remain for explain, the
attack and tests.
Output gradients use labels sampled from the model's own predictive distribution (the true
Fisher, which equals the GGN for cross-entropy), seeded for determinism.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from auditor.errors import SolverError
from auditor.influence.model import FunctionalModel
from auditor.influence.solvers import Capabilities, InverseHVP, SelfScores
from auditor.influence.taps import Watched, jvp_outputs, tap
from auditor.progress import Progress, no_progress


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


# The factors are fitted on at most this many rows (a seeded random sample beyond it), as
# kronfluence's covariance_max_examples / lambda_max_examples: the Kronecker factors and corrected
# eigenvalues are averages, and their sampling error is small next to EK-FAC's own approximation
# long before a million rows. Scores are always computed for every row.
FIT_ROWS = 100_000
# Mixed precision for the forward and backward passes (the factor algebra stays in the model's
# dtype): BENCHMARKS.md and tests/test_influence_engine.py compare it with float32.
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Layer:
    def __init__(self, name: str, module: nn.Module, weight: str, bias: str | None) -> None:
        self.name, self.module, self.weight, self.bias = name, module, weight, bias
        self.A: Tensor | None = None
        self.S: Tensor | None = None


class EKFACSolver(InverseHVP):
    """Block-diagonal (per layer) EK-FAC inverse with damping lambda (plus the model's weight decay)."""

    name = "ekfac"
    capabilities = Capabilities(
        options=frozenset({"batch_size", "seed", "fit_rows", "precision"}),
        storable_factors=True,
        self_scores_fast_path=True,
        diagonal_without_solve=True,
        checks_undamped=True,
    )

    def __init__(
        self,
        damping: float | None = 0.0,
        batch_size: int = 256,
        seed: int = 0,
        fit_rows: int = FIT_ROWS,
        precision: str = "float32",
        *,
        prefer_undamped: bool = False,
    ) -> None:
        super().__init__(damping, prefer_undamped=prefer_undamped)
        if fit_rows < 1:
            raise SolverError(f"ekfac fit_rows must be >= 1, got {fit_rows}")
        if precision not in PRECISIONS:
            raise SolverError(f"ekfac precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.batch_size, self.seed, self.fit_rows, self.precision = batch_size, seed, fit_rows, precision
        self.autocast = PRECISIONS[precision]

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
        self._structure(fm)
        self.fit_n = min(int(x.shape[0]), self.fit_rows)
        if self.fit_n < x.shape[0]:
            pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
            x = x[pick[: self.fit_n].sort().values.to(x.device)]
        # The true Fisher: labels drawn from the model's own predictions in the first pass (seeded),
        # and the same labels again for the eigenvalue correction.
        gen = torch.Generator().manual_seed(self.seed)

        def draw(logits: Tensor) -> Tensor:
            probs = torch.softmax(logits.float(), -1).cpu()
            return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)

        for layer in self.layers:
            layer.A = layer.S = None
        drawn = []
        for _, _, t in self._batches(fm, x, draw):
            drawn.append(t.labels)
            for layer, a, ds in zip(self.layers, t.inputs, t.grads, strict=True):
                a, ds = a.reshape(-1, a.shape[-1]), ds.reshape(-1, ds.shape[-1])
                # summed in float64: n x positions float32 terms lose the small directions
                layer.A = (a.T @ a).double() if layer.A is None else layer.A + (a.T @ a).double()
                layer.S = (ds.T @ ds).double() if layer.S is None else layer.S + (ds.T @ ds).double()
        sampled = torch.cat(drawn)
        for layer in self.layers:
            assert layer.A is not None and layer.S is not None
            layer.QA = eigenbasis(layer.A).to(fm.dtype)
            layer.QS = eigenbasis(layer.S).to(fm.dtype)
            layer.A = layer.S = None  # only the bases are kept
            layer.lam = torch.zeros(
                layer.QS.shape[0], layer.QA.shape[0], dtype=fm.dtype, device=fm.device
            )
        # eigenvalue correction: exact second moments of the rotated per-example gradients
        n = x.shape[0]
        self.sampled = sampled
        for _, _, t in self._batches(fm, x, sampled):
            for layer, a, ds in zip(self.layers, t.inputs, t.grads, strict=True):
                layer.lam += _squares(layer, a, ds) / n
        undamped = torch.cat([layer.lam.reshape(-1) for layer in self.layers]) + fm.weight_decay
        self.choose_damping(float(undamped.mean()), float(undamped.min()))
        for layer in self.layers:
            layer.lam = layer.lam + fm.weight_decay + self.damping
            if float(layer.lam.min()) <= 0:
                raise SolverError(
                    f"ekfac eigenvalues of layer {layer.name or 'root'} are zero; set --damping > 0"
                )
        return self

    # ---- stored factors --------------------------------------------------------------------
    def _structure(self, fm: FunctionalModel) -> None:
        """Layers, hooks and flat offsets: what `fit` derives from the model before any data."""
        self.layers = self._layers(fm)
        self.watched = [Watched(layer.module, layer.bias is not None) for layer in self.layers]
        offsets, pos = {}, 0
        for name, numel in zip(fm.names, fm.numels, strict=True):
            offsets[name] = (pos, pos + numel)
            pos += numel
        self.offsets = offsets

    def _factor_tensors(self) -> dict[str, Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            out.update({f"{i}.QA": layer.QA, f"{i}.QS": layer.QS, f"{i}.lam": layer.lam})
        return out

    def factors(self) -> tuple[dict[str, Tensor], dict]:
        tensors, meta = super().factors()
        meta.update(fit_n=self.fit_n, layers=[layer.name for layer in self.layers])
        return tensors, meta

    def load_factors(self, fm: FunctionalModel, tensors: dict[str, Tensor], meta: dict) -> EKFACSolver:
        self._structure(fm)
        if meta.get("layers") != [layer.name for layer in self.layers]:
            raise SolverError("stored EK-FAC factors are for other layers than this model's")
        self.fit_n = int(meta["fit_n"])
        super().load_factors(fm, tensors, meta)
        return self

    def _load_tensors(self, fm: FunctionalModel, tensors: dict[str, Tensor]) -> None:
        for i, layer in enumerate(self.layers):
            layer.QA, layer.QS, layer.lam = tensors[f"{i}.QA"], tensors[f"{i}.QS"], tensors[f"{i}.lam"]
            if layer.lam.shape != (layer.QS.shape[0], layer.QA.shape[0]):
                raise SolverError(f"stored EK-FAC factors of layer {layer.name or 'root'} do not fit")

    def _batches(self, fm: FunctionalModel, x: Tensor, y: Tensor | Callable[[Tensor], Tensor]):
        """(start, batch inputs, Tapped) for each batch of rows: one forward and backward pass
        each. `y` is the labels, or a function of a batch's logits that draws them."""
        for start in range(0, x.shape[0], self.batch_size):
            xb = x[start : start + self.batch_size].to(device=fm.device, dtype=fm.dtype)
            yb = y if callable(y) else y[start : start + self.batch_size].to(fm.device)
            yield start, xb, tap(fm, self.watched, xb, yb, first_row=start, autocast=self.autocast)

    # ---- scores without per-example flat gradients ----------------------------------------
    def self_scores(
        self,
        x: Tensor,
        y: Tensor,
        n_train: int,
        progress: Progress = no_progress,
        outputs: bool = True,
    ) -> SelfScores:
        """Self-influence g_i^T (H + lambda)^-1 g_i and, with `outputs`, the first-order
        leave-one-out outputs f(x_i; theta + (1/n) H^-1 g_i) of every row, from the layers'
        inputs and output gradients (see `auditor.influence.taps`): equal to
        `InfluenceModel.self_scores` on flat per-example gradients, at a fraction of the cost."""
        fm = self.fm
        assert fm is not None, "fit() first"
        sis, outs, loos = [], [], []
        n = x.shape[0]
        for start, xb, t in self._batches(fm, x, y):
            si = torch.zeros(t.logits.shape[0], dtype=t.logits.dtype, device=t.logits.device)
            changes = []
            for layer, a, ds in zip(self.layers, t.inputs, t.grads, strict=True):
                q, change = _quadratic_and_change(layer, a, ds, outputs)
                si += q
                changes.append(change / n_train if outputs else change)
            sis.append(si)
            outs.append(t.logits)
            if outputs:
                _, delta = jvp_outputs(fm, self.watched, xb, changes)
                loos.append(t.logits + delta)
            done = start + t.logits.shape[0]
            progress(min(1.0, done / n), f"self-influence and leave-one-out outputs ({done:,}/{n:,} examples)")
        logits = torch.cat(outs)
        return SelfScores(torch.cat(sis), logits, torch.cat(loos) if outputs else logits)

    def describe(self) -> dict:
        doc = super().describe()
        doc.update(fit_rows=getattr(self, "fit_n", None), precision=self.precision)
        return doc

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


def eigenbasis(C: Tensor) -> Tensor:
    """Eigenvectors of a covariance, in float64 (as kronfluence does). LAPACK's eigh can fail to
    converge on an ill-conditioned float32 covariance (it did on 20,000 28x28 images with a
    team's CNN); if even float64 fails, a jitter of 1e-10 of the mean eigenvalue is added."""
    C = C.double()
    C = 0.5 * (C + C.T)
    try:
        return torch.linalg.eigh(C)[1]
    except torch.linalg.LinAlgError:
        jitter = 1e-10 * float(C.diagonal().mean().clamp_min(1e-30))
        return torch.linalg.eigh(C + jitter * torch.eye(C.shape[0], dtype=C.dtype, device=C.device))[1]


# ---- per-layer algebra in the eigenbasis ------------------------------------------------------
# M_i = Q_S^T G_i Q_A with G_i = ds_i^T a_i (out x in). For one position (a Linear layer on flat
# inputs) M_i = u_i v_i^T with u_i = Q_S^T ds_i, v_i = Q_A^T a_i, and every quantity below is a
# product of small matrices; with several positions (convolutions) M_i is formed, in whichever
# order costs less, a few rows at a time so that B x out x in numbers never exceed CHUNK_BYTES.
CHUNK_BYTES = 64 * 2**20


def _rows_per_chunk(layer: _Layer, a: Tensor) -> int:
    per_row = layer.QS.shape[0] * layer.QA.shape[0] * a.element_size()
    return max(1, CHUNK_BYTES // per_row)


def _rotated(layer: _Layer, a: Tensor, ds: Tensor) -> tuple[Tensor, Tensor | None]:
    """(M (B, out, in), a Q_A or None): the rotated per-example gradients of a chunk."""
    T, o, i = a.shape[1], ds.shape[2], a.shape[2]
    if T * (o * o + i * i) < o * i * (o + i):
        ar = a @ layer.QA
        return torch.einsum("bto,bti->boi", ds @ layer.QS, ar), ar
    G = torch.einsum("bto,bti->boi", ds, a)
    return layer.QS.T @ G @ layer.QA, None


def _squares(layer: _Layer, a: Tensor, ds: Tensor) -> Tensor:
    """sum_i M_i ** 2 (out, in): the batch's share of the corrected eigenvalues."""
    if a.shape[1] == 1:
        u, v = ds[:, 0] @ layer.QS, a[:, 0] @ layer.QA
        return (u * u).T @ (v * v)
    total = torch.zeros_like(layer.lam)
    step = _rows_per_chunk(layer, a)
    for s in range(0, a.shape[0], step):
        M, _ = _rotated(layer, a[s : s + step], ds[s : s + step])
        total += (M * M).sum(0)
    return total


def _quadratic_and_change(
    layer: _Layer, a: Tensor, ds: Tensor, with_change: bool
) -> tuple[Tensor, Tensor]:
    """(g_i^T H^-1 g_i restricted to this layer (B,), the layer's output change a_i V_i^T
    (B, T, out) under the step V_i = H^-1 g_i, or an empty tensor without `with_change`)."""
    inv = 1.0 / layer.lam
    if a.shape[1] == 1:
        u, v = ds[:, 0] @ layer.QS, a[:, 0] @ layer.QA
        w = (v * v) @ inv.T  # w_k = sum_j v_j^2 / lam_kj
        q = (u * u * w).sum(1)
        change = ((u * w) @ layer.QS.T).unsqueeze(1) if with_change else q.new_empty(0)
        return q, change
    qs, changes = [], []
    step = _rows_per_chunk(layer, a)
    for s in range(0, a.shape[0], step):
        ac, dc = a[s : s + step], ds[s : s + step]
        M, ar = _rotated(layer, ac, dc)
        Mi = M * inv
        qs.append((M * Mi).sum((1, 2)))
        if with_change:
            if ar is not None:
                changes.append(torch.einsum("bti,boi->bto", ar, Mi) @ layer.QS.T)
            else:
                V = layer.QS @ Mi @ layer.QA.T
                changes.append(torch.einsum("bti,boi->bto", ac, V))
    q = torch.cat(qs)
    return q, torch.cat(changes) if with_change else q.new_empty(0)
