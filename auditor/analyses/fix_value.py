"""What fixing a label is worth: the influence-predicted change of the test set's mean loss and
accuracy if a training label is changed to the suggestion (relabel) or the example is removed.

Derivation (PAPER.md, I_up,params). The model minimises R(theta) = (1/n) sum_j L(z_j, theta) +
(lambda/2) ||theta||^2. Up-weighting a point z by epsilon moves the minimiser by
epsilon I_up,params(z) = -epsilon H^-1 g(z), with g(z) = grad_theta L(z, theta^). So
- remove z_i = (x_i, y): epsilon = -1/n,            d_theta = (1/n) H^-1 g_i(y);
- relabel it to y': remove (x_i, y) and add (x_i, y') with epsilon = +1/n,
                                                     d_theta = (1/n) H^-1 (g_i(y) - g_i(y')).
The test set's mean loss L_test = (1/m) sum_t L(z_t) then changes by grad L_test . d_theta, i.e.
(1/n) g_i(y) . s for a removal and (1/n) (g_i(y) - g_i(y')) . s for a relabel, where
s = H^-1 grad L_test is solved once for the whole test set (H is symmetric). Negative: the fix
lowers the test loss. `InfluenceModel.up_loss_from_factors` gives -g_i . S, hence the signs below.

Accuracy. A test point is correct while its margin M_t = log p(y_t) - log p(c_t) > 0, c_t the
best other class at theta^. Linearised: dM_t = (g_t(c_t) - g_t(y_t)) . d_theta (log p(k) = -L(x, k)).
The predicted change of the accuracy is the mean over test points of [M_t + dM_t > 0] - [M_t > 0].
Approximations: first order in d_theta (H and c_t held fixed: a third class that overtakes is
missed, as is curvature of the margin), and accuracy is a count, so one example moves it by
whole test points, usually by none. For that, each valued row's d_theta is solved (H^-1 g_i under
both labels, a chunk of rows at a time, ROW_CHUNK_ELEMENTS) and dotted with every test point's
gradients under its label and its runner-up class (two passes over the test set per chunk).

Without a test set, fixes are evaluated on held-out training rows: a seeded sample of up to
HELD_OUT_ROWS rows whose given label the trained model predicts (a fix scored against the wrong
labels of other rows is scored against itself: on digits with 10% flips, a uniform sample put
41 flips in the value ranking's top 60, this one 52, a test set 54), split into two halves. A
valued row outside the sample is evaluated on all of it, a row inside one half on the other half
only, so no row is ever evaluated on itself. These rows were trained on, and chosen because the
trained model predicts them, so a row's correctness before the fix is taken from the model
trained *without* it (its leave-one-out margin, which the label check already predicts);
otherwise every one starts correct and a fix could only lose accuracy. The figure is a proxy for
a test set's, which the `evaluated_on` text says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auditor.errors import DataError
from auditor.influence import InfluenceModel
from auditor.influence.rows import Rows

HELD_OUT_ROWS = 1000  # held-out training rows evaluated on when there is no test set
HELD_OUT_MIN = 20  # fewer rows than this: two halves too small to say anything
# numbers in one chunk of d_theta vectors (rows x 2 labels x p): 1 GiB in float64, about what
# the why lists' factors of the top 50 hold for a large model
ROW_CHUNK_ELEMENTS = 2**27
ROW_CHUNK_ROWS = 256  # and at most this many rows, so the (m, 2 x rows) products stay small
MARGIN_BATCH = 1024

__all__ = [
    "HELD_OUT_MIN",
    "HELD_OUT_ROWS",
    "Evaluation",
    "FixValues",
    "Valuation",
    "check_value_ranking",
    "held_out_evaluation",
    "on_test_set",
]


@dataclass(frozen=True)
class Evaluation:
    """The rows a fix is evaluated on. `half` (m,): 0 for a test set, 1 or 2 for the half of the
    held-out sample; `train_half` (n,): which half each training row is in (0: none)."""

    x: Any  # Tensor or Rows, (m, ...)
    y: Tensor  # (m,)
    half: np.ndarray
    train_half: np.ndarray | None
    described: str
    # held-out rows: margin and runner-up class before the fix, from the leave-one-out model
    base_margin: Tensor | None = None
    runner_up: Tensor | None = None

    @property
    def groups(self) -> list[int]:
        return sorted({int(h) for h in self.half})

    def row_halves(self, rows: np.ndarray) -> np.ndarray:
        if self.train_half is None:
            return np.zeros(len(rows), dtype=np.int8)
        return self.train_half[np.asarray(rows, dtype=np.int64)]

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """(k, groups): how each valued row's mean evaluation loss combines the groups' means."""
        sizes = np.array([(self.half == g).sum() for g in self.groups], dtype=np.float64)
        counted = self.counted(rows, per_group=True)
        w = counted * sizes
        return w / w.sum(1, keepdims=True)

    def counted(self, rows: np.ndarray, per_group: bool = False) -> np.ndarray:
        """(k, m) bool, or (k, groups) with `per_group`: which evaluation rows count for each
        valued row (all, except its own half of a held-out sample)."""
        own = self.row_halves(rows)[:, None]
        cols = np.array(self.groups) if per_group else self.half
        return (own == 0) | (cols[None, :] != own)


def on_test_set(x: Any, y: Tensor) -> Evaluation:
    m = int(y.shape[0])
    return Evaluation(x, y, np.zeros(m, dtype=np.int8), None, f"{m:,} test rows")


def check_value_ranking(name: str, n: int) -> None:
    """`--rank-by value` without a test set needs held-out training rows; refuse (one line,
    before anything is stored) a data set too small to hold out two halves."""
    if n < HELD_OUT_MIN:
        raise DataError(
            f"--rank-by value without a test set evaluates fixes on held-out training rows, and "
            f"dataset {name!r} has {n} examples (at least {HELD_OUT_MIN} needed): pass --test DATASET"
        )


def held_out_evaluation(
    x: Any,
    y: Tensor,
    agrees: np.ndarray,
    loo_margin: np.ndarray | None = None,
    loo_runner_up: np.ndarray | None = None,
    size: int = HELD_OUT_ROWS,
    seed: int = 0,
) -> Evaluation:
    """A seeded sample of training rows to evaluate fixes on when there is no test set, in two
    halves (see the module docstring): rows the trained model agrees with (`agrees`, (n,) bool),
    or any rows when fewer than HELD_OUT_MIN do. `loo_margin` (n,): log p(best other) - log p(given label)
    of the leave-one-out model, `loo_runner_up` (n,) its best other class; without them (a
    shard, which has its own rows' only) the accuracy is judged by the trained model."""
    n = int(y.shape[0])
    if n < HELD_OUT_MIN:
        raise DataError(
            f"{n} training rows are too few to hold out (at least {HELD_OUT_MIN}); give a test set"
        )
    pool = np.flatnonzero(agrees)
    if len(pool) < HELD_OUT_MIN:
        pool = np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
    half = np.where(rng.permutation(len(chosen)) % 2 == 0, 1, 2).astype(np.int8)
    train_half = np.zeros(n, dtype=np.int8)
    train_half[chosen] = half
    x_rows, y_rows = _take(x, y, chosen)
    base = runner = None
    if loo_margin is not None and loo_runner_up is not None:
        base = -torch.as_tensor(loo_margin[chosen], device=y.device)
        runner = torch.as_tensor(loo_runner_up[chosen], dtype=torch.long, device=y.device)
    described = f"{len(chosen):,} held-out training rows (no test set)"
    return Evaluation(x_rows, y_rows, half, train_half, described, base, runner)


@dataclass
class LossChange:
    """Predicted change of the mean evaluation loss, per valued row (k,)."""

    remove: np.ndarray
    relabel: np.ndarray


@dataclass
class FixValues:
    """Predicted changes (after minus before) per valued row (k,), and their first-order totals."""

    rows: np.ndarray
    remove_loss: np.ndarray
    relabel_loss: np.ndarray
    remove_accuracy: np.ndarray  # fraction of evaluation rows (0.01 = one point in a hundred)
    relabel_accuracy: np.ndarray
    total: dict[str, dict[str, float]]  # {"relabel"|"remove": {"test_loss", "test_accuracy"}}
    evaluated_on: str

    def payload(self, j: int) -> dict[str, Any]:
        """The finding payload's `fix_value` of the j-th valued row."""
        return {
            "relabel": {
                "test_loss": float(self.relabel_loss[j]),
                "test_accuracy": float(self.relabel_accuracy[j]),
            },
            "remove": {
                "test_loss": float(self.remove_loss[j]),
                "test_accuracy": float(self.remove_accuracy[j]),
            },
            "evaluated_on": self.evaluated_on,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "evaluated_on": self.evaluated_on,
            "rows": len(self.rows),
            "predicted_total": self.total,
        }


class Valuation:
    """A trained model's influence and the rows fixes are evaluated on; the mean-loss factors
    (one per group of evaluation rows) are solved once and reused for every valued row."""

    def __init__(self, inf: InfluenceModel, evaluation: Evaluation) -> None:
        assert inf.n is not None, "fit the influence model first"
        self.inf, self.ev, self.n = inf, evaluation, inf.n
        self._factors: Tensor | None = None

    def loss_factors(self) -> Tensor:
        """(groups, p): H^-1 grad of the mean loss of each group of evaluation rows."""
        if self._factors is None:
            cols = []
            for g in self.ev.groups:
                idx = np.flatnonzero(self.ev.half == g)
                x, y = (
                    (self.ev.x, self.ev.y)
                    if len(idx) == len(self.ev.half)
                    else _take(self.ev.x, self.ev.y, idx)
                )
                cols.append(self.inf.mean_test_factor(x, y))
            self._factors = torch.stack(cols)
        return self._factors

    def loss_change(self, x: Any, y: Tensor, y_new: Tensor, rows: np.ndarray) -> LossChange:
        """Predicted change of the mean evaluation loss for removing / relabelling to `y_new` each
        row of (x, y), whose training indices are `rows`: two gradient passes over those rows."""
        S = self.loss_factors()
        w = torch.as_tensor(self.ev.weights(rows), dtype=S.dtype, device=S.device)
        given = (self.inf.up_loss_from_factors(x, y, S) * w).sum(1)  # -g_i(y) . s_i
        new = (self.inf.up_loss_from_factors(x, y_new, S) * w).sum(1)  # -g_i(y') . s_i
        remove = -given / self.n
        relabel = (new - given) / self.n
        return LossChange(_np(remove), _np(relabel))

    def fix_values(self, x: Any, y: Tensor, y_new: Tensor, rows: np.ndarray) -> FixValues:
        """Loss and accuracy changes for each of the rows (a few hundred: each costs two solves),
        with the totals over all of them (see the module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        loss = self.loss_change(x, y, y_new, rows)
        margins, runner_up = self._margins()
        counted = torch.as_tensor(self.ev.counted(rows), device=margins.device)  # (k, m)
        correct = margins > 0
        acc = {"remove": [], "relabel": []}
        total = {"remove": torch.zeros_like(margins), "relabel": torch.zeros_like(margins)}
        p = self.inf.fm.num_params
        chunk = max(1, min(ROW_CHUNK_ROWS, ROW_CHUNK_ELEMENTS // (2 * p)))
        for start in range(0, len(rows), chunk):
            sl = slice(start, start + chunk)
            k = len(rows[sl])
            V = torch.cat(
                [self.inf.test_factors(x[sl], y[sl]), self.inf.test_factors(x[sl], y_new[sl])]
            )
            # -g_t(label) . V for every evaluation row t: (m, 2k); margin gradient . V = P_y - P_c
            P = self.inf.up_loss_from_factors(self.ev.x, self.ev.y, V)
            P -= self.inf.up_loss_from_factors(self.ev.x, runner_up, V)
            deltas = {"remove": P[:, :k] / self.n, "relabel": (P[:, :k] - P[:, k:]) / self.n}
            mask = counted[sl].T  # (m, k)
            for name, dM in deltas.items():
                flips = ((margins[:, None] + dM) > 0).to(dM.dtype) - correct[:, None].to(dM.dtype)
                acc[name].append((flips * mask).sum(0) / mask.sum(0).clamp_min(1))
                total[name] += (dM * mask).sum(1)
        totals = {
            name: {
                "test_loss": float(getattr(loss, name).sum()),
                "test_accuracy": float(
                    ((margins + total[name]) > 0).double().mean() - correct.double().mean()
                ),
            }
            for name in ("relabel", "remove")
        }
        empty = torch.zeros(0, dtype=margins.dtype)
        return FixValues(
            rows=rows,
            remove_loss=loss.remove,
            relabel_loss=loss.relabel,
            remove_accuracy=_np(torch.cat(acc["remove"]) if acc["remove"] else empty),
            relabel_accuracy=_np(torch.cat(acc["relabel"]) if acc["relabel"] else empty),
            total=totals,
            evaluated_on=self.ev.described,
        )

    def _margins(self) -> tuple[Tensor, Tensor]:
        """(margin log p(y_t) - log p(c_t), runner-up class c_t) of every evaluation row."""
        fm = self.inf.fm
        if self.ev.base_margin is not None and self.ev.runner_up is not None:
            return self.ev.base_margin.to(device=fm.device, dtype=fm.dtype), self.ev.runner_up.to(
                fm.device
            )
        theta = fm.flat_params()
        margins, classes = [], []
        with torch.no_grad():
            for start in range(0, int(self.ev.y.shape[0]), MARGIN_BATCH):
                xb = self.ev.x[start : start + MARGIN_BATCH].to(device=fm.device, dtype=fm.dtype)
                yb = self.ev.y[start : start + MARGIN_BATCH].to(fm.device)
                logp = torch.log_softmax(fm.forward(theta, xb), -1)
                own = logp.gather(1, yb[:, None])[:, 0]
                logp.scatter_(1, yb[:, None], -torch.inf)
                best, c = logp.max(1)
                margins.append(own - best)
                classes.append(c)
        return torch.cat(margins), torch.cat(classes)


def _take(x: Any, y: Tensor, idx: np.ndarray) -> tuple[Any, Tensor]:
    if isinstance(x, Rows):
        return x.take(idx), y[torch.as_tensor(idx, device=y.device)]
    t = torch.as_tensor(idx, device=y.device)
    return x[t.to(x.device)], y[t]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()
