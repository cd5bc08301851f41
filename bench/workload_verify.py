"""Close the loop: accept a label check's flagged suggestions, run `audit verify`, and print the
test accuracy before and after with influence's predicted change beside the real one.

    .venv/bin/python bench/workload_verify.py [--n 2000] [--model logreg|team-cnn] [--epochs 3]

`verify_after_accepting` is the bench section bench/review_workload.py calls on its own audits;
`main` builds a case of its own: 28x28 grey images (sklearn's digits upsampled, shifted by up to
2 pixels, a little noise; bench/user_model.py's recipe) with 10% of the labels flipped, a clean
test set drawn the same way, a label check in a scratch SQLite store, then the verification. The
team CNN (bench/user_model.py's `bench_cnn`, float32, given as weights with --no-train) is
retrained by `team_fit` below, the team's own training as a registered --train-fn would be.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

TEAM_EPOCHS = 3


def accepted_findings(sessions, audit_id: int, budget: int | None = None) -> list[int]:
    """Ids of the findings a reviewer accepting the workload confirms: the flagged ones with a
    suggestion, in queue order; where the audit flags none (a label check made before flagging
    existed), the top `budget` by rank (default: a tenth of the findings)."""
    from auditor.store import findings as finding_store

    with sessions() as s:
        rows = finding_store.list_findings(s, audit_id, kind="label")
    flagged = [f for f in rows if f.flagged]
    chosen = flagged or rows[: budget if budget is not None else max(1, len(rows) // 10)]
    return [f.id for f in chosen if (f.payload or {}).get("suggested_label") is not None]


def verify_after_accepting(
    sessions,
    audit_id: int,
    *,
    settings,
    train_fn: str | None = None,
    truth: np.ndarray | None = None,
    budget: int | None = None,
) -> dict[str, Any]:
    """Confirm the flagged suggestions of label check `audit_id`, run its verification here (the
    path `auditor audit verify` takes without a broker) and return the report, with `accepted`
    (how many were confirmed) and, given the true labels, how many of those were right."""
    from auditor.factories import local_models
    from auditor.runner import execute_audit
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store
    from auditor.store import reviews as review_store
    from auditor.verification import request_verification

    ids = accepted_findings(sessions, audit_id, budget)
    right = 0
    with sessions() as s, s.begin():
        for fid in ids:
            f = finding_store.get_finding(s, fid)
            if truth is not None and f.payload["suggested_label"] == int(truth[f.example_index]):
                right += 1
            review_store.decide(s, fid, "confirmed", reviewer="bench")
    start = time.perf_counter()
    with local_models():  # a team's factory and training run here, as with `audit verify` embedded
        verify_id = request_verification(
            sessions, audit_id, settings=settings, train_fn=train_fn, local=True
        )
        outcome = execute_audit(sessions, verify_id, settings=settings, local=True)
    seconds = time.perf_counter() - start
    with sessions() as s:
        a = audit_store.get_audit(s, verify_id)
        if outcome.status != "succeeded":
            raise SystemExit(f"verify audit {verify_id} {outcome.status}: {a.error}")
        report = dict(a.summary)
    return {
        **report,
        "accepted": len(ids),
        "right": right if truth is not None else None,
        "seconds": seconds,
    }


def print_row(name: str, r: dict[str, Any]) -> None:
    """One markdown row: accuracy before/after, real and predicted change in accuracy and loss."""
    p = r.get("predicted_change")
    pred_acc = f"{p['test_accuracy'] * 100:+.2f}" if p else "n/a"
    pred_loss = f"{p['test_loss']:+.4f}" if p else "n/a"
    right = f" ({r['right']} right)" if r.get("right") is not None else ""
    print(
        f"| {name} | {r['accepted']}{right} | {r['before']['test_accuracy']:.2%} | "
        f"{r['after']['test_accuracy']:.2%} | {r['change']['test_accuracy'] * 100:+.2f} | {pred_acc} | "
        f"{r['change']['test_loss']:+.4f} | {pred_loss} | {r['seconds']:.1f} |"
    )


def images(n: int, seed: int, flip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (n, 28, 28), given labels, true labels): bench/user_model.py's images."""
    import torch

    from auditor.data.bundled import digits

    d = digits()
    rng = np.random.default_rng(seed)
    base = torch.tensor(d.x, dtype=torch.float32)[:, None]
    base = torch.nn.functional.interpolate(base, size=(28, 28), mode="bilinear")[:, 0].numpy()
    pick = rng.integers(0, len(d.y), n)
    shifts = rng.integers(-2, 3, (n, 2))
    x = np.empty((n, 28, 28), dtype=np.uint8)
    for i, (j, (dy, dx)) in enumerate(zip(pick, shifts, strict=True)):
        img = np.roll(base[j], (dy, dx), axis=(0, 1)) + rng.normal(0, 8, (28, 28))
        x[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    truth = d.y[pick].astype(np.int64)
    given = truth.copy()
    flipped = rng.choice(n, int(round(flip * n)), replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return x, given, truth


def team_fit(module, x, y) -> None:
    """The team's training (a --train-fn): Adam, batch 64, lr 1e-3, TEAM_EPOCHS epochs, seeded."""
    import torch

    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(TEAM_EPOCHS):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
            opt.step()


def main() -> None:
    global TEAM_EPOCHS
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--models", default="logreg", help="comma-separated: logreg, team-cnn")
    ap.add_argument("--epochs", type=int, default=3, help="the team CNN's epochs")
    args = ap.parse_args()
    TEAM_EPOCHS = args.epochs

    import torch
    from safetensors.torch import save_file

    from auditor.audits import create_audit
    from auditor.config import get_settings
    from auditor.data.base import Examples
    from auditor.data.bundled import write_npz
    from auditor.data.options import DataOptions
    from auditor.datasets import register_dataset
    from auditor.factories import local_models
    from auditor.runner import execute_audit
    from auditor.store import open_store

    x, given, truth = images(args.n, 0, args.flip)
    xt, _, yt = images(args.test, 1, 0.0)
    print(
        "| model | accepted | accuracy before | after | change (pts) | predicted (pts) | loss change | predicted | verify s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ["AUDITOR_HOME"] = str(tmp)  # artifacts go to the scratch folder
            for name in ("AUDITOR_DATABASE_URL", "AUDITOR_BROKER_URL"):
                os.environ.pop(name, None)
            settings = get_settings()
            sessions = open_store(f"sqlite:///{tmp / 'a.db'}")
            register_dataset(
                sessions,
                "train",
                write_npz(Examples(x, given, [], is_image=True), tmp / "train.npz"),
                data=DataOptions(),
            )
            register_dataset(
                sessions,
                "test",
                write_npz(Examples(xt, yt, [], is_image=True), tmp / "test.npz"),
                data=DataOptions(),
            )
            params: dict[str, Any] = {"model": {"name": "logreg", "device": "cpu"}, "why_top": 2000}
            train_fn = None
            if model == "team-cnn":
                import user_models

                torch.manual_seed(0)
                module = user_models.bench_cnn()
                team_fit(module, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(given))
                module.eval()
                save_file(module.state_dict(), str(tmp / "team.safetensors"))
                params["model"] = {
                    "name": "user_models:bench_cnn",
                    "weights": str(tmp / "team.safetensors"),
                    "train": False,
                    "device": "cpu",
                }
                train_fn = "workload_verify:team_fit"
            print(f"{model}: label check of {args.n} images ...", file=sys.stderr, flush=True)
            with local_models():
                audit_id = create_audit(
                    sessions, "label-check", "train", params, test_name="test",
                    settings=settings, local=True,
                )  # fmt: skip
                outcome = execute_audit(sessions, audit_id, settings=settings, local=True)
                assert outcome.status == "succeeded", outcome
            print(f"{model}: verify ...", file=sys.stderr, flush=True)
            r = verify_after_accepting(
                sessions, audit_id, settings=settings, train_fn=train_fn, truth=truth
            )
            print_row(f"{model} (n={args.n:,}, {args.flip:.0%} flipped, test {args.test:,})", r)
            if r.get("predicted_note"):
                print(f"predicted: {r['predicted_note']}", file=sys.stderr)


if __name__ == "__main__":
    main()
