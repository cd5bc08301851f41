"""Label-check recall: self-influence vs training loss vs random vs cleanlab, in one run.

For each bundled data set, flip 10% of the labels (seeded), then rank the training examples and
report the fraction of flipped labels found when a reviewer checks the top 5/10/20/30%.
cleanlab gets out-of-fold predicted probabilities from the same model (5-fold cross-validation),
as its documentation recommends. Run:

    .venv-bench/bin/python bench/label_check.py [--models logreg,mlp,cnn] [--datasets digits,wine]

(.venv-bench has cleanlab; with the plain .venv the cleanlab rows are left out.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from auditor.analyses.base import no_progress
from auditor.analyses.common import ModelSpec, SolverSpec, fit_model
from auditor.analyses.label_check import (
    LabelCheckConfig,
    ranking_score,
    recall_at_budgets,
    score_examples,
)
from auditor.data.base import Examples
from auditor.data.bundled import breast_cancer, digits, flip_labels, wine

BUDGETS = (0.05, 0.1, 0.2, 0.3)
DATASETS = {"digits": digits, "wine": wine, "breast_cancer": breast_cancer}


def subset(ex: Examples, idx: np.ndarray) -> Examples:
    return Examples(ex.x[idx], ex.y[idx], [ex.keys[i] for i in idx], ex.source, ex.is_image,
                    ex.feature_names, None, ex.class_names)


def oof_probs(ex: Examples, spec: ModelSpec, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted probabilities from the same model (cleanlab's input)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ex))
    k = ex.num_classes
    probs = np.zeros((len(ex), k))
    for f in range(folds):
        test = perm[f::folds]
        train = np.setdiff1d(perm, test)
        fitted = fit_model(subset(ex, train), spec, num_classes=k)
        probs[test] = fitted.predict_proba(fitted.tensor(ex.x[test])).numpy()
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="logreg,mlp,cnn")
    ap.add_argument("--datasets", default="digits,wine")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--damping", type=float, default=0.0)
    args = ap.parse_args()
    try:
        import cleanlab.filter
        import cleanlab.rank

        have_cleanlab = True
    except ImportError:
        have_cleanlab = False
    header = "| data | model | ranking | " + " | ".join(f"recall@{b:.0%}" for b in BUDGETS) + " | seconds |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for dname in args.datasets.split(","):
        clean = DATASETS[dname]()
        noisy, flipped = flip_labels(clean, args.fraction, args.seed)
        for mname in args.models.split(","):
            if mname == "cnn" and not noisy.is_image:
                continue
            spec = ModelSpec(name=mname, seed=args.seed)
            cfg = LabelCheckConfig(model=spec, solver=SolverSpec("auto", args.damping))
            t0 = time.perf_counter()
            scores = score_examples(noisy, cfg, no_progress)
            t_inf = time.perf_counter() - t0
            rows = {}
            for rank_by in ("self-influence", "loss", "combined"):
                order = scores.indices[np.argsort(-ranking_score(scores, rank_by), kind="stable")]
                rows[rank_by] = (recall_at_budgets(order, flipped, BUDGETS), t_inf)
            rng = np.random.default_rng(args.seed)
            rows["random"] = (recall_at_budgets(rng.permutation(len(noisy)), flipped, BUDGETS), 0.0)
            if have_cleanlab:
                t0 = time.perf_counter()
                probs = oof_probs(noisy, spec)
                quality = cleanlab.rank.get_label_quality_scores(noisy.y, probs)
                t_cl = time.perf_counter() - t0
                rows["cleanlab quality (5-fold)"] = (recall_at_budgets(np.argsort(quality, kind="stable"), flipped, BUDGETS), t_cl)
                # find_label_issues returns a ranked subset; rank the rest by quality after it
                issues = cleanlab.filter.find_label_issues(noisy.y, probs, return_indices_ranked_by="self_confidence")
                rest = [i for i in np.argsort(quality, kind="stable") if i not in set(issues)]
                rows["cleanlab find_label_issues"] = (recall_at_budgets(np.array(list(issues) + rest), flipped, BUDGETS), t_cl)
            for name, (rec, secs) in rows.items():
                cells = " | ".join(f"{rec[b]:.3f}" for b in BUDGETS)
                print(f"| {dname} | {mname} | {name} | {cells} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
