"""The first-run demo: plant label errors in a bundled real dataset and find them again.

scikit-learn's handwritten digits (1,797 real 8x8 scans) get a known fraction of labels flipped;
a label-check audit then runs through exactly the code path a worker uses (store, runner,
analysis), and the demo reports how many planted errors sit in the top of the review queue,
next to what ranking by training loss alone would find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.base import Progress
from auditor.analyses.label_check import recall_at_budgets
from auditor.config import Settings
from auditor.data.bundled import digits, flip_labels, write_npz
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store

DEMO_DATASET = "digits-demo"


@dataclass
class DemoResult:
    audit_id: int
    status: str
    error: str | None
    n: int
    flipped: int
    recall: dict[float, float]
    recall_loss: dict[float, float]
    recall_self_influence: dict[float, float]
    truth_path: Path


def prepare(home: Path, fraction: float, seed: int) -> tuple[Path, Path, np.ndarray]:
    noisy, flipped = flip_labels(digits(), fraction, seed)
    data = write_npz(noisy, home / "demo" / "digits_noisy.npz")
    truth = home / "demo" / "flipped.json"
    truth.write_text(json.dumps({"flipped_indices": flipped.tolist(), "fraction": fraction, "seed": seed}))
    return data, truth, flipped


def run_demo(
    sessions: sessionmaker[Session],
    fraction: float = 0.1,
    model: str = "logreg",
    seed: int = 0,
    echo: Progress | None = None,
    *,
    settings: Settings,
) -> DemoResult:
    from auditor.audits import create_audit
    from auditor.runner import execute_audit

    home = settings.home
    data, truth, flipped = prepare(home, fraction, seed)
    with sessions() as s, s.begin():
        try:
            ds = dataset_store.get_dataset(s, DEMO_DATASET)
            dataset_store.update_dataset_source(s, ds, str(data), "npz", {})
        except Exception:  # NotFound: first run
            dataset_store.create_dataset(s, DEMO_DATASET, str(data), "npz", {})
    params = {"model": {"name": model, "seed": seed}, "solver": {"name": "auto"}}  # default ranking
    audit_id = create_audit(sessions, "label-check", DEMO_DATASET, params, local=True, settings=settings)
    outcome = execute_audit(sessions, audit_id, settings=settings, echo=echo, local=True)
    recall, recall_loss, recall_si = {}, {}, {}
    if outcome.status == "succeeded":
        with sessions() as s:
            rows = finding_store.list_findings(s, audit_id)
        ranked = np.array([f.example_index for f in rows])
        by_loss = np.array([f.example_index for f in sorted(rows, key=lambda f: -f.payload["loss"])])
        by_si = np.array([f.example_index for f in sorted(rows, key=lambda f: -f.payload["self_influence"])])
        recall = recall_at_budgets(ranked, flipped)
        recall_loss = recall_at_budgets(by_loss, flipped)
        recall_si = recall_at_budgets(by_si, flipped)
    return DemoResult(audit_id, outcome.status, outcome.error, 1797, len(flipped), recall, recall_loss, recall_si, truth)
