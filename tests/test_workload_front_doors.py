"""The review workload at the front doors: `audit status` and `audit list` (text and --json),
`review rerank`, and the API's `/api/audits/{id}/progress` (JSON and PNG) all show the numbers
of `auditor.workload.review_progress`; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import make_audit, make_dataset
from fastapi.testclient import TestClient
from helpers import cli

from auditor import auth
from auditor.records import FindingRecord
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.web.app import create_app
from auditor.workload import review_progress

N, FLAGGED, DECIDED = 120, 60, 30
PASSWORD = "correct horse"


def records() -> list[FindingRecord]:
    rng = np.random.default_rng(1)
    return [
        FindingRecord(
            example_index=i,
            example_key=f"k{i:06d}",
            kind="label",
            score=float(N - i),
            rank=i + 1,
            label=i % 3,
            flagged=i < FLAGGED,
            payload={
                "margin": float(N - i),
                "loo_margin": float(rng.normal()),
                "suggested_label": (i + 1) % 3,
            },
        )  # fmt: skip
        for i in range(N)
    ]


@pytest.fixture
def audit_id(sessions, db_url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """A succeeded label check with a flagged set, DECIDED of it decided (a third dismissed)."""
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    with sessions() as s, s.begin():
        a = make_audit(s, make_dataset(s, "ds", n=N))
        finding_store.upsert_findings(s, a.id, records())
        for i, f in enumerate(finding_store.list_findings(s, a.id)[:DECIDED]):
            review_store.decide(s, f.id, "dismissed" if i % 3 == 0 else "confirmed", None, "ana")
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        return a.id


def test_audit_status_says_how_far_the_review_got_and_json_has_it(audit_id: int, sessions) -> None:
    doc = cli("audit", "status", str(audit_id), "--json")
    with sessions() as s:
        assert doc["review"] == review_progress(s, audit_id)
    assert (doc["review"]["flagged"], doc["review"]["reviewed"], doc["review"]["left"]) == (
        60,
        30,
        30,
    )
    assert doc["review"]["precision"] == pytest.approx(20 / 30)
    text = cli("audit", "status", str(audit_id))
    assert "review: 30 of 60 flagged reviewed, 30 left; precision so far 0.67 (" in text
    assert "h left at 0 s per decision" in text  # decided in one go: no pace to speak of


def test_audit_list_shows_reviewed_of_flagged_within_80_columns(audit_id: int) -> None:
    listed = cli("audit", "list", "--json")
    assert listed[0]["review"] == {"flagged": 60, "reviewed": 30, "left": 30}
    table = cli("audit", "list")
    assert "30/60" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_review_rerank_reranks_and_refuses_in_one_line(audit_id: int, sessions) -> None:
    done = cli("review", "rerank", str(audit_id), "--json")
    assert done["rerank"]["decisions"] == DECIDED and done["rerank"]["positives"] == 20
    assert "queue re-ranked" in cli("review", "rerank", str(audit_id))
    with sessions() as s, s.begin():
        dataset_id = make_dataset(s, "other", n=N).id
        from auditor.store import datasets as dataset_store

        empty = make_audit(s, dataset_store.get_dataset_by_id(s, dataset_id))
        finding_store.upsert_findings(s, empty.id, records())
    bad = cli("review", "rerank", str(empty.id), ok=False)
    assert bad.exit_code != 0 and "too few decisions to re-rank" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_api_serves_progress_as_json_and_a_picture(
    audit_id: int, sessions, tmp_path: Path
) -> None:
    with TestClient(create_app(sessions, home=tmp_path / "home")) as client:
        assert client.get(f"/api/audits/{audit_id}/progress").status_code == 401
        token = client.post("/api/token", json={"username": "ana", "password": PASSWORD}).json()[
            "access_token"
        ]
        h = {"Authorization": f"Bearer {token}"}
        progress = client.get(f"/api/audits/{audit_id}/progress", headers=h)
        assert progress.status_code == 200, progress.text
        with sessions() as s:
            assert progress.json() == review_progress(s, audit_id)
        audit = client.get(f"/api/audits/{audit_id}", headers=h).json()
        assert audit["review"] == progress.json()
        assert client.get("/api/audits", headers=h).json()[0]["review"]["reviewed"] == 30
        png = client.get(f"/api/audits/{audit_id}/progress.png", headers=h)
        assert (
            png.status_code == 200
            and png.content.startswith(b"\x89PNG")
            and png.headers["content-type"] == "image/png"
        )
        missing = client.get("/api/audits/999999/progress", headers=h)
        assert missing.status_code == 404 and "no audit with id 999999" in missing.json()["detail"]
