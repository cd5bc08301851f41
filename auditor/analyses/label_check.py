"""Label check (paper section 5.4): rank training examples so reviewers check likely-wrong labels first.

Every example gets, from one pass over the per-example gradients g_i and H^-1 g_i:
- its self-influence g_i^T (H + lambda I)^-1 g_i: how far the model bent to fit it (the paper's
  score);
- its margin, log p(best other label) - log p(given label), under the trained model and under
  the model trained *without* it (`loo-margin`), the latter predicted by influence (theta_-i =
  theta + H^-1 g_i / n, one Jacobian-vector product) instead of retraining: what cleanlab gets
  from k-fold cross-validation. The leave-one-out model also gives the suggested label.
Which finds more wrong labels depends on whether the model fits them (BENCHMARKS.md,
bench/label_check.py, 3-5 flip seeds per setting):
- a regularised model leaves most wrong labels unfitted; the margin then finds the most, ahead of
  the loss, cleanlab and self-influence (self-influence ~ residual^2 x leverage, and atypical but
  correct examples have high leverage). The leave-one-out margin ties it within about one
  example (slightly behind on small sets: removing a high-leverage example brings the leverage
  term back);
- a model that agrees with every given label has memorised the wrong ones too; margins then carry
  little signal and self-influence finds the most of auditor's scores (the paper's setting).
So the default `auto` ranks by `margin` unless the trained model agrees with at least
MEMORISED_AGREEMENT of the given labels, then by `self-influence`; the audit summary says which
and why. `rank_by` picks any score: loo-margin, self-influence, loss, margin, combined, or
`value`: the predicted reduction of the test set's mean loss if the example is relabelled to its
suggestion (`auditor.analyses.fix_value`; held-out training rows without a test set).

The same leave-one-out probabilities (the trained model's where the first-order step overshoots)
give the estimate of how many labels are wrong (confident learning,
`auditor.analyses.label_noise`, in the summary's `estimate`) and the review workload:
that many findings, in rank order among those whose leave-one-out model prefers another label,
are `flagged`; the rest are ranked only. Only those have a `suggested_label`.

The flagged findings (the top `why_top` where nothing is flagged) also get `fix_value`: what
relabelling or removing each is predicted to change in the test loss and accuracy (or the
held-out rows'), with the total in the summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from auditor.analyses.base import AnalysisInput, AnalysisResult, FindingRecord, FitCache, Progress
from auditor.analyses.fitting import fit_model, rows_of
from auditor.analyses.fix_value import FixValues, Valuation, held_out_evaluation, on_test_set
from auditor.analyses.label_noise import (
    NoiseEstimate,
    estimate_from,
    flag_in_rank_order,
    stored_probs,
)
from auditor.analyses.registry import RANK_BY, LabelCheckConfig
from auditor.analyses.sharding import ShardHooks, StoredRow
from auditor.data.base import Examples, check_test_set
from auditor.errors import AuditorError, DataError, ModelError
from auditor.influence.rows import Rows

__all__ = ["RANK_BY", "SHARD_HOOKS", "LabelCheckConfig", "run", "score_examples"]

MEMORISED_AGREEMENT = 0.995  # `auto`: at or above this training agreement, rank by self-influence
MAX_STORED_PROBS = 100  # a finding's payload keeps its class probabilities up to this many classes


@dataclass
class LabelScores:
    """Per-example scores of one label check, before ranking and storing."""

    indices: np.ndarray
    self_influence: np.ndarray
    loss: np.ndarray
    margin: np.ndarray  # log p(best other label) - log p(given label), trained model
    loo_margin: np.ndarray  # the same for the model trained without the example
    predicted: np.ndarray
    prob_label: np.ndarray
    loo_prob_label: np.ndarray
    suggested: np.ndarray  # best other label of the leave-one-out model
    probs: np.ndarray  # (rows, K) float32: the trained model's class probabilities
    loo_probs: np.ndarray  # (rows, K) float32: the leave-one-out model's class probabilities
    solver: dict
    train_agreement: float  # fraction of *all* training rows whose given label the model predicts
    curvature: dict  # what the curvature covers, which solver and damping, and why
    train_info: dict
    # predicted change of the evaluation rows' mean loss if relabelled to `suggested` (rank_by value)
    value: np.ndarray | None = None
    fitted: Any = None  # the trained model and its influence, kept for `explain_flagged`
    influence: Any = None


def score_examples(
    examples: Examples, cfg: LabelCheckConfig, progress: Progress, cache: FitCache | None = None
) -> LabelScores:
    """Train, fit the curvature, and compute every score (self-influence, loss, margins) for every
    (shard) example. With a `cache`, a model and curvature fitted by an earlier audit of the same
    model, data and settings are reused (every shard of a sharded audit fits the same ones)."""
    progress(0.02, "training model")
    fitted = fit_model(
        examples, cfg.model, progress=lambda f, m: progress(0.02 + 0.33 * f, m),
        cache=cache, reuse=cfg.solver.reuse, lazy_rows=True,
    )  # fmt: skip
    progress(0.35, f"fitting the curvature ({cfg.solver.name} solver)")
    influence = fitted.influence(cfg.solver, few_solves=False)
    fm = influence.fm
    progress(0.45, f"scoring with {fitted.curvature['solver']} curvature on {fm.num_params} parameters")
    idx = np.arange(len(examples))
    if cfg.shard is not None:
        i, k = cfg.shard
        idx = idx[idx % k == i]
    x, y = scored_rows(fitted, idx, cfg.shard)
    # a shard needs it over all rows, not its own, so that every shard makes the same `auto`
    # choice; one run takes it from its scoring pass's outputs instead of a pass of its own
    agreement = float((fitted.predictions() == fitted.y).float().mean()) if cfg.shard is not None else None

    def sub(frac: float, msg: str) -> None:
        progress(0.45 + 0.5 * frac, msg)

    scores = influence.self_scores(x, y, progress=sub)
    losses = fm.loss_fn(scores.outputs, y)  # the same numbers as example_losses, without a pass
    if not torch.isfinite(losses).all():
        raise ModelError(f"the loss of example {int(idx[int((~torch.isfinite(losses)).nonzero()[0])])} is NaN or infinite")
    logp = torch.log_softmax(scores.outputs, -1)
    loo_logp = torch.log_softmax(scores.loo_outputs, -1)
    margin, _ = _margin(logp, y)
    loo_margin, suggested = _margin(loo_logp, y)
    if agreement is None:
        agreement = float((logp.argmax(1) == y).float().mean())
    return LabelScores(
        indices=idx,
        self_influence=scores.self_influence.cpu().numpy(),
        loss=losses.cpu().numpy(),
        margin=margin.cpu().numpy(),
        loo_margin=loo_margin.cpu().numpy(),
        predicted=logp.argmax(1).cpu().numpy(),
        prob_label=logp.gather(1, y[:, None])[:, 0].exp().cpu().numpy(),
        loo_prob_label=loo_logp.gather(1, y[:, None])[:, 0].exp().cpu().numpy(),
        suggested=suggested.cpu().numpy(),
        probs=logp.exp().float().cpu().numpy(),
        loo_probs=loo_logp.exp().float().cpu().numpy(),
        solver=influence.solver.describe(),
        train_agreement=agreement,
        curvature=fitted.curvature,
        train_info=fitted.train_info,
        fitted=fitted,
        influence=influence,
    )


def scored_rows(fitted: Any, idx: np.ndarray, shard: list[int] | None) -> tuple[Any, Tensor]:
    """The rows a run scores: every row (sliced batch by batch, no copy), or a shard's."""
    if shard is None:
        return fitted.x, fitted.y
    if isinstance(fitted.x, Rows):
        return fitted.x.take(idx), fitted.y[idx]
    return fitted.x[idx], fitted.y[idx]


