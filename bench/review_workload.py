"""From a ranking to a review workload (issue 24): how many labels are wrong, which to check,
whether decisions improve the queue, and whether the fixes helped. One run, one table.

    .venv/bin/python bench/review_workload.py --n 10000 --test 2000 --epochs 3 --out review_workload.json

Set-up: --n grey 28x28 images (bench/user_model.py's recipe, as bench/workload_verify.images
draws it: sklearn's digits upsampled, shifted by up to 2 pixels, a little noise), 10% of the
labels flipped, and a clean --test set drawn the same way with another seed. Two models, each
audited through the code path `auditor audit run` takes (register the data sets, `create_audit`
with the test set, `execute_audit`, findings read back from the store, SQLite in a scratch
folder; `--why-top 2000`, so every flagged finding carries its `fix_value`):
- a team's float32 CNN (`bench_cnn`, 120k parameters) trained here for --epochs Adam epochs and
  given as safetensors weights (`--no-train`); verify retrains it with the team's training
  (`workload_verify:team_fit`, a --train-fn, from the given weights);
- auditor's built-in logistic regression, trained by the audit (and by verify, its own recipe).

Per model, three sections on the same audit:
1. Estimate (`estimate_section`): the audit's estimate of the wrong labels against the true
   number of flips (aim: within 15%), and the flagged set's precision, recall and F1 against
   the flips; beside them cleanlab's `find_label_issues` on the same model's 5-fold out-of-fold
   probabilities (5 trainings; aim: our F1 >= cleanlab's), and two alternatives measured to
   justify the choices: the posterior sum (sum of 1 - p(given label)) as the estimate, and
   cleanlab's rule applied to our probabilities. Seconds are wall seconds: ours = the audit
   (plus the team's one training for the CNN), cleanlab = its five trainings plus
   `find_label_issues`.
2. Re-ranking (bench/workload_rerank.measure_rerank_gain): simulated reviewers answer with the
   truth for the first 200 findings in queue order; precision of the next 100, static against
   re-ranked (aim: higher re-ranked). Rolled back afterwards.
3. Verify (bench/workload_verify.verify_after_accepting): confirm every flagged suggestion, run
   `audit verify`; test accuracy and loss before and after, the influence-predicted change (the
   first-order sum of the flagged findings' `fix_value`) beside the real one.

Prints one markdown table (measures as rows, models as columns); `--out` writes every row as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
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

from user_model import team_training  # noqa: E402
from workload_rerank import measure_rerank_gain  # noqa: E402
from workload_verify import images, verify_after_accepting  # noqa: E402

FOLDS = 5
WHY_TOP = 2000  # every flagged finding gets its why and its fix_value (at most 2,000 are valued)


@dataclass
class Case:
    """The data set as a team has it, registered in a scratch store."""

    folder: Path
    data: Path
    x: np.ndarray
    y: np.ndarray  # the labels as given
    truth: np.ndarray  # the true labels
    flipped: np.ndarray
    sessions: Any
    settings: Any
    test: str = "bench-digits28-test"

    def dataset_for(self, model: str) -> str:
        """One registered data set per model, on the same file: decisions follow the example
        within a data set, so the models' simulated reviews must not meet."""
        from auditor.data.options import DataOptions
        from auditor.datasets import register_dataset

        name = f"bench-digits28-{model}"
        register_dataset(self.sessions, name, self.data, data=DataOptions())
        return name


def make_case(n: int, test: int, folder: Path) -> Case:
    """Training images with 10% of labels flipped and a clean test set, registered in a scratch
    SQLite store; AUDITOR_HOME (artifacts) is the scratch folder too."""
    os.environ["AUDITOR_HOME"] = str(folder)
    for name in ("AUDITOR_DATABASE_URL", "AUDITOR_BROKER_URL"):
        os.environ.pop(name, None)
    from auditor.config import get_settings
    from auditor.data.options import DataOptions
    from auditor.datasets import register_dataset
    from auditor.store import open_store

    x, y, truth = images(n, 0, 0.1)
    xt, _, yt = images(test, 1, 0.0)
    data = folder / "data.npz"
    np.savez(data, x=x, y=y)
    np.savez(folder / "test.npz", x=xt, y=yt)
    sessions = open_store(f"sqlite:///{folder / 'auditor.db'}")
    register_dataset(sessions, "bench-digits28-test", folder / "test.npz", data=DataOptions())
    flipped = np.flatnonzero(y != truth)
    return Case(folder, data, x, y, truth, flipped, sessions, get_settings())


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
    valued: int  # flagged findings carrying a fix_value


