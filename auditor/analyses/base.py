"""Types shared by every analysis and by the code that stores their results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Re-exported: the analyses' own names for the bottom layer's progress callback and result row.
from auditor.progress import Progress, no_progress
from auditor.records import FindingRecord

__all__ = ["AnalysisInput", "AnalysisResult", "FindingRecord", "FitCache", "Progress", "no_progress"]


class FitCache(Protocol):
    """Where fitted things (trained weights, curvature factors) are kept between audits, by a key
    that names everything they depend on. `auditor.artifacts.ArtifactStore` is the real one
    (safetensors files plus database records); an analysis run without one fits everything."""

    def load(self, kind: str, key: str) -> tuple[dict[str, Any], dict] | None:
        """(tensors, metadata) stored under `key`, or None."""

    def save(self, kind: str, key: str, tensors: dict[str, Any], meta: dict) -> None:
        """Keep `tensors` (name -> CPU tensor) and JSON `meta` under `key`; all or nothing."""


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
    cache: FitCache | None = None  # fitted weights and curvature kept across audits


@dataclass
class AnalysisResult:
    findings: Sequence[FindingRecord]  # a list, or records made when read (the label check's)
    summary: dict[str, Any] = field(default_factory=dict)
