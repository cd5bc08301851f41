"""The verification API: `POST /api/audits/{id}/verify` (admins) starts a verify audit of a real
label check of 28x28 digits (no test set: held-out rows are scored), and
`GET /api/audits/{id}/verification` answers its report; on SQLite and on PostgreSQL.

A refused request is one line and creates no audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_data import Template, build_template, drop
from sqlalchemy import func, select

from auditor import auth
from auditor.store import findings as finding_store
from auditor.store import open_store
from auditor.store.models import Audit
from auditor.web.app import create_app

PASSWORD = "correct horse"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)]
)
def template(request, tmp_path_factory) -> Iterator[Template]:
    t = build_template(request.param, tmp_path_factory.mktemp(f"verify-{request.param}"))
    yield t
    drop(t.url)


@pytest.fixture
def app_db(template: Template, tmp_path: Path) -> Iterator[tuple[TestClient, object, Template]]:
    url = template.copy(tmp_path)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "root", "admin", PASSWORD)
    with TestClient(create_app(sessions, home=tmp_path / "home")) as client:
        yield client, sessions, template
    drop(url)


def bearer(client: TestClient, user: str) -> dict[str, str]:
    r = client.post("/api/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def audits(sessions) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Audit)))


def one_line(r) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, r.text
    return detail


def test_an_admin_verifies_the_decisions_and_reads_the_report(app_db) -> None:
    client, sessions, t = app_db
    root, ana = bearer(client, "root"), bearer(client, "ana")
    url = f"/api/audits/{t.audit_id}"
    r = client.get(f"{url}/verification", headers=ana)
    assert r.status_code == 404 and "no succeeded verification" in one_line(r)
    r = client.post(f"{url}/verify", headers=root)
    assert r.status_code == 400 and "has no decisions yet" in one_line(r)
    with sessions() as s:
        top = finding_store.list_findings(s, t.audit_id, top=20)
    for f in top:  # the reviewer accepts the top 20 suggestions
        r = client.post(
            f"/api/findings/{f.id}/decision", headers=ana, json={"decision": "confirmed"}
        )
        assert r.status_code == 200, r.text
    count = audits(sessions)
    r = client.post(f"{url}/verify", headers=ana)
    assert r.status_code == 403 and "only admins" in one_line(r)
    assert audits(sessions) == count
    r = client.post(f"{url}/verify", headers=root, json={"train_fn": "team:fit"})
    assert r.status_code == 400 and "not a registered factory" in one_line(r)
    assert audits(sessions) == count

    r = client.post(f"{url}/verify", headers=root)
    assert r.status_code == 202, r.text
    verify_id = r.json()["id"]
    assert r.json() == {"id": verify_id, "audit": t.audit_id, "status": "queued"}
    # embedded: it ran in this process after the response, through the one audit lifecycle
    run = client.get(f"/api/audits/{verify_id}", headers=ana).json()
    assert (run["kind"], run["status"], run["progress"]) == ("verify", "succeeded", 1.0)
    r = client.get(f"{url}/verification", headers=ana)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["verify_audit"] == verify_id and report["audit"] == t.audit_id
    # 20 labels changed; those of held-out rows are scored with the change, not trained on
    assert report["applied"]["confirmed"] == 20 and 0 < report["labels_changed"] <= 20
    assert report["n_train"] == 160
    assert set(report["before"]) == set(report["after"]) == {"test_loss", "test_accuracy"}
    assert report["evaluated_on"].startswith("held-out rows (40 of 200 training rows")
    assert client.get(f"{url}/verification").status_code == 401
    # the audit's page shows the verification, and the button to ask for one to admins only
    html = {"Accept": "text/html"}
    page = client.get(f"/audits/{t.audit_id}", headers={**root, **html})
    assert page.status_code == 200
    assert f'href="/audits/{verify_id}"' in page.text and "Verified by retraining" in page.text
    assert 'data-testid="verify"' in page.text
    assert 'data-testid="verify"' not in client.get(f"/audits/{t.audit_id}", headers={**ana, **html}).text
