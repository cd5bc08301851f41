"""Small builders for test data: examples, a dataset with a snapshot, an audit, findings."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from auditor.analyses.base import FindingRecord
from auditor.data.base import Examples
from auditor.data.keys import example_keys
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store.models import Audit, Dataset


def make_examples(n: int = 20, seed: int = 0, num_classes: int = 3) -> Examples:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n)
    return Examples(x=x, y=y, keys=example_keys(x, y))


def with_rows(examples: Examples, x: np.ndarray, y: np.ndarray) -> Examples:
    return Examples(x=x, y=y, keys=example_keys(x, y))


def make_dataset(session: Session, name: str = "ds", n: int = 20) -> Dataset:
    dataset = dataset_store.create_dataset(session, name, f"/data/{name}.npz", "npz")
    session.flush()
    dataset_store.record_snapshot(session, dataset, make_examples(n))
    return dataset


def make_audit(session: Session, dataset: Dataset, status: str = "succeeded") -> Audit:
    audit = audit_store.create_audit(session, "label-check", dataset, params={"solver": "direct"})
    if status != "queued":
        audit_store.set_audit_status(session, audit.id, "running")
        if status != "running":
            audit_store.set_audit_status(session, audit.id, status)
    return audit


def make_records(n: int, kind: str = "label", score_offset: float = 0.0) -> list[FindingRecord]:
    """n findings ranked by descending score; keys k0000.. are stable across calls."""
    return [
        FindingRecord(
            example_index=i,
            example_key=f"k{i:06d}",
            kind=kind,
            score=float(n - i) + score_offset,
            rank=i,
            label=i % 3,
            payload={"p_given": 0.1 * (i % 10)},
        )
        for i in range(n)
    ]
