"""The result row every analysis produces and the store keeps.

At the bottom of the package so that the store (which writes these rows) does not import the
analyses (which make them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
