"""Types shared by every analysis and by the code that stores their results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Re-exported: the analyses' own names for the bottom layer's progress callback and result row.
from auditor.progress import Progress, no_progress
from auditor.records import FindingRecord

__all__ = ["AnalysisInput", "AnalysisResult", "FindingRecord", "Progress", "no_progress"]


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