def valuation(scores: LabelScores, test: Examples | None, train: Examples, sharded: bool) -> Valuation:
    """What fixes are evaluated on: the test set, or a seeded sample of held-out training rows the
    trained model agrees with (over *all* rows, so every shard holds out the same ones), judged by
    their leave-one-out margins where the run has them all. A DataError when there is no test set
    and too few rows to hold out."""
    fitted = scores.fitted
    if test is not None:
        check_test_set(train, test)
        x_test, y_test = rows_of(test, fitted.x.dtype, fitted.device)
        return Valuation(scores.influence, on_test_set(x_test, y_test))
    predicted = fitted.predictions() if sharded else torch.as_tensor(scores.predicted, device=fitted.device)
    agrees = (predicted == fitted.y).cpu().numpy()
    loo = (None, None) if sharded else (scores.loo_margin, scores.suggested)
    return Valuation(scores.influence, held_out_evaluation(fitted.x, fitted.y, agrees, *loo))


def value_scores(scores: LabelScores, val: Valuation, shard: list[int] | None) -> np.ndarray:
    """Predicted change of the evaluation loss if each scored row is relabelled to its suggestion
    (negative: the fix helps), for `--rank-by value`: two gradient passes over the rows."""
    x, y = scored_rows(scores.fitted, scores.indices, shard)
    new = torch.as_tensor(scores.suggested, device=y.device)
    return val.loss_change(x, y, new, scores.indices).relabel


