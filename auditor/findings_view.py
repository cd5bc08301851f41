"""Findings joined with what a reviewer or an export needs: the example itself and decisions.

The `*_doc` functions, `label_text`, `corrected_label` and `manifest_rows` are views: they take
rows already loaded and issue no query (no lazy relationship, no `object_session`); the
functions that take a `Session` (`audit_context`, `context_for`, `export_rows`, ...) are where
the reading happens, explicitly, through the store.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from auditor.data.base import Examples
from auditor.data.options import DataOptions
from auditor.errors import AuditorError
from auditor.resolve import load_dataset_source
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import Finding, Review, ReviewEvent


@dataclass
class AuditContext:
    """What turns an audit's rows into something a person reads: class names and where each
    example lives (file path relative to the data set's root, or "row N")."""

    dataset_id: int
    dataset_name: str
    source: str
    class_names: list[str] | None
    locators: dict[int, str] = field(default_factory=dict)
    # of the examples looked up, those that are flagged findings of the audit themselves
    flagged: set[int] = field(default_factory=set)
    rank_by: str | None = None  # the label check's ranking: what a finding's `score` is

    def class_name(self, label: int | None) -> str | None:
        """The class's name, or its index as text when the data set names none."""
        if label is None:
            return None
        names = self.class_names
        return names[label] if names and 0 <= label < len(names) else str(label)

    def class_option(self, label: int) -> str:
        """A class as a menu reads it: "3 · cat" where it has a name, "3" where the name is the
        index itself."""
        name = self.class_name(label)
        return str(label) if name in (None, str(label)) else f"{label} · {name}"

    def locator(self, index: int) -> str:
        return self.locators.get(index, f"row {index}")


def audit_context(session: Session, audit_id: int, indices: Sequence[int] = ()) -> AuditContext:
    """The audit's data set names, with the locators of the examples at `indices` looked up."""
    audit = audit_store.get_audit(session, audit_id)
    ds = dataset_store.get_dataset_by_id(session, audit.dataset_id)
    return AuditContext(
        ds.id, ds.name, ds.source_path, ds.class_names,
        dataset_store.locators(session, audit.snapshot_id, indices),
        finding_store.flagged_example_indices(session, audit_id, indices) if indices else set(),
        (audit.summary or {}).get("rank_by") if audit.kind == "label-check" else None,
    )  # fmt: skip


def context_for(session: Session, audit_id: int, findings: Sequence[Finding]) -> AuditContext:
    """`audit_context` with the locators of `findings` and of the examples their payloads name
    (helpful / harmful / nearest training examples)."""
    indices = {f.example_index for f in findings}
    for f in findings:
        for rows in ((f.payload or {}).get("why") or {}).values():
            indices.update(int(r["index"]) for r in rows if isinstance(r, dict) and "index" in r)
    return audit_context(session, audit_id, sorted(indices))


# What each score of a label finding means, for column headers and labels (the JSON keys stay).
SCORE_LABELS = {
    "margin": "prefers another label by",
    "loo_margin": "left out, prefers another label by",
    "self_influence": "self-influence",
    "loss": "loss on given label",
    "prob_label": "prob. of given label",
    "loo_prob_label": "left-out prob. of given label",
    "predicted": "model predicts",
    "suggested_label": "suggested label",
    "combined": "self-influence and loss, mean percentile",
}
SCORE_HELP = {
    "margin": "log p(best other label) - log p(given label) under the trained model; above 0 it "
    "prefers another label",
    "loo_margin": "the same for the model trained without this example (predicted by influence, "
    "no retraining)",
    "self_influence": "g^T H^-1 g: how far the model bent to fit this example",
    "loo_prob_label": "the probability of the given label under the model trained without this "
    "example (predicted by influence)",
}


def score_label(rank_by: str | None) -> str:
    """What a finding's `score` is, in words: the label check's ranking ("prefers another label
    by" for margin), or plain "score" for other kinds."""
    if rank_by is None:
        return "score"
    return SCORE_LABELS.get(rank_by.replace("-", "_"), rank_by)


def evidence_rows(
    why: dict[str, list[dict[str, Any]]], ctx: AuditContext, total_abs: float | None
) -> dict[str, list[dict[str, Any]]]:
    """The "why" lists as a person reads them: each training example with its class name, file,
    whether it is itself flagged, what its influence does (`effect`: it "supports" the given
    label when up-weighting it lowers this example's loss, I_up,loss < 0, else it "argues
    against" it) and `share`: |I_up,loss| as a percentage of the example's total absolute
    influence over the training set (`total_abs`, stored with the lists; for lists stored
    without it, of the listed examples', and `share_of` says which)."""
    listed = [abs(float(r.get("influence") or 0.0)) for rows in why.values() for r in rows if isinstance(r, dict)]
    scale, share_of = (total_abs, "training set") if total_abs else (sum(listed), "listed")
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, rows in why.items():
        shown = []
        for r in rows:
            influence = float(r.get("influence") or 0.0)
            index = int(r["index"])
            shown.append(
                dict(
                    r,
                    locator=ctx.locator(index),
                    label_name=ctx.class_name(r.get("label")),
                    flagged=index in ctx.flagged,
                    effect="supports" if influence < 0 else "argues against",
                    share=100.0 * abs(influence) / scale if scale else None,
                    share_of=share_of,
                )
            )
        out[kind] = shown
    return out


def decision_doc(review: Review | None, ctx: AuditContext | None = None) -> dict[str, Any] | None:
    if review is None:
        return None
    return {
        "decision": review.decision,
        "new_label": review.new_label,
        "new_label_name": ctx.class_name(review.new_label) if ctx else None,
        "reviewer": review.reviewer,
        "note": review.note,
        "decided_at": review.decided_at.isoformat(),
        "version": review.version,
    }


def event_doc(
    e: ReviewEvent, ctx: AuditContext | None = None, suggested_label: int | None = None
) -> dict[str, Any]:
    """One history entry. `label` is the label the decision gives the example: the relabel's,
    or for a confirm the suggestion it accepted: `suggested_label`, the one the finding that
    prompted it made (read with the events: `review_store.review_history_with_suggestions`)."""
    label = suggested_label if e.decision == "confirmed" else e.new_label
    return {
        "id": e.id,
        "decision": e.decision,
        "new_label": e.new_label,
        "new_label_name": ctx.class_name(e.new_label) if ctx else None,
        "label": label,
        "label_name": ctx.class_name(label) if ctx and label is not None else None,
        "reviewer": e.reviewer,
        "note": e.note,
        "finding_id": e.finding_id,
        "audit_id": e.audit_id,
        "undoes_id": e.undoes_id,
        "at": e.created_at.isoformat(),
    }


def finding_doc(
    f: Finding, ctx: AuditContext | None = None, review: Review | None = None
) -> dict[str, Any]:
    """A finding as the CLI's --json, exports and the web API show it. With `ctx`, class names
    and the example's locator are added (label_name, suggested_label_name, locator), and the
    payload's lists of training examples get theirs."""
    doc: dict[str, Any] = {
        "id": f.id,
        "audit_id": f.audit_id,
        "rank": f.rank,
        "kind": f.kind,
        "example_index": f.example_index,
        "example_key": f.example_key,
        "label": f.label,
        "score": f.score,
        "flagged": bool(f.flagged),  # in the audit's review workload (its estimate), else ranked only
        "payload": f.payload,
    }
    if ctx is not None:
        payload = f.payload or {}
        suggested = payload.get("suggested_label")
        doc["dataset"] = ctx.dataset_name
        doc["locator"] = ctx.locator(f.example_index) if f.example_index >= 0 else None
        doc["label_name"] = ctx.class_name(f.label)
        doc["suggested_label_name"] = ctx.class_name(suggested) if suggested is not None else None
        doc["score_label"] = score_label(ctx.rank_by) if f.kind == "label" else "score"
        why = payload.get("why")
        if why:
            # one why per item: the readable lists here, not a second copy in the payload
            doc["payload"] = {k: v for k, v in payload.items() if k != "why"}
            doc["why"] = evidence_rows(why, ctx, payload.get("why_total_abs_influence"))
        doc["decision"] = decision_doc(review, ctx)
    return doc


def label_text(label: int | None, ctx: AuditContext | None) -> str:
    """"3 (cat)" where the data set names its classes, else "3"."""
    if label is None:
        return "-"
    return named_label(label, ctx.class_name(label) if ctx else None)


def named_label(label: Any, name: str | None) -> str:
    """A label with its class name where that says more than the index: "3 (cat)", "3"."""
    return f"{label} ({name})" if name is not None and name != str(label) else str(label)


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


def dataset_examples(session: Session, audit_id: int, *, data: DataOptions) -> tuple[Examples, Any]:
    audit = audit_store.get_audit(session, audit_id)
    return load_dataset_source(dataset_store.get_dataset_by_id(session, audit.dataset_id), data=data), audit


def resolve_class(value: int | str, names: list[str] | None, count: int | None = None) -> int:
    """A class given by name (where the data set names its classes: ImageFolder folders, CSV
    label strings, NPZ `class_names`) or by index. Refused in one line when it is not one of the
    data set's classes (`len(names)` when named, else `count` when known), so a typo is never
    stored as a new class."""
    if isinstance(value, str):
        text = value.strip()
        if names and text in names:
            return names.index(text)
        try:
            value = int(text)
        except ValueError:
            listed = (
                f"; its classes are {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
                if names else " (this data set has no class names)"
            )  # fmt: skip
            raise AuditorError(f"unknown class {text!r}: give a class index or name{listed}") from None
    limit = len(names) if names else count
    if value < 0 or (limit is not None and value >= limit):
        where = f"the data set's classes 0..{limit - 1}" if limit else "the class indices"
        raise AuditorError(f"class {value} is outside {where}")
    return int(value)


def parse_class(text: str, class_names: list[str] | None) -> int:
    """A class for a filter, by name or index."""
    return resolve_class(text, class_names)


def parse_label(text: str, examples: Examples | None, class_names: list[str] | None = None) -> int:
    """A reviewer's new label, checked against the data set when it can be read, else against
    the class names stored with it."""
    if examples is not None:
        return resolve_class(text, examples.class_names, examples.num_classes)
    return resolve_class(text, class_names)


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
    "locator",
    "example_key",
    "original_label",
    "original_class",
    "decision",
    "corrected_label",
    "corrected_class",
    "suggested_label",
    "suggested_class",
    "score",
    "rank",
    "reviewer",
    "decided_at",
    "note",
]
# The relabel manifest: one row per example whose label a decision changes.
MANIFEST_COLUMNS = ["path", "example_key", "old_label", "old_class", "new_label", "new_class", "decision", "reviewer", "time"]


