"""Stored trained weights and curvature factors: fit once, score many, across audits.

An analysis asks its `FitCache` (this module's `ArtifactStore`) for a key that hashes everything
the thing depends on (model weights, the examples' content, the settings; see
`auditor.analyses.artifact_keys`), so a changed model, data set or setting simply misses. Files are
safetensors under `AUDITOR_ARTIFACTS/fitted/` (one mounted volume can serve several worker
machines); each is written to a temporary name and renamed, then recorded in the database, so a
crash mid-write leaves nothing a later audit could pick up. A record whose file has gone, or a
file that does not read, is dropped and the thing is fitted again.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings, artifacts_dir
from auditor.errors import AuditorError
from auditor.store import artifacts as artifact_store
from auditor.store.models import utcnow

log = logging.getLogger(__name__)
SUBDIR = "fitted"


def root(settings: Settings) -> Path:
    """The folder of stored models and curvature under the configured artifacts (created)."""
    path = artifacts_dir(settings) / SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


class ArtifactStore:
    """`FitCache` over a folder and the `artifacts` table."""

    def __init__(self, sessions: sessionmaker[Session], dataset_id: int | None = None, *, folder: Path) -> None:
        self.sessions, self.dataset_id, self.folder = sessions, dataset_id, folder

    def load(self, kind: str, key: str) -> tuple[dict[str, Any], dict] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        with self.sessions() as s:
            row = artifact_store.find_artifact(s, key)
            if row is None:
                return None
            path, meta = self.folder / row.path, dict(row.meta or {})
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError, ValueError) as exc:
            log.warning("artifact %s (%s) is unreadable (%s); dropping it", key[:12], path, exc)
            self._drop(key)
            return None
        with self.sessions() as s, s.begin():
            artifact_store.mark_used(s, key)
        return tensors, meta

    def save(self, kind: str, key: str, tensors: dict[str, Any], meta: dict) -> None:
        """Write the file under a temporary name, rename it, then record it. Another process that
        saved the same key first wins; this copy is removed."""
        from safetensors.torch import save_file

        name = f"{kind}-{key}.safetensors"
        final = self.folder / name
        tmp = self.folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            save_file(tensors, str(tmp))
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot store %s artifact %s: %s; the audit goes on without it", kind, key[:12], exc)
            return
        with self.sessions() as s, s.begin():  # a concurrent shard or audit that won keeps theirs
            artifact_store.record_artifact(
                s, kind=kind, key=key, path=name, size=final.stat().st_size, dataset_id=self.dataset_id, meta=meta
            )

    def _drop(self, key: str) -> None:
        with self.sessions() as s, s.begin():
            row = artifact_store.find_artifact(s, key)
            if row is not None:
                (self.folder / row.path).unlink(missing_ok=True)
                artifact_store.delete_artifact(s, row.id)


@dataclass
class ArtifactInfo:
    id: int
    kind: str
    key: str
    path: str
    bytes: int
    dataset: str | None
    created_at: datetime
    last_used_at: datetime
    uses: int
    present: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "key": self.key, "path": self.path, "bytes": self.bytes,
            "dataset": self.dataset, "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat(), "uses": self.uses, "present": self.present,
        }  # fmt: skip


def list_artifacts(session: Session, folder: Path) -> list[ArtifactInfo]:
    rows = artifact_store.artifacts_with_dataset(session)
    return [
        ArtifactInfo(a.id, a.kind, a.key, str(folder / a.path), a.bytes, name, a.created_at,
                     a.last_used_at, a.uses, (folder / a.path).is_file())  # fmt: skip
        for a, name in rows
    ]


def prune(
    session: Session,
    *,
    unused_for: timedelta | None = None,
    dataset: str | None = None,
    everything: bool = False,
    dry_run: bool = False,
    folder: Path,
) -> list[ArtifactInfo]:
    """Remove artifacts (file and record): those not used for `unused_for`, those of `dataset`,
    or all; records whose file is gone always; temporary files a crashed writer left, too.
    Returns what was (or, with `dry_run`, would be) removed."""
    if not (everything or unused_for is not None or dataset is not None):
        raise AuditorError("say what to prune: --unused-for 30d, --dataset NAME or --all")
    now = utcnow()
    gone = []
    for info in list_artifacts(session, folder):
        old = unused_for is not None and now - info.last_used_at >= unused_for
        if everything or old or not info.present or (dataset is not None and info.dataset == dataset):
            gone.append(info)
    if dry_run:
        return gone
    for info in gone:
        Path(info.path).unlink(missing_ok=True)
        artifact_store.delete_artifact(session, info.id)
    for tmp in folder.glob(".*.tmp"):  # left by a writer that crashed an hour or more ago
        try:
            if now.timestamp() - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return gone
