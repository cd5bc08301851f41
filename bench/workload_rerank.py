"""Do decisions feed the queue? Precision of the next page, static ranking vs re-ranked.

    .venv/bin/python bench/workload_rerank.py [--n 10000] [--model logreg|mlp|cnn] [--first 200] [--next 100]

A label check runs (in process, through the CLI as a user runs it) on N 28x28 images (the
1,797 digits tiled with one-pixel shifts and grey-level noise, as bench/label_check_scale.py
does) with 10% of the labels flipped. Simulated reviewers who answer with the truth then walk the
review queue (`reviewing.next_to_review`: flagged findings first, then ranked only, each by
queue_rank) for the first `--first` findings: a flipped label is confirmed when the suggestion is
its true class and relabelled to it otherwise; a clean one is dismissed. The precision of the
next `--next` undecided findings in queue order is measured as the static ranking has them, then
after `auditor.rerank.rerank` has re-ranked the undecided rest with those decisions.

`measure_rerank_gain` takes any finished label-check audit and its flipped rows, so
bench/review_workload.py can call it on its own audit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _precision(session: Any, audit_id: int, flipped: set[int], size: int) -> float:
    from auditor.store import findings as finding_store

    page = finding_store.query_findings(
        session, audit_id, kind="label", decision="undecided", limit=size
    )
    rows = [f for f, _ in page.rows]
    return sum(f.example_index in flipped for f in rows) / max(len(rows), 1)


def measure_rerank_gain(
    sessions: Any,
    audit_id: int,
    flipped: np.ndarray,
    true_labels: np.ndarray,
    first: int = 200,
    next_n: int = 100,
) -> dict[str, Any]:
    """Simulate `first` truthful decisions in queue order, then the precision of the next
    `next_n` undecided findings, static and re-ranked. One transaction, rolled back at the end:
    the audit is left as it was, so it can be measured again."""
    from auditor import reviewing
    from auditor.errors import AuditorError
    from auditor.rerank import rerank
    from auditor.workload import review_counts

    wrong = {int(i) for i in flipped}
    s = sessions()
    s.begin()
    try:
        decided, right = 0, 0
        for _ in range(first):
            f = reviewing.next_to_review(s, audit_id)
            if f is None:
                break
            truth = int(true_labels[f.example_index])
            suggested = (f.payload or {}).get("suggested_label")
            if f.example_index not in wrong:
                reviewing.decide(s, f.id, "dismissed", reviewer="sim")
            elif suggested is not None and int(suggested) == truth:
                reviewing.decide(s, f.id, "confirmed", reviewer="sim")
            else:
                reviewing.decide(s, f.id, "relabelled", truth, reviewer="sim")
            decided += 1
            right += f.example_index in wrong
        out: dict[str, Any] = {
            "decided": decided, "first_precision": right / max(decided, 1),
            "flagged": review_counts(s, audit_id)["flagged"],
            "static": _precision(s, audit_id, wrong, next_n),
        }  # fmt: skip
        start = time.perf_counter()
        try:
            record = rerank(s, audit_id)
        except AuditorError as exc:
            return {**out, "reranked": None, "refused": str(exc)}
        out["rerank_seconds"] = time.perf_counter() - start
        out["reranked"] = _precision(s, audit_id, wrong, next_n)
        return {**out, "coefficients": record["coefficients"], "reason": record["reason"]}
    finally:
        s.rollback()
        s.close()


def build_audit(
    n: int, model: str, folder: Path, seed: int = 0
) -> tuple[Any, int, np.ndarray, np.ndarray]:
    """Register N tiled 28x28 digits with 10% flipped labels and run a label check on them."""
    from label_check_scale import tiled_digits
    from typer.testing import CliRunner

    from auditor.cli.main import app
    from auditor.data.bundled import flip_labels, write_npz
    from auditor.store import open_store

    clean = tiled_digits(n, seed=seed, size=28)
    noisy, flipped = flip_labels(clean, 0.1, seed)
    path = write_npz(noisy, folder / "digits28.npz")
    runner = CliRunner()
    for args in (["dataset", "add", "digits28", str(path)],
                 ["audit", "run", "label-check", "digits28", "--model", model, "--json"]):  # fmt: skip
        result = runner.invoke(app, args)
        if result.exit_code != 0:
            raise SystemExit(f"auditor {' '.join(args)}: {result.stderr or result.stdout}")
    audit_id = json.loads(result.stdout)["id"]
    return open_store(), audit_id, flipped, clean.y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--model", default="logreg")
    ap.add_argument("--first", type=int, default=200)
    ap.add_argument("--next", dest="next_n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="keep the audit here and reuse it on the next run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(args.home or scratch)
        home.mkdir(parents=True, exist_ok=True)
        os.environ["AUDITOR_HOME"] = str(home)
        os.environ.pop("AUDITOR_DATABASE_URL", None)
        os.environ.pop("AUDITOR_BROKER_URL", None)
        start = time.perf_counter()
        built = home / "built.npz"
        if built.exists():  # --home of an earlier run: measure its audit again
            from auditor.store import open_store

            saved = np.load(built)
            sessions, audit_id = open_store(), int(saved["audit_id"])
            flipped, truth = saved["flipped"], saved["truth"]
        else:
            sessions, audit_id, flipped, truth = build_audit(args.n, args.model, home, args.seed)
            np.savez(built, audit_id=audit_id, flipped=flipped, truth=truth)
        audit_seconds = time.perf_counter() - start
        out = measure_rerank_gain(sessions, audit_id, flipped, truth, args.first, args.next_n)
    print(f"label check of {args.n} 28x28 images ({len(flipped)} flipped), {args.model}: {audit_seconds:.0f} s; "
          f"{out['flagged']} flagged")  # fmt: skip
    print(
        f"first {out['decided']} decisions in queue order: precision {out['first_precision']:.3f}"
    )
    print("| next | static | re-ranked |")
    print("|---|---|---|")
    reranked = "refused" if out["reranked"] is None else f"{out['reranked']:.3f}"
    print(f"| {args.next_n} | {out['static']:.3f} | {reranked} |")
    if out["reranked"] is None:
        print(out["refused"])
    else:
        print(f"re-ranked in {out['rerank_seconds']:.2f} s: {out['reason']}")
        print(json.dumps(out["coefficients"]))


if __name__ == "__main__":
    main()
