"""User-facing errors.

Every problem a user can cause (bad file, bad shape, NaN loss, unsafe weights, a database that is
down) is raised as an `AuditorError` with a one-line message that names the problem and, where
possible, the setting to change. The CLI prints the message and exits non-zero; a worker stores it
as the audit's failure reason. Anything else escaping is a bug in auditor.
"""

from __future__ import annotations


class AuditorError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code: int = 2


class DataError(AuditorError):
    """The dataset cannot be read or does not fit the model (missing file, bad shape, bad label)."""


class ModelError(AuditorError):
    """The model cannot be built or loaded safely, or its loss is not finite."""


class SolverError(AuditorError):
    """An inverse-HVP solver failed (diverged, singular Hessian); the message names the fix."""


class ServiceError(AuditorError):
    """The database or broker is unreachable or in an unexpected state."""


class NotFound(AuditorError):
    """A named dataset, audit, finding or schedule does not exist."""


class Conflict(AuditorError):
    """A concurrent change won (e.g. two reviewers decided the same finding)."""


class Cancelled(AuditorError):
    """The audit was cancelled by a user while it ran."""