# Each valued row costs two inverse-HVP solves and two passes over the evaluation rows per chunk
# of rows: the review workload is valued in full up to this many, in rank order.
MAX_VALUED_ROWS = 2_000


def fix_values(scores: LabelScores, val: Valuation, rows: list[int]) -> FixValues:
    """`Valuation.fix_values` for the given training rows of an unsharded run."""
    fitted, idx = scores.fitted, np.asarray(rows, dtype=np.int64)
    new = torch.as_tensor(scores.suggested[idx], device=fitted.y.device)  # unsharded: positions = rows
    return val.fix_values(fitted.x[idx], fitted.y[idx], new, idx)


def fit_shared(examples: Examples, cfg: LabelCheckConfig, cache: FitCache, progress: Progress) -> dict:
    """Train the model and fit the curvature once and store both in `cache`, so that the shards
    of a sharded label check load them instead of each fitting its own. Returns what was fitted
    (for the log). Without reuse (`--no-reuse`) there is nothing to share: each shard fits."""
    if not cfg.solver.reuse:
        return {"shared": False}
    fitted = fit_model(examples, cfg.model, progress=lambda f, m: progress(0.8 * f, m), cache=cache, lazy_rows=True)
    progress(0.8, "fitting the curvature once for every shard")
    fitted.influence(cfg.solver, few_solves=False)
    return {"shared": True, "training": fitted.train_info, "curvature": fitted.curvature}


WHY_PER_LIST = 5  # training examples per list shown for a flagged example
# Memory one chunk of `explain_flagged` may take for its two (rows x n) and (rows x p) matrices,
# float32: the why lists of every flagged example are computed this many rows at a time, one
# gradient pass over the data set per chunk, so the cost is bounded whatever the flagged count.
WHY_CHUNK_BYTES = 256 * 2**20
WHY_CHUNK_MAX = 1024