def export_rows(session: Session, audit_id: int) -> list[dict[str, Any]]:
    """One row per finding of the audit, in example order, with the decision applied and the
    class names and file (or row) of each example."""
    audit = audit_store.get_audit(session, audit_id)
    reviews = {r.example_key: r for r in review_store.list_reviews(session, audit.dataset_id)}
    findings = sorted(finding_store.list_findings(session, audit_id), key=lambda f: (f.example_index, f.kind))
    ctx = audit_context(session, audit_id, [f.example_index for f in findings])
    rows = []
    for f in findings:
        r = reviews.get(f.example_key)
        corrected = corrected_label(f, r)
        suggested = (f.payload or {}).get("suggested_label")
        rows.append(
            {
                "example_index": f.example_index,
                "locator": ctx.locator(f.example_index) if f.example_index >= 0 else "",
                "example_key": f.example_key,
                "original_label": f.label,
                "original_class": ctx.class_name(f.label),
                "decision": r.decision if r else "",
                "corrected_label": corrected,
                "corrected_class": ctx.class_name(corrected),
                "suggested_label": suggested,
                "suggested_class": ctx.class_name(suggested) if suggested is not None else None,
                "score": f.score,
                "rank": f.rank,
                "reviewer": r.reviewer if r else "",
                "decided_at": r.decided_at.isoformat() if r else "",
                "note": (r.note or "") if r else "",
            }
        )
    return rows


