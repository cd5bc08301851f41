"""An audit over an image folder too large to load reads its files as it goes. When one of them
turns out corrupt halfway through a pass, the audit fails naming the file, what was stored before
stays, and no half-fitted curvature is left for a later audit to pick up. 28x28 images, a team's
float32 CNN given as safetensors weights, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file
from sqlalchemy.orm import Session, sessionmaker
from test_rows import _image_folder, tiled
from test_user_models import digits28, trained_small_cnn, user_models  # noqa: F401

from auditor.artifacts import list_artifacts, root
from auditor.audits import create_audit
from auditor.config import artifacts_dir, get_settings
from auditor.runner import execute_audit
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store


@pytest.fixture
def folder_dataset(sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUDITOR_STREAM_BYTES", "0")  # read every folder from its files
    monkeypatch.setenv("AUDITOR_DATA_WORKERS", "1")  # decoded in a DataLoader worker process
    monkeypatch.setenv("AUDITOR_MODEL_FACTORIES", "user_models:small_cnn")  # the team's registered model
    root = _image_folder(tiled(700), tmp_path / "scans")
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "scans", str(root), "imagefolder", {})
    return root


def test_a_corrupt_image_met_mid_stream_fails_the_audit_and_keeps_what_was_stored(
    sessions: sessionmaker[Session], folder_dataset: Path, tmp_path: Path, user_models  # noqa: F811
) -> None:
    weights = tmp_path / "cnn.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, 300)), epochs=1).state_dict(), str(weights))
    model = {"name": "user_models:small_cnn", "weights": str(weights), "train": False}
    first = create_audit(sessions, "label-check", "scans", {"model": model, "solver": {"name": "ekfac"}}, settings=get_settings())
    assert execute_audit(sessions, first, settings=get_settings(), local=True).status == "succeeded"
    with sessions() as s:
        stored_findings = finding_store.count_findings(s, first)
        stored_artifacts = [(a.kind, a.key) for a in list_artifacts(s, root(get_settings()))]
    assert stored_findings == 700 and stored_artifacts  # the first audit kept its curvature

    victim = folder_dataset / "7" / sorted(p.name for p in (folder_dataset / "7").iterdir())[-1]
    good = victim.read_bytes()
    messages: list[str] = []

    def corrupt_once_fitting_starts(fraction: float, message: str) -> None:
        messages.append(message)
        if "curvature" in message and victim.read_bytes() == good:
            victim.write_bytes(good[: len(good) // 2])  # truncated, as a failed copy leaves it

    # another damping: a curvature the first audit did not fit, so this one must fit it
    second = create_audit(sessions, "label-check", "scans", {"model": model, "solver": {"name": "ekfac", "damping": 0.05}}, settings=get_settings())
    outcome = execute_audit(sessions, second, settings=get_settings(), local=True, echo=corrupt_once_fitting_starts)
    assert outcome.status == "failed", messages
    assert f"7/{victim.name}: cannot decode image" in outcome.error and "\n" not in outcome.error
    with sessions() as s:
        audit = audit_store.get_audit(s, second)
        assert audit.status == "failed" and victim.name in audit.error
        assert finding_store.count_findings(s, first) == stored_findings and finding_store.count_findings(s, second) == 0
        assert [(a.kind, a.key) for a in list_artifacts(s, root(get_settings()))] == stored_artifacts  # nothing half-fitted
    leftovers = [p for p in artifacts_dir(get_settings()).rglob("*") if p.is_file() and p.name.startswith((".", "tmp"))]
    assert leftovers == []

    victim.write_bytes(good)  # the file is put back: the same audit runs again and succeeds
    assert execute_audit(sessions, second, settings=get_settings(), local=True).status == "succeeded"
    with sessions() as s:
        assert finding_store.count_findings(s, second) == 700
        assert len(list_artifacts(s, root(get_settings()))) == len(stored_artifacts) + 1  # its own curvature, now whole
