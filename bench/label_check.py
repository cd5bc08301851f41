"""Label-check recall: auditor's rankings vs random vs cleanlab, in one run.

For each bundled data set, flip 10% of the labels (seeded), then rank the training examples and
report the fraction of flipped labels found when a reviewer checks the top 5/10/20/30%.
auditor's rankings all come from one training run and one pass over the gradients:
leave-one-out margin (the default), self-influence, training loss, training margin, combined.
cleanlab gets out-of-fold predicted probabilities from the same model (5-fold cross-validation),
as its documentation recommends. Run:

    .venv-bench/bin/python bench/label_check.py [--models logreg,mlp,cnn] [--datasets digits,wine]

(.venv-bench has cleanlab; with the plain .venv the cleanlab rows are left out.)
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from auditor.analyses.base import no_progress
from auditor.analyses.fitting import fit_model
from auditor.analyses.label_check import (
    RANK_BY,
    LabelCheckConfig,
    choose_ranking,
    ranking_score,
    recall_at_budgets,
    score_examples,
)
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples
from auditor.data.bundled import breast_cancer, digits, flip_labels, wine

BUDGETS = (0.05, 0.1, 0.2, 0.3)
DATASETS = {"digits": digits, "wine": wine, "breast_cancer": breast_cancer}


def oof_probs(ex: Examples, spec: ModelSpec, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted probabilities from the same model (cleanlab's input)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ex))
    k = ex.num_classes
    probs = np.zeros((len(ex), k))
    for f in range(folds):
        test = perm[f::folds]
        train = np.setdiff1d(perm, test)
        fitted = fit_model(ex.subset(train), spec, num_classes=k)
        probs[test] = fitted.predict_proba(fitted.tensor(ex.x[test])).numpy()
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="logreg,mlp,cnn")
    ap.add_argument("--datasets", default="digits,wine")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seeds", default="0", help="comma-separated flip/training seeds")
    ap.add_argument("--damping", type=float, default=None, help="default: chosen by the solver, as in an audit")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    args = ap.parse_args()
    try:
        import cleanlab  # noqa: F401

        have_cleanlab = True
    except ImportError:
        have_cleanlab = False
    header = "| data | seed | model | ranking | " + " | ".join(f"recall@{b:.0%}" for b in BUDGETS) + " | seconds |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    at10: dict[tuple[str, str, str], list[float]] = {}
    for dname, seed, mname in itertools.product(
        args.datasets.split(","), [int(s) for s in args.seeds.split(",")], args.models.split(",")
    ):
        clean = DATASETS[dname]()
        noisy, flipped = flip_labels(clean, args.fraction, seed)
        if mname == "cnn" and not noisy.is_image:
            continue
        spec = ModelSpec(name=mname, seed=seed, weight_decay=args.weight_decay)
        rows = rankings(noisy, flipped, spec, args.damping, seed)
        if have_cleanlab:
            rows.update(cleanlab_rankings(noisy, flipped, spec))
        for name, (rec, secs) in rows.items():
            cells = " | ".join(f"{rec[b]:.3f}" for b in BUDGETS)
            print(f"| {dname} | {seed} | {mname} | {name} | {cells} | {secs:.1f} |", flush=True)
            at10.setdefault((dname, mname, name), []).append(rec[0.1])
    print("\nrecall@10%, mean over seeds (min-max):\n")
    print("| data | model | ranking | seeds | mean | min | max |\n|---|---|---|---|---|---|---|")
    for (dname, mname, name), vals in at10.items():
        print(f"| {dname} | {mname} | {name} | {len(vals)} | {np.mean(vals):.3f} | {min(vals):.3f} | {max(vals):.3f} |")


def rankings(noisy: Examples, flipped: np.ndarray, spec: ModelSpec, damping: float | None, seed: int) -> dict:
    """auditor's rankings, all from one training run and one pass over the gradients."""
    cfg = LabelCheckConfig(model=spec, solver=SolverSpec("auto", damping))
    t0 = time.perf_counter()
    scores = score_examples(noisy, cfg, no_progress)
    secs = time.perf_counter() - t0
    rows = {}
    for rank_by in RANK_BY:
        order = scores.indices[np.argsort(-ranking_score(scores, rank_by), kind="stable")]
        if rank_by == "auto":
            label = f"auto (chose {choose_ranking(scores, 'auto')[0]})"
        elif rank_by in ("loo-margin", "self-influence"):
            label = f"{rank_by} ({scores.solver.get('solver', '?')})"
        else:
            label = rank_by
        rows[label] = (recall_at_budgets(order, flipped, BUDGETS), secs)
    rng = np.random.default_rng(seed)
    rows["random"] = (recall_at_budgets(rng.permutation(len(noisy)), flipped, BUDGETS), 0.0)
    return rows


def cleanlab_rankings(noisy: Examples, flipped: np.ndarray, spec: ModelSpec) -> dict:
    """cleanlab's scores on out-of-fold probabilities of the same model (5 extra trainings)."""
    import cleanlab.filter
    import cleanlab.rank

    t0 = time.perf_counter()
    probs = oof_probs(noisy, spec)
    secs = time.perf_counter() - t0
    rows = {}
    quality = cleanlab.rank.get_label_quality_scores(noisy.y, probs)
    rows["cleanlab quality (5-fold)"] = (recall_at_budgets(np.argsort(quality, kind="stable"), flipped, BUDGETS), secs)
    nm = cleanlab.rank.get_label_quality_scores(noisy.y, probs, method="normalized_margin")
    rows["cleanlab normalized margin (5-fold)"] = (recall_at_budgets(np.argsort(nm, kind="stable"), flipped, BUDGETS), secs)
    # find_label_issues returns a ranked subset; rank the rest by quality after it
    issues = cleanlab.filter.find_label_issues(noisy.y, probs, return_indices_ranked_by="self_confidence")
    flagged = set(int(i) for i in issues)
    rest = [i for i in np.argsort(quality, kind="stable") if int(i) not in flagged]
    rows["cleanlab find_label_issues"] = (recall_at_budgets(np.array(list(issues) + rest), flipped, BUDGETS), secs)
    return rows


if __name__ == "__main__":
    main()