def manifest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The relabel manifest from export rows: each example whose label a decision changes, once
    (an audit with several finding kinds lists an example once per kind)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["decision"] and r["corrected_label"] != r["original_label"] and r["example_key"] not in out:
            out[r["example_key"]] = {
                "path": r["locator"], "example_key": r["example_key"],
                "old_label": r["original_label"], "old_class": r["original_class"],
                "new_label": r["corrected_label"], "new_class": r["corrected_class"],
                "decision": r["decision"], "reviewer": r["reviewer"], "time": r["decided_at"],
            }  # fmt: skip
    return list(out.values())


def write_corrected_tree(session: Session, audit_id: int, rows: list[dict[str, Any]], out_dir: Path) -> int:
    """A copy of an ImageFolder data set with every file under its corrected class's folder.

    Every example of the data set is copied (not only the findings), so the tree is ready to
    train on. Written to `<out_dir>.tmp` first and renamed, so a failure leaves no half tree.
    Returns the number of files moved to another class.
    """
    audit = audit_store.get_audit(session, audit_id)
    ds = dataset_store.get_dataset_by_id(session, audit.dataset_id)
    if ds.format != "imagefolder":
        raise AuditorError(f"--corrected-tree needs an ImageFolder data set; {ds.name!r} is {ds.format}")
    root = Path(ds.source_path)
    if not root.is_dir():
        raise AuditorError(f"cannot read data set {ds.name!r}: {root} is not a folder any more")
    if out_dir.exists():
        raise AuditorError(f"--corrected-tree {out_dir} exists; give a new folder")
    names = ds.class_names or []
    new_class = {r["locator"]: r["corrected_class"] for r in rows if r["locator"]}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    moved = 0
    try:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for file in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                rel = str(file.relative_to(root))
                target_class = new_class.get(rel, class_dir.name)
                if target_class not in names and target_class != class_dir.name:
                    target_class = class_dir.name
                moved += target_class != class_dir.name
                dest = tmp / target_class / file.relative_to(class_dir)
                if dest.exists():  # two classes held a file of the same name
                    dest = dest.with_name(f"{class_dir.name}__{dest.name}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, dest)
        tmp.replace(out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AuditorError(f"cannot write --corrected-tree {out_dir}: {exc.strerror or exc}") from None
    return moved


# A spreadsheet evaluates a cell that starts with one of these as a formula (`=HYPERLINK(...)`
# in a reviewer's note would be a link that sends data out when clicked).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: text starting like a formula gets a leading
    single quote (OWASP's rule for CSV injection); numbers stay numbers. JSON keeps raw text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_export(rows: list[dict[str, Any]], out: Path, columns: list[str] | None = None) -> Path:
    """Write rows to .csv or .json (by suffix); written to a temp file first, then renamed.
    CSV cells are made spreadsheet-safe (`spreadsheet_safe`); JSON holds the text as stored."""
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
                w = csv.DictWriter(fh, fieldnames=columns or EXPORT_COLUMNS)
                w.writeheader()
                w.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AuditorError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    return out