def audit_label_check(case: Case, dataset: str, params: dict) -> Audited:
    """Create and run the audit as `auditor audit run` does, and read its findings back."""
    from auditor.audits import create_audit
    from auditor.factories import local_models
    from auditor.runner import execute_audit
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store

    start = time.perf_counter()
    params = {"why_top": WHY_TOP, **params}
    with local_models():  # a team's MODULE:FACTORY runs in this process, as with `audit run`
        audit_id = create_audit(case.sessions, "label-check", dataset, params, case.test,
                                settings=case.settings, local=True)  # fmt: skip
        outcome = execute_audit(case.sessions, audit_id, settings=case.settings, local=True)
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
        sum(1 for f in rows if f.flagged and (f.payload or {}).get("fix_value")),
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
    from auditor.data.options import DataOptions

    spec = LabelCheckConfig.from_params(params).model
    ex = load_examples(case.data, options=DataOptions())
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
    case: Case, model: str, audited: Audited, oof: Any, train_seconds: float = 0.0
) -> list[dict]:
    """Rows for one model's audit: ours, the alternatives, and cleanlab on 5-fold OOF."""
    from auditor.analyses.label_noise import (
        choose_probabilities,
        estimate_label_errors,
        posterior_expected_errors,
    )

    truth = len(case.flipped)
    est = audited.summary["estimate"]
    rows = [{
        "model": model, "method": "ours", "seconds": audited.seconds + train_seconds,
        "estimate": est["count"], "low": est["low"], "high": est["high"], "truth": truth,
        "estimate_error": est["count"] / truth - 1, **scores(audited.flagged, case.flipped),
        "rank_by": audited.summary["rank_by"], "train_agreement": audited.summary["train_agreement"],
        "estimate_method": est["method"], "valued": audited.valued,
    }]  # fmt: skip
    source, read, _ = choose_probabilities(audited.probs, audited.loo_probs, audited.labels)
    posterior = posterior_expected_errors(read, audited.labels)
    joint = estimate_label_errors(read, audited.labels)
    rows.append({
        "model": model, "method": "posterior", "source": source,
        "seconds": None, "estimate": round(posterior), "truth": truth,
        "estimate_error": posterior / truth - 1,
        **scores(np.flatnonzero(joint.confident_off_diagonal), case.flipped),
    })  # fmt: skip
    if source != "leave-one-out":  # what the leave-one-out probabilities alone would have said
        loo = estimate_label_errors(audited.loo_probs, audited.labels)
        rows.append({
            "model": model, "method": "loo-anyway", "source": "leave-one-out",
            "seconds": None, "estimate": loo.count, "low": loo.low, "high": loo.high, "truth": truth,
            "estimate_error": loo.count / truth - 1,
            **scores(np.flatnonzero(loo.confident_off_diagonal), case.flipped),
        })  # fmt: skip
    start = time.perf_counter()
    on_ours = cleanlab_issues(audited.labels, read)
    rows.append({
        "model": model, "method": "cleanlab-rule-on-ours", "source": source,
        "seconds": time.perf_counter() - start, "estimate": len(on_ours), "truth": truth,
        "estimate_error": len(on_ours) / truth - 1, **scores(on_ours, case.flipped),
    })  # fmt: skip
    start = time.perf_counter()
    probs = oof()
    issues = cleanlab_issues(case.y, probs)
    rows.append({
        "model": model, "method": "cleanlab", "seconds": time.perf_counter() - start,
        "estimate": len(issues), "truth": truth, "estimate_error": len(issues) / truth - 1,
        **scores(issues, case.flipped),
    })  # fmt: skip
    return rows


# ---- one model: the audit, then the three sections on it ------------------------------------------
def model_sections(
    case: Case,
    key: str,
    model: str,
    params: dict,
    oof: Any,
    train_fn: str | None,
    train_seconds: float = 0.0,
) -> dict[str, Any]:
    print(f"{model}: label check of {len(case.y):,} images ...", file=sys.stderr, flush=True)
    audited = audit_label_check(case, case.dataset_for(key), params)
    print(
        f"{model}: audit {audited.seconds:.0f} s; 5-fold cleanlab ...", file=sys.stderr, flush=True
    )
    estimate = estimate_section(case, model, audited, oof, train_seconds)
    print(f"{model}: re-ranking after 200 decisions ...", file=sys.stderr, flush=True)
    rerank = measure_rerank_gain(
        case.sessions, audited.audit_id, case.flipped, case.truth, 200, 100
    )
    print(f"{model}: accept the flagged suggestions, audit verify ...", file=sys.stderr, flush=True)
    verify = verify_after_accepting(
        case.sessions, audited.audit_id, settings=case.settings, train_fn=train_fn, truth=case.truth
    )
    return {"model": model, "estimate": estimate, "rerank": rerank, "verify": verify}


def run_models(case: Case, epochs: int) -> list[dict[str, Any]]:
    import workload_verify

    workload_verify.TEAM_EPOCHS = epochs  # verify retrains the team CNN with the same recipe
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
    return [
        model_sections(
            case, "cnn", f"team CNN ({epochs} epochs, fits {team['train_agreement']:.1%})", cnn,
            lambda: oof_probs_cnn(case, epochs), "workload_verify:team_fit", team_seconds,
        ),
        model_sections(
            case, "logreg", "logreg (built-in)", logreg, lambda: oof_probs_builtin(case, logreg), None
        ),
    ]  # fmt: skip


