"""Reads the review app and the review service need that `repo` does not have yet.

Same contract as `repo`: each function takes the caller's `Session` and never commits. (A
separate module while `repo.py` is being split by entity; these belong with the reviews.)
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.store.models import Finding, ReviewEvent


class PromptedEvent(NamedTuple):
    """A history event with the label suggested by the finding that prompted it (what a confirm
    accepted), read up front so that showing the event needs no query."""

    event: ReviewEvent
    suggested_label: int | None


def review_history_with_suggestions(
    session: Session, dataset_id: int, example_key: str
) -> list[PromptedEvent]:
    """Every event about one example of a dataset, oldest first, each with its finding's
    suggested label (None when the finding suggests none or is gone): two queries in all."""
    events = list(
        session.scalars(
            select(ReviewEvent)
            .where(ReviewEvent.dataset_id == dataset_id, ReviewEvent.example_key == example_key)
            .order_by(ReviewEvent.id)
        )
    )
    finding_ids = sorted({e.finding_id for e in events if e.finding_id is not None})
    suggested: dict[int, int | None] = {}
    for start in range(0, len(finding_ids), 1000):
        chunk = finding_ids[start : start + 1000]
        rows = session.execute(select(Finding.id, Finding.payload).where(Finding.id.in_(chunk)))
        suggested.update((fid, _suggested(payload)) for fid, payload in rows)
    return [
        PromptedEvent(e, suggested.get(e.finding_id) if e.finding_id is not None else None)
        for e in events
    ]


def _suggested(payload: dict | None) -> int | None:
    value = (payload or {}).get("suggested_label")
    return int(value) if value is not None else None
