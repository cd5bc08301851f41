"""Label check (paper section 5.4): rank training examples so reviewers check likely-wrong labels first.

Every example gets its self-influence g_i^T (H + lambda I)^-1 g_i: how much the example shapes its
own fit. A wrong label is fitted only by bending the model towards it, so it tends to rank high.
`rank_by` lets users compare with the training loss (the usual baseline) and a combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.analyses.base import AnalysisInput, AnalysisResult, FindingRecord, Progress
from auditor.analyses.common import ModelSpec, SolverSpec, fit_model
from auditor.analyses.params import parse_specs
from auditor.data.base import Examples
from auditor.errors import AuditorError
from auditor.influence.grads import example_losses

RANK_BY = ("self-influence", "loss", "combined")
DIRECT_LIMIT = 3000  # "auto" solver: exact below this many parameters, EK-FAC above


@dataclass
class LabelCheckConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=lambda: SolverSpec(name="auto"))
    rank_by: str = "self-influence"
    shard: tuple[int, int] | None = None  # (index, count): score only rows i with i % count == index

    @classmethod
    def from_params(cls, params: dict) -> LabelCheckConfig:
        rank_by = params.get("rank_by", "self-influence")
        if rank_by not in RANK_BY:
            raise AuditorError(f"--rank-by must be one of {', '.join(RANK_BY)}; got {rank_by!r}")
        shard = params.get("shard")
        model, solver = parse_specs(params)
        named = params.get("solver")
        if not (isinstance(named, str) or (isinstance(named, dict) and "name" in named)):
            solver.name = "auto"  # exact below DIRECT_LIMIT parameters, EK-FAC above
        return cls(
            model=model,
            solver=solver,
            rank_by=rank_by,
            shard=tuple(shard) if shard else None,
        )


@dataclass
class LabelScores:
    """Per-example scores of one label check, before ranking and storing."""

    indices: np.ndarray
    self_influence: np.ndarray
    loss: np.ndarray
    predicted: np.ndarray
    prob_label: np.ndarray
    suggested: np.ndarray
    solver: dict


def resolve_solver(spec: SolverSpec, num_params: int) -> SolverSpec:
    if spec.name != "auto":
        return spec
    return SolverSpec("direct" if num_params <= DIRECT_LIMIT else "ekfac", spec.damping, spec.options)


def score_examples(examples: Examples, cfg: LabelCheckConfig, progress: Progress) -> LabelScores:
    """Train, fit the curvature, and compute self-influence and loss for every (shard) example."""
    progress(0.02, "training model")
    fitted = fit_model(examples, cfg.model, progress=lambda f, m: progress(0.02 + 0.33 * f, m))
    fm = fitted.functional()
    solver = resolve_solver(cfg.solver, fm.num_params)
    progress(0.35, f"fitting {solver.name} curvature on {fm.num_params} parameters")
    influence = fitted.influence(solver)
    idx = np.arange(len(examples))
    if cfg.shard is not None:
        i, k = cfg.shard
        idx = idx[idx % k == i]
    x, y = fitted.x[idx], fitted.y[idx]

    def sub(frac: float, msg: str) -> None:
        progress(0.45 + 0.5 * frac, msg)

    si = influence.self_influence(x, y, progress=sub)
    losses = example_losses(fm, x, y)
    probs = fitted.predict_proba(x)
    predicted = probs.argmax(1)
    prob_label = probs.gather(1, y[:, None])[:, 0]
    # suggested label: the model's best alternative to the given label
    masked = probs.clone()
    masked.scatter_(1, y[:, None], -1.0)
    suggested = masked.argmax(1)
    return LabelScores(
        idx,
        si.cpu().numpy(),
        losses.cpu().numpy(),
        predicted.numpy(),
        prob_label.numpy(),
        suggested.numpy(),
        influence.solver.describe(),
    )


def ranking_score(scores: LabelScores, rank_by: str) -> np.ndarray:
    """Higher = check first. `combined` averages the two percentile ranks, so neither scale wins."""
    if rank_by == "self-influence":
        return scores.self_influence
    if rank_by == "loss":
        return scores.loss
    pct = lambda a: (np.argsort(np.argsort(a)) + 1) / len(a)  # noqa: E731
    return 0.5 * (pct(scores.self_influence) + pct(scores.loss))


def to_findings(examples: Examples, scores: LabelScores, rank_by: str) -> list[FindingRecord]:
    score = ranking_score(scores, rank_by)
    order = np.argsort(-score, kind="stable")
    records = []
    for rank, j in enumerate(order, start=1):
        i = int(scores.indices[j])
        records.append(
            FindingRecord(
                example_index=i,
                example_key=examples.keys[i],
                kind="label",
                score=float(score[j]),
                rank=rank,
                label=int(examples.y[i]),
                payload={
                    "self_influence": float(scores.self_influence[j]),
                    "loss": float(scores.loss[j]),
                    "predicted": int(scores.predicted[j]),
                    "suggested_label": int(scores.suggested[j]),
                    "prob_label": float(scores.prob_label[j]),
                },
            )
        )
    return records


def run(inp: AnalysisInput) -> AnalysisResult:
    cfg = LabelCheckConfig.from_params(inp.params)
    scores = score_examples(inp.train, cfg, inp.progress)
    findings = to_findings(inp.train, scores, cfg.rank_by)
    inp.progress(1.0, "done")
    disagree = int((scores.predicted != inp.train.y[scores.indices]).sum())
    return AnalysisResult(
        findings,
        {
            "n": int(len(scores.indices)),
            "rank_by": cfg.rank_by,
            "solver": scores.solver,
            "model": cfg.model.to_dict(),
            "train_disagreements": disagree,
        },
    )


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


