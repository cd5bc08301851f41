"""From a ranking to a review workload (issue 24): how many labels are wrong, which to check.

    .venv/bin/python bench/review_workload.py [--n 10000] [--epochs 3] [--out review_workload.json]

Set-up: --n grey 28x28 images (bench/user_model.py's data: sklearn's digits upsampled, shifted by
up to 2 pixels, with a little noise), 10% of the labels flipped. Two models, each audited through
the code path `auditor audit run` takes (register the data set, `create_audit`, `execute_audit`,
findings read back from the store, SQLite in a scratch folder):
- a team's float32 CNN (`bench_cnn`, 120k parameters) trained here for --epochs Adam epochs and
  given as safetensors weights (`--no-train`);
- auditor's built-in logistic regression, trained by the audit.

Estimate section: the audit's estimate of the wrong labels (confident learning on the
leave-one-out probabilities, auditor.analyses.label_noise) against the true number of flips
(aim: within 15%), and the flagged set's precision, recall and F1 against the flips; beside them
cleanlab's `find_label_issues` on the same model's 5-fold out-of-fold probabilities (5 trainings;
aim: our F1 >= cleanlab's), and two alternatives measured to justify the choices: the posterior
sum (sum of 1 - p_loo(given label)) as the estimate, and the confident joint's own off-diagonal
members as the flagged set (and cleanlab's rule applied to our leave-one-out probabilities).
Seconds are wall seconds: ours = the audit (plus the team's one training for the CNN),
cleanlab = its five trainings plus `find_label_issues`.

Later sections (re-ranking with decisions, verify) add functions beside `estimate_section` and a
table of their own; `main` prints every table and writes one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from user_model import make_data, team_training  # noqa: E402

FOLDS = 5


@dataclass
class Case:
    """The data set as a team has it, registered in a scratch store."""

    folder: Path
    data: Path
    x: np.ndarray
    y: np.ndarray
    flipped: np.ndarray
    sessions: Any
    dataset: str = "bench-digits28"


def make_case(n: int, folder: Path) -> Case:
    from auditor.datasets import register_dataset
    from auditor.store import open_store

    x, y, flipped = make_data(n)
    data = folder / "data.npz"
    np.savez(data, x=x, y=y)
    sessions = open_store(f"sqlite:///{folder / 'auditor.db'}")
    register_dataset(sessions, "bench-digits28", data)
    return Case(folder, data, x, y, flipped, sessions)


@dataclass
class Audited:
    """What one label-check audit gave, read back from the store."""

    audit_id: int
    seconds: float
    summary: dict
    flagged: np.ndarray  # example indices, in rank order
    probs: np.ndarray  # (n, K) the trained model's, as stored, in example order
    loo_probs: np.ndarray  # (n, K) the leave-one-out model's, as stored, in example order
    labels: np.ndarray


def audit_label_check(case: Case, params: dict) -> Audited:
    """Create and run the audit as `auditor audit run` does, and read its findings back."""
    from auditor.audits import create_audit
    from auditor.factories import local_models
    from auditor.runner import execute_audit
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store

    start = time.perf_counter()
    with local_models():  # a team's MODULE:FACTORY runs in this process, as with `audit run`
        audit_id = create_audit(case.sessions, "label-check", case.dataset, params, local=True)
        outcome = execute_audit(case.sessions, audit_id, local=True)
    seconds = time.perf_counter() - start
    if outcome.status != "succeeded":
        raise RuntimeError(f"audit {audit_id} {outcome.status}: {outcome.error}")
    with case.sessions() as s:
        summary = audit_store.get_audit(s, audit_id).summary
        rows = finding_store.list_findings(s, audit_id, kind="label")
    by_index = sorted(rows, key=lambda f: f.example_index)
    return Audited(
        audit_id, seconds, summary,
        np.array([f.example_index for f in rows if f.flagged], dtype=np.int64),
        np.array([f.payload["probs"] for f in by_index]),
        np.array([f.payload["loo_probs"] for f in by_index]),
        np.array([f.label for f in by_index], dtype=np.int64),
    )  # fmt: skip


def scores(found: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a set of example indices against the true flips."""
    hit = len(set(found.tolist()) & set(flipped.tolist()))
    precision = hit / len(found) if len(found) else 0.0
    recall = hit / len(flipped) if len(flipped) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"size": int(len(found)), "precision": precision, "recall": recall, "f1": f1}


# ---- out-of-fold probabilities for cleanlab: the same model trained five times --------------------
def folds(n: int, seed: int = 0) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[f::FOLDS]) for f in range(FOLDS)]


def oof_probs_cnn(case: Case, epochs: int) -> np.ndarray:
    """The team's recipe (bench/user_model.team_training) on each 4/5, predicting the other 1/5."""
    import torch
    import user_models
    from safetensors.torch import load_file

    probs = np.zeros((len(case.y), 10))
    for f, held in enumerate(folds(len(case.y))):
        train = np.setdiff1d(np.arange(len(case.y)), held)
        weights = case.folder / f"fold{f}.safetensors"
        team_training(case.x[train], case.y[train], epochs, weights)
        model = user_models.bench_cnn()
        model.load_state_dict(load_file(str(weights)))
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(torch.as_tensor(case.x[held][i : i + 1024], dtype=torch.float32))
                                for i in range(0, len(held), 1024)])  # fmt: skip
        probs[held] = torch.softmax(logits, -1).double().numpy()
    return probs


