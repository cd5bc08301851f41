"""The result row every analysis produces and the store keeps.

At the bottom of the package so that the store (which writes these rows) does not import the
analyses (which make them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def finite_json(doc: Any) -> Any:
    """`doc` with every NaN or infinite float replaced by None (JSON has no such numbers:
    PostgreSQL refuses them and `json.dumps` writes `-Infinity`, which no JSON parser reads) and
    numpy scalars made plain. Stored payloads and summaries, and every --json output, go through it."""
    if isinstance(doc, dict):
        return {k: finite_json(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite_json(v) for v in doc]
    if hasattr(doc, "item") and callable(doc.item) and getattr(doc, "ndim", 1) == 0:
        doc = doc.item()  # numpy / torch scalar
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    return doc


@dataclass
class FindingRecord:
    """One result row of an analysis, before it is stored.

    `kind` distinguishes the rows of one audit (e.g. "label", "helpful", "harmful"), and together
    with `example_key` and the audit it is unique, which makes storing idempotent.
    """

    example_index: int
    example_key: str
    kind: str
    score: float
    rank: int
    label: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    flagged: bool = False  # a member of the audit's review workload (label check: its estimate)