def why_chunk_rows(n: int, p: int, budget: int = WHY_CHUNK_BYTES) -> int:
    """Rows per chunk of `explain_flagged`: its influence matrix (n x rows), test factors
    (rows x p) and input distances (rows x n) within `budget` bytes, 16 to WHY_CHUNK_MAX."""
    return int(min(WHY_CHUNK_MAX, max(16, budget // (4 * (2 * n + p)))))


def why_rows(scores: LabelScores, rank_by: str, limit: int, flagged: np.ndarray | None = None) -> list[int]:
    """The rows (example indices) whose "why" lists a label check stores, best-ranked first: its
    flagged findings (positions into `scores`' arrays, when the estimate has chosen them), else
    the top of the ranking; at most `limit` either way (0: none)."""
    if limit <= 0:
        return []
    order = flagged_order(scores, rank_by)
    if flagged is not None and len(flagged):
        member = np.zeros(len(order), dtype=bool)
        member[np.asarray(flagged, dtype=int)] = True
        order = order[member[order]]
    return [int(scores.indices[j]) for j in order[:limit]]


def why_for_rows(
    examples: Examples, cfg: LabelCheckConfig, rows: list[int], cache: FitCache | None = None
) -> dict[int, dict[str, list[dict]]]:
    """`explain_flagged` for given rows in a run that has no scores at hand (the shard that
    completes a sharded audit): the model and curvature come from `cache` (the audit's one fit)."""
    if not rows:
        return {}
    fitted = fit_model(examples, cfg.model, cache=cache, reuse=cfg.solver.reuse, lazy_rows=True)
    influence = fitted.influence(cfg.solver, few_solves=False)
    return explain_flagged(examples, fitted, influence, rows)


def explain_flagged(
    examples: Examples,
    fitted: Any,
    inf: Any,
    rows: list[int],
    top: int = WHY_PER_LIST,
    progress: Progress | None = None,
    chunk: int | None = None,
) -> dict[int, dict[str, list[dict]]]:
    """Why each flagged example (row index) stands out, from the same trained model and curvature.

    For flagged z_i and every training z_j, I_up,loss(z_j, z_i) = -g_i^T H^-1 g_j: negative when
    up-weighting z_j lowers z_i's loss (z_j *helps* the given label), positive when it raises it
    (z_j argues against the given label). A wrong label is typically propped up by few helpers
    and opposed by many harmful examples of the class it truly is. The nearest examples in input
    space are listed beside them, with their influence, because the paper's point is that the
    two differ (section 5.1). The example itself is left out of its own lists. Each example's
    lists come with `total_abs_influence`, the sum of |I_up,loss(z_j, z_i)| over every other
    training example, the scale a reader needs: a listed example's share of it says how much of
    the pull on this label it carries.

    Rows go `chunk` at a time (default: `why_chunk_rows`), one gradient pass over the data set
    each, so that every flagged example can be explained in bounded memory.
    """
    if not rows:
        return {}
    n = len(examples)
    size = chunk or why_chunk_rows(n, int(inf.fm.num_params))
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        if progress is not None:
            progress(start / len(rows), f"finding why flagged examples are flagged ({start:,}/{len(rows):,} examples)")
        out.update(_explain_chunk(examples, fitted, inf, part, top))
    return out


WHY_LISTS = ("helpful", "harmful", "nearest")


def why_payload(why: dict[str, Any]) -> dict[str, Any]:
    """A finding's payload fields from one `explain_flagged` entry: `why` (the lists only, so a
    reader can walk them) and `why_total_abs_influence` (their scale)."""
    out: dict[str, Any] = {"why": {k: why[k] for k in WHY_LISTS if k in why}}
    if why.get("total_abs_influence") is not None:
        out["why_total_abs_influence"] = why["total_abs_influence"]
    return out


def _explain_chunk(examples: Examples, fitted: Any, inf: Any, rows: list[int], top: int) -> dict[int, dict[str, Any]]:
    from auditor.analyses.explain import input_distances

    S = inf.test_factors(fitted.x[rows], fitted.y[rows])
    U = inf.up_loss_from_factors(fitted.x, fitted.y, S)  # (n, k)
    D = input_distances(examples, examples.x[rows])  # (k, n)
    Un, Dn = U.double().cpu().numpy(), D.double().cpu().numpy()
    out: dict[int, dict[str, Any]] = {}
    for col, i in enumerate(rows):
        u, d = Un[:, col], Dn[col].copy()

        def entry(j: int, u: np.ndarray = u, d: np.ndarray = d) -> dict:
            return {
                "index": j, "key": examples.keys[j], "label": int(examples.y[j]),
                "influence": float(u[j]), "distance": float(d[j]),
            }  # fmt: skip

        # only the ends of the order are read: the example itself is at most one of them
        order = np.argsort(u, kind="stable")
        helpful = [int(j) for j in order[: top + 1] if j != i and u[j] < 0][:top]
        harmful = [int(j) for j in order[::-1][: top + 1] if j != i and u[j] > 0][:top]
        d[i] = np.inf
        nearest = [int(j) for j in np.argsort(d, kind="stable")[:top]]
        out[i] = {
            "helpful": [entry(j) for j in helpful],
            "harmful": [entry(j) for j in harmful],
            "nearest": [entry(j) for j in nearest],
            "total_abs_influence": float(np.abs(u).sum() - abs(u[i])),
        }
    return out


def _margin(logp: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(best other label) - log p(given label), best other label) per row."""
    others = logp.clone()
    others.scatter_(1, y[:, None], -torch.inf)
    best, label = others.max(1)
    return best - logp.gather(1, y[:, None])[:, 0], label


def choose_ranking(scores: LabelScores, rank_by: str) -> tuple[str, str]:
    """Resolve `auto` (see the module docstring): (ranking, one-line reason)."""
    if rank_by != "auto":
        return rank_by, "requested"
    if scores.train_agreement >= MEMORISED_AGREEMENT:
        return "self-influence", (
            f"the model agrees with {scores.train_agreement:.1%} of the given labels, so it has fitted "
            "any wrong ones too and margins carry little signal; self-influence measures how far it "
            "bent to fit each example"
        )
    return "margin", (
        f"the model disagrees with {1 - scores.train_agreement:.1%} of the given labels, so it has not "
        "fitted most wrong ones; the margin by which it prefers another label ranks them first"
    )


def ranking_score(scores: LabelScores, rank_by: str) -> np.ndarray:
    """Higher = check first. `combined` averages the percentile ranks of self-influence and loss,
    so neither scale wins."""
    rank_by, _ = choose_ranking(scores, rank_by)
    if rank_by == "value":
        if scores.value is None:
            raise AuditorError("the value ranking needs the predicted value of every fix (label_check.value_scores)")
        return -scores.value  # the largest predicted reduction of the test loss first
    if rank_by == "loo-margin":
        return scores.loo_margin
    if rank_by == "self-influence":
        return scores.self_influence
    if rank_by == "loss":
        return scores.loss
    if rank_by == "margin":
        return scores.margin
    pct = lambda a: (np.argsort(np.argsort(a)) + 1) / len(a)  # noqa: E731
    return 0.5 * (pct(scores.self_influence) + pct(scores.loss))


def flagged_order(scores: LabelScores, rank_by: str) -> np.ndarray:
    """Positions into `scores` arrays, best-ranked first."""
    return np.argsort(-ranking_score(scores, rank_by), kind="stable")


class LabelFindings(Sequence[FindingRecord]):
    """The label check's findings in rank order, each record made when it is read.

    A finding as Python objects is about a kilobyte; a million of them would be the largest thing
    an audit holds, larger than the data it streams. The store reads them once, a chunk at a time
    (`finding_store.upsert_findings`), so only the score arrays (a few floats per example) are kept.
    """

    def __init__(
        self,
        examples: Examples,
        scores: LabelScores,
        rank_by: str,
        why: dict[int, dict] | None = None,
        flagged: np.ndarray | None = None,
        fix_value: dict[int, dict] | None = None,
    ) -> None:
        self.keys, self.labels, self.why = examples.keys, examples.y, why or {}
        self.fix_value = fix_value or {}
        # the score arrays only: not `scores.fitted` (the model and its data), kept while storing
        self.scores = dataclasses.replace(scores, fitted=None, influence=None)
        self.score = ranking_score(scores, rank_by)
        self.order = np.argsort(-self.score, kind="stable")  # flagged_order, from the same scores
        self.flagged = np.zeros(len(self.order), dtype=bool)  # by position into the score arrays
        if flagged is not None:
            self.flagged[flagged] = True
        self.store_probs = scores.loo_probs.shape[1] <= MAX_STORED_PROBS

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, k: int) -> FindingRecord: ...
    @overload
    def __getitem__(self, k: slice) -> list[FindingRecord]: ...

    def __getitem__(self, k: int | slice) -> FindingRecord | list[FindingRecord]:
        if isinstance(k, slice):
            return [self[r] for r in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(f"finding {k} of {len(self)}")
        rank = k % len(self)
        j = int(self.order[rank])
        s, i = self.scores, int(self.scores.indices[j])
        return FindingRecord(
            example_index=i,
            example_key=self.keys[i],
            kind="label",
            score=float(self.score[j]),
            rank=rank + 1,
            label=int(self.labels[i]),
            payload={
                "self_influence": float(s.self_influence[j]),
                "loss": float(s.loss[j]),
                "margin": float(s.margin[j]),
                "loo_margin": float(s.loo_margin[j]),
                "predicted": int(s.predicted[j]),
                # a suggestion only where the model trained without the example prefers another
                # label; elsewhere the model agrees with the given label and has none to offer
                "suggested_label": int(s.suggested[j]) if s.loo_margin[j] > 0 else None,
                "prob_label": float(s.prob_label[j]),
                "loo_prob_label": float(s.loo_prob_label[j]),
                # as the estimate reads them, so the shard completing an audit can recompute it
                **(
                    {"probs": stored_probs(s.probs[j]).tolist(), "loo_probs": stored_probs(s.loo_probs[j]).tolist()}
                    if self.store_probs
                    else {}
                ),
                **(why_payload(self.why[i]) if i in self.why else {}),
                **({"fix_value": self.fix_value[i]} if i in self.fix_value else {}),
            },
            flagged=bool(self.flagged[j]),
        )


def to_findings(
    examples: Examples,
    scores: LabelScores,
    rank_by: str,
    why: dict[int, dict] | None = None,
    flagged: np.ndarray | None = None,
    fix_value: dict[int, dict] | None = None,
) -> LabelFindings:
    return LabelFindings(examples, scores, rank_by, why, flagged, fix_value)


def estimate_and_flag(scores: LabelScores, labels: np.ndarray, rank_by: str) -> tuple[NoiseEstimate, np.ndarray]:
    """The estimated number of wrong labels (`auditor.analyses.label_noise`) and the flagged
    findings: positions into `scores`' arrays, the estimate's count of them taken in rank order
    among the rows whose leave-one-out model prefers another label."""
    estimate = estimate_from(stored_probs(scores.probs), stored_probs(scores.loo_probs), labels[scores.indices])
    flagged = flag_in_rank_order(flagged_order(scores, rank_by), scores.loo_margin > 0, estimate.count)
    return estimate, flagged


def run(inp: AnalysisInput) -> AnalysisResult:
    cfg = LabelCheckConfig.from_params(inp.params)
    scores = score_examples(inp.train, cfg, inp.progress, inp.cache)
    val, value_note = None, None
    if cfg.rank_by == "value" or (cfg.why_top and cfg.shard is None):
        try:
            val = valuation(scores, inp.test, inp.train, sharded=cfg.shard is not None)
        except DataError as exc:
            if cfg.rank_by == "value" or inp.test is not None:
                raise
            value_note = f"not evaluated: {exc}"  # too few rows to hold out, and no test set
    if cfg.rank_by == "value":
        assert val is not None
        inp.progress(0.95, f"predicting what relabelling each example is worth on {val.ev.described}")
        scores.value = value_scores(scores, val, cfg.shard)
    rank_by, reason = choose_ranking(scores, cfg.rank_by)
    estimate: dict[str, Any] = {}
    workload = None
    if cfg.shard is None:  # a shard sees its own rows only: the shard completing the audit estimates
        noise, workload = estimate_and_flag(scores, np.asarray(inp.train.y), rank_by)
        estimate = {"estimate": noise.summary(len(workload))}
    why: dict[int, dict] = {}
    fixes: FixValues | None = None
    if cfg.why_top and cfg.shard is None:
        # every flagged finding, best-ranked first, at most why_top (the top why_top where the
        # estimate flagged none)
        explained = why_rows(scores, rank_by, cfg.why_top, workload)
        why = explain_flagged(
            inp.train, scores.fitted, scores.influence, explained,
            progress=lambda f, m: inp.progress(0.95 + 0.03 * f, m),
        )  # fmt: skip
        if val is not None:
            valued = explained[:MAX_VALUED_ROWS]
            inp.progress(0.98, f"predicting what fixing {len(valued)} flagged examples is worth on {val.ev.described}")
            fixes = fix_values(scores, val, valued)
    fix_payload = {} if fixes is None else {int(i): fixes.payload(j) for j, i in enumerate(fixes.rows)}
    findings = to_findings(inp.train, scores, rank_by, why, workload, fix_payload)
    inp.progress(1.0, "done")
    disagree = int((scores.predicted != inp.train.y[scores.indices]).sum())
    value_summary: dict[str, Any] = {}
    if val is not None or value_note is not None:
        value_summary["fix_value_evaluated_on"] = val.ev.described if val is not None else value_note
    if fixes is not None:
        value_summary["fix_value"] = fixes.summary()
    return AnalysisResult(
        findings,
        {
            **value_summary,
            **estimate,
            "n": int(len(scores.indices)),
            "rank_by": rank_by,
            "rank_by_requested": cfg.rank_by,
            "rank_by_reason": reason,
            "train_agreement": scores.train_agreement,
            "solver": scores.solver,
            "curvature": scores.curvature,
            "training": scores.train_info,
            "model": cfg.model.to_dict(),
            "train_disagreements": disagree,
            "why_top": len(why),
        },
    )


class LabelCheckShards(ShardHooks):
    """A label check split over workers (`auditor.shards` calls these): self-influence is
    independent per example once the model and curvature are fixed, so shard i of k scores the
    rows j with j % k == i with the one shared fit; the why-lists need the global ranking, so
    the completing shard finds them for the audit's top `why_top`."""

    def fit_shared(self, inp: AnalysisInput, progress: Progress) -> dict:
        assert inp.cache is not None, "a sharded label check shares its fit through the artifact store"
        return fit_shared(inp.train, LabelCheckConfig.from_params(inp.params), inp.cache, progress)

    def score_shard(self, inp: AnalysisInput, index: int, count: int) -> AnalysisResult:
        return run(dataclasses.replace(inp, params={**inp.params, "shard": [index, count]}))

    def finish_top(self, settings: LabelCheckConfig) -> tuple[str, int]:
        return "label", settings.why_top

    def finish(self, inp: AnalysisInput, rows: list[int]) -> dict[int, dict]:
        cfg = LabelCheckConfig.from_params({k: v for k, v in inp.params.items() if k != "shard"})
        return {i: why_payload(why) for i, why in why_for_rows(inp.train, cfg, rows, inp.cache).items()}

    def merge_summary(self, summary: dict, *, n: int, shards: int, finished: int) -> dict:
        out = {**summary, "n": n, "shards": shards, "why_top": finished}
        out.pop("train_disagreements", None)  # per-shard figure; not meaningful for the whole
        return out

    def flagged_kind(self) -> str:
        return "label"

    def flag(self, n: int, rows: Iterable[StoredRow]) -> tuple[list[str], dict[str, Any]] | None:
        """The estimate over every row of the audit, from the trained and leave-one-out
        probabilities each shard stored (`probs`, `loo_probs`, kept up to MAX_STORED_PROBS
        classes), read in example order: the order one in-process run computes them in, so both
        give the same estimate and flag the same findings (tests/test_label_estimate.py)."""
        keys: list[str] = []
        ranks, labels = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        suggests = np.zeros(n, dtype=bool)
        probs = loo = None
        # filled in place: a million rows' probabilities as Python lists would be ten times larger
        for i, (_, key, rank, label, payload) in enumerate(rows):
            row, loo_row = payload.get("probs"), payload.get("loo_probs")
            if row is None or loo_row is None or label is None or i >= n:
                return None
            if probs is None or loo is None:
                probs, loo = np.zeros((n, len(row))), np.zeros((n, len(row)))
            keys.append(key)
            ranks[i], labels[i], probs[i], loo[i] = rank, label, row, loo_row
            suggests[i] = payload.get("suggested_label") is not None
        if probs is None or loo is None or len(keys) != n:
            return None
        estimate = estimate_from(probs, loo, labels)
        flagged = flag_in_rank_order(np.argsort(ranks, kind="stable"), suggests, estimate.count)
        return [keys[int(j)] for j in flagged], {"estimate": estimate.summary(len(flagged))}



SHARD_HOOKS = LabelCheckShards()


def recall_at_budgets(
    ranked_indices: np.ndarray, flipped: np.ndarray, budgets=(0.05, 0.1, 0.2, 0.3)
) -> dict[float, float]:
    """Fraction of the truly flipped examples found when checking the top `b` fraction."""
    flipped_set = set(int(i) for i in flipped)
    n = len(ranked_indices)
    out = {}
    for b in budgets:
        top = ranked_indices[: int(round(b * n))]
        out[b] = len(flipped_set.intersection(int(i) for i in top)) / max(len(flipped_set), 1)
    return out