def oof_probs_builtin(case: Case, params: dict) -> np.ndarray:
    """auditor's own training of the built-in model (the audit's recipe and settings) per fold."""
    from auditor.analyses.fitting import fit_model
    from auditor.analyses.registry import LabelCheckConfig
    from auditor.data.load import load_examples

    spec = LabelCheckConfig.from_params(params).model
    ex = load_examples(case.data)
    probs = np.zeros((len(ex), ex.num_classes))
    for held in folds(len(ex)):
        train = np.setdiff1d(np.arange(len(ex)), held)
        fitted = fit_model(ex.subset(train), spec, num_classes=ex.num_classes)
        probs[held] = fitted.predict_proba(fitted.tensor(np.asarray(ex.x[held]))).double().numpy()
    return probs


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's find_label_issues with its defaults, as ranked indices."""
    from cleanlab.filter import find_label_issues

    return np.asarray(
        find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1),
        dtype=np.int64,
    )


# ---- the estimate and the flagged set -----------------------------------------------------------
def estimate_section(
    case: Case, model: str, params: dict, oof: Any, train_seconds: float = 0.0
) -> list[dict]:
    """Rows for one model: ours (the audit), the alternatives, and cleanlab on 5-fold OOF."""
    from auditor.analyses.label_noise import (
        choose_probabilities,
        estimate_label_errors,
        posterior_expected_errors,
    )

    truth = len(case.flipped)
    audited = audit_label_check(case, params)
    est = audited.summary["estimate"]
    ours_seconds = audited.seconds + train_seconds
    rows = [{
        "model": model, "method": "ours: estimate + flagged (1 training)", "seconds": ours_seconds,
        "estimate": est["count"], "low": est["low"], "high": est["high"], "truth": truth,
        "estimate_error": est["count"] / truth - 1, **scores(audited.flagged, case.flipped),
        "rank_by": audited.summary["rank_by"], "train_agreement": audited.summary["train_agreement"],
        "estimate_method": est["method"],
    }]  # fmt: skip
    source, read, _ = choose_probabilities(audited.probs, audited.loo_probs, audited.labels)
    posterior = posterior_expected_errors(read, audited.labels)
    joint = estimate_label_errors(read, audited.labels)
    rows.append({
        "model": model, "method": f"alt: posterior sum / confident-joint members ({source} probs)",
        "seconds": None, "estimate": round(posterior), "truth": truth,
        "estimate_error": posterior / truth - 1,
        **scores(np.flatnonzero(joint.confident_off_diagonal), case.flipped),
    })  # fmt: skip
    if source != "leave-one-out":  # what the leave-one-out probabilities alone would have said
        loo = estimate_label_errors(audited.loo_probs, audited.labels)
        rows.append({
            "model": model, "method": "alt: leave-one-out probs read anyway (confident-joint members)",
            "seconds": None, "estimate": loo.count, "low": loo.low, "high": loo.high, "truth": truth,
            "estimate_error": loo.count / truth - 1,
            **scores(np.flatnonzero(loo.confident_off_diagonal), case.flipped),
        })  # fmt: skip
    start = time.perf_counter()
    on_loo = cleanlab_issues(audited.labels, read)
    rows.append({
        "model": model, "method": f"alt: cleanlab's rule on our {source} probs",
        "seconds": time.perf_counter() - start, "estimate": len(on_loo), "truth": truth,
        "estimate_error": len(on_loo) / truth - 1, **scores(on_loo, case.flipped),
    })  # fmt: skip
    start = time.perf_counter()
    probs = oof()
    issues = cleanlab_issues(case.y, probs)
    rows.append({
        "model": model, "method": f"cleanlab find_label_issues ({FOLDS}-fold OOF, {FOLDS} trainings)",
        "seconds": time.perf_counter() - start, "estimate": len(issues), "truth": truth,
        "estimate_error": len(issues) / truth - 1, **scores(issues, case.flipped),
    })  # fmt: skip
    return rows


def estimate_rows(case: Case, epochs: int) -> list[dict]:
    weights = case.folder / "team.safetensors"
    print(f"training the team's CNN ({epochs} epochs) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    team = team_training(case.x, case.y, epochs, weights)
    team_seconds = time.perf_counter() - start
    cnn = {
        "model": {
            "name": "user_models:bench_cnn",
            "weights": str(weights),
            "train": False,
            "device": "cpu",
        }
    }
    logreg = {"model": {"name": "logreg", "device": "cpu"}}
    print("team CNN: audit and 5-fold cleanlab ...", file=sys.stderr, flush=True)
    rows = estimate_section(case, f"team CNN ({epochs} epochs, fits {team['train_agreement']:.0%})", cnn,
                            lambda: oof_probs_cnn(case, epochs), team_seconds)  # fmt: skip
    print("logistic regression: audit and 5-fold cleanlab ...", file=sys.stderr, flush=True)
    rows += estimate_section(
        case, "logreg (built-in)", logreg, lambda: oof_probs_builtin(case, logreg)
    )
    return rows


def estimate_table(rows: list[dict]) -> str:
    out = [
        "| model | method | estimate (95%) | truth | error | flagged | precision | recall | F1 | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = f" ({r['low']}–{r['high']})" if "low" in r else ""
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        out.append(
            f"| {r['model']} | {r['method']} | {r['estimate']}{interval} | {r['truth']} | {r['estimate_error']:+.1%} | "
            f"{r['size']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {seconds} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3, help="the team's Adam epochs (a few)")
    ap.add_argument(
        "--out", type=Path, default=Path("review_workload.json"), help="JSON of every row"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-review-workload-") as scratch:
        case = make_case(args.n, Path(scratch))
        print(f"n = {args.n:,}, {len(case.flipped):,} labels flipped", flush=True)
        rows = estimate_rows(case, args.epochs)
    print()
    print(estimate_table(rows))
    args.out.write_text(
        json.dumps({"n": args.n, "epochs": args.epochs, "estimate": rows}, indent=1)
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
