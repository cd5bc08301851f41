"""Findings joined with what a reviewer or an export needs: the example itself and decisions."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from auditor.data.base import Examples
from auditor.errors import AuditorError
from auditor.resolve import load_dataset_source
from auditor.store import repo
from auditor.store.models import Finding


def finding_doc(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "audit_id": f.audit_id,
        "rank": f.rank,
        "kind": f.kind,
        "example_index": f.example_index,
        "example_key": f.example_key,
        "label": f.label,
        "score": f.score,
        "payload": f.payload,
    }


def load_example(examples: Examples, finding: Finding) -> tuple[Any, int] | None:
    """The example behind a finding, found by key (rows may have moved since the audit)."""
    i = finding.example_index
    if 0 <= i < len(examples) and examples.keys[i] == finding.example_key:
        return examples.x[i], int(examples.y[i])
    try:
        j = examples.keys.index(finding.example_key)
    except ValueError:
        return None
    return examples.x[j], int(examples.y[j])


def dataset_examples(session: Session, audit_id: int) -> tuple[Examples, Any]:
    audit = repo.get_audit(session, audit_id)
    return load_dataset_source(audit.dataset), audit


def parse_label(text: str, examples: Examples | None) -> int:
    """A reviewer's new label: a class index or, where the data set names its classes (ImageFolder
    folders, CSV label strings, NPZ `class_names`), a class name. Checked against the data set
    when it can be read, so a typo is refused instead of stored as a new class."""
    text = text.strip()
    names = examples.class_names if examples is not None else None
    if names and text in names:
        return names.index(text)
    try:
        label = int(text)
    except ValueError:
        known = f"; its classes are {', '.join(names)}" if names else " (this data set has no class names)"
        raise AuditorError(f"unknown label {text!r}: give a class index{known}") from None
    if examples is not None and not 0 <= label < examples.num_classes:
        raise AuditorError(
            f"label {label} is out of range: this data set has classes 0..{examples.num_classes - 1}"
        )
    return label


def corrected_label(finding: Finding, review) -> int | None:
    """`relabelled`: the reviewer's label; `confirmed` (the label is wrong and the model's
    suggestion is right): the suggested label; `dismissed` or undecided: the original label."""
    if review is None or review.decision == "dismissed":
        return finding.label
    if review.decision == "relabelled":
        return review.new_label
    suggested = (finding.payload or {}).get("suggested_label")
    return int(suggested) if suggested is not None else finding.label


EXPORT_COLUMNS = [
    "example_index",
    "example_key",
    "original_label",
    "decision",
    "corrected_label",
    "suggested_label",
    "score",
    "rank",
    "reviewer",
    "note",
]


def export_rows(session: Session, audit_id: int) -> list[dict[str, Any]]:
    """One row per finding of the audit, in example order, with the decision applied."""
    audit = repo.get_audit(session, audit_id)
    reviews = {r.example_key: r for r in repo.list_reviews(session, audit.dataset_id)}
    rows = []
    for f in sorted(repo.list_findings(session, audit_id), key=lambda f: (f.example_index, f.kind)):
        r = reviews.get(f.example_key)
        rows.append(
            {
                "example_index": f.example_index,
                "example_key": f.example_key,
                "original_label": f.label,
                "decision": r.decision if r else "",
                "corrected_label": corrected_label(f, r),
                "suggested_label": (f.payload or {}).get("suggested_label"),
                "score": f.score,
                "rank": f.rank,
                "reviewer": r.reviewer if r else "",
                "note": (r.note or "") if r else "",
            }
        )
    return rows


def write_export(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write rows to .csv or .json (by suffix); written to a temp file first, then renamed."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise AuditorError(f"--out must end in .csv or .json, not {out.suffix or '(none)'}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".json":
            tmp.write_text(json.dumps(rows, indent=1))
        else:
            with tmp.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AuditorError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    return out