# ---- the table ----------------------------------------------------------------------------------
def _prf(r: dict) -> str:
    return f"{r['size']:,}: {r['precision']:.3f} / {r['recall']:.3f} / **{r['f1']:.3f}**"


def _seconds(r: dict) -> str:
    return f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"


def table(results: list[dict[str, Any]]) -> str:
    """One markdown table: a row per measure (with its aim), a column per model."""

    def by(res: dict, method: str) -> dict | None:
        return next((r for r in res["estimate"] if r["method"] == method), None)

    measures: list[tuple[str, str, Any]] = [
        ("true flips", "", lambda res: f"{by(res, 'ours')['truth']:,}"),
        ("estimate (95% interval), error", "within ±15%", lambda res: (
            f"{by(res, 'ours')['estimate']:,} ({by(res, 'ours')['low']:,}–{by(res, 'ours')['high']:,}), "
            f"**{by(res, 'ours')['estimate_error']:+.1%}**")),
        ("estimate read from", "", lambda res: by(res, "ours")["estimate_method"]),
        ("alt: posterior sum Σ(1 − p(given)), error", "", lambda res: (
            f"{by(res, 'posterior')['estimate']:,}, {by(res, 'posterior')['estimate_error']:+.1%}")),
        ("flagged: size: precision / recall / F1", "F1 ≥ cleanlab's", lambda res: _prf(by(res, "ours"))),
        ("cleanlab find_label_issues, 5-fold OOF", "", lambda res: _prf(by(res, "cleanlab"))),
        ("alt: cleanlab's rule on our probabilities", "", lambda res: _prf(by(res, "cleanlab-rule-on-ours"))),
        ("seconds: ours (1 training) / cleanlab (5)", "", lambda res: (
            f"{_seconds(by(res, 'ours'))} / {_seconds(by(res, 'cleanlab'))}")),
        ("first 200 in queue order: precision", "", lambda res: f"{res['rerank']['first_precision']:.3f}"),
        ("next 100: precision static → re-ranked", "higher re-ranked", lambda res: (
            f"{res['rerank']['static']:.2f} → **{res['rerank']['reranked']:.2f}**"
            if res["rerank"].get("reranked") is not None else f"{res['rerank']['static']:.2f} → refused")),
        ("verify: suggestions accepted (right)", "", lambda res: (
            f"{res['verify']['accepted']:,} ({res['verify']['right']:,})")),
        ("test accuracy before → after", "", lambda res: (
            f"{res['verify']['before']['test_accuracy']:.2%} → {res['verify']['after']['test_accuracy']:.2%}")),
        ("accuracy change (pts): real / predicted", "predicted beside real", lambda res: (
            f"**{res['verify']['change']['test_accuracy'] * 100:+.2f} / {_pred(res['verify'], 'test_accuracy', 100, '+.2f')}**")),
        ("test loss change: real / predicted", "", lambda res: (
            f"{res['verify']['change']['test_loss']:+.4f} / {_pred(res['verify'], 'test_loss', 1, '+.4f')}")),
        ("verify seconds (two trainings)", "", lambda res: f"{res['verify']['seconds']:.0f}"),
    ]  # fmt: skip
    out = [
        "| measure | aim | " + " | ".join(res["model"] for res in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for name, aim, cell in measures:
        out.append(f"| {name} | {aim} | " + " | ".join(cell(res) for res in results) + " |")
    return "\n".join(out)


def _pred(verify: dict, key: str, scale: float, fmt: str) -> str:
    p = verify.get("predicted_change")
    return "n/a" if not p else format(p[key] * scale, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=2_000, help="clean test images")
    ap.add_argument("--epochs", type=int, default=3, help="the team's Adam epochs (a few)")
    ap.add_argument("--out", type=Path, help="write every row as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/engine.py: spinning threads
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-review-workload-") as scratch:
        case = make_case(args.n, args.test, Path(scratch))
        print(
            f"n = {args.n:,}, {len(case.flipped):,} labels flipped, test {args.test:,}", flush=True
        )
        results = run_models(case, args.epochs)
    seconds = time.perf_counter() - start
    print()
    print(table(results))
    for res in results:
        note = res["verify"].get("predicted_note")
        if note:
            print(f"\n{res['model']}: predicted: {note}")
        reason = res["rerank"].get("reason") or res["rerank"].get("refused")
        print(f"{res['model']}: re-ranking: {reason}")
    print(f"\nwhole run {seconds:.0f} s")
    if args.out:
        doc = {
            "n": args.n,
            "test": args.test,
            "epochs": args.epochs,
            "seconds": seconds,
            "models": results,
        }
        args.out.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
