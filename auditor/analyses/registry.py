"""Audit kind -> analysis function. The one place a worker or the CLI looks analyses up."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.errors import AuditorError

KINDS: dict[str, str] = {
    "label-check": "auditor.analyses.label_check",
    "explain": "auditor.analyses.explain",
    "domain-mismatch": "auditor.analyses.domain_mismatch",
    "attack": "auditor.analyses.attack",
}
NEEDS_TEST = {"explain", "domain-mismatch", "attack"}


def get_analysis(kind: str) -> Callable[[AnalysisInput], AnalysisResult]:
    """The `run(AnalysisInput) -> AnalysisResult` function of an audit kind (imported lazily)."""
    if kind not in KINDS:
        raise AuditorError(f"unknown audit kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind]).run
