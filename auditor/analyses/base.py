"""Types shared by every analysis and by the code that stores their results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# progress(fraction_done in [0, 1], message). It may raise `auditor.errors.Cancelled`, which is
# how a cancel request reaches a running analysis without the analysis knowing about the store.
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


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


@dataclass
class AnalysisInput:
    """Everything an analysis gets. `params` is the audit's JSON params (CLI options), which
    each analysis parses into its own config dataclass; `artifacts_dir` is where it may write
    files (perturbed images, PNG previews) that findings refer to by relative path."""

    train: Any  # auditor.data.Examples
    test: Any | None = None
    params: dict[str, Any] = field(default_factory=dict)
    progress: Progress = no_progress
    artifacts_dir: Any | None = None  # pathlib.Path


@dataclass
class AnalysisResult:
    findings: list[FindingRecord]
    summary: dict[str, Any] = field(default_factory=dict)
