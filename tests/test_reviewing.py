"""The review rules live in one service (`auditor.reviewing`), and every entry point meets there:
`auditor review decide/undo`, the API routes and the pages' script. A confirm needs the
finding's suggested label; a repeated confirm records nothing new; the views that show
decisions issue no SQL of their own. On SQLite and PostgreSQL, over the real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import make_audit, make_dataset
from fastapi.testclient import TestClient
from helpers import cli
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor import auth, reviewing
from auditor.analyses.base import FindingRecord
from auditor.errors import AuditorError, Conflict
from auditor.findings_view import (
    context_for,
    corrected_label,
    decision_doc,
    event_doc,
    export_rows,
    finding_doc,
    label_text,
    manifest_rows,
)
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import ReviewEvent
from auditor.web.app import create_app

PASSWORD = "correct horse"
N = 8


def records(suggest: int = 2) -> list[FindingRecord]:
    """N findings of examples k000000..; the even ones suggest class `suggest`, the odd none."""
    return [
        FindingRecord(
            example_index=i,
            example_key=f"k{i:06d}",
            kind="label",
            score=float(N - i),
            rank=i,
            label=i % 3,
            payload={"suggested_label": suggest} if i % 2 == 0 else {"p_given": 0.5},
        )  # fmt: skip
        for i in range(N)
    ]


@pytest.fixture
def store(
    sessions: sessionmaker[Session], db_url: str, monkeypatch
) -> tuple[sessionmaker[Session], int, list[int]]:
    """A data set with one audit of N findings and a reviewer `ana`; the CLI uses the same DB."""
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, n=N))
        finding_store.upsert_findings(s, audit.id, records())
        ids = [f.id for f in finding_store.list_findings(s, audit.id)]
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    monkeypatch.setenv("AUDITOR_REVIEWER_PASSWORD", PASSWORD)  # CLI decisions prove who decides
    return sessions, audit.id, ids


@pytest.fixture
def client(store, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(store[0], home=tmp_path / "home")) as c:
        yield c


def bearer(client: TestClient) -> dict[str, str]:
    r = client.post("/api/token", json={"username": "ana", "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def page_csrf(client: TestClient, audit_id: int) -> dict[str, str]:
    """Sign in as the browser does and take the CSRF token the queue page gives its script."""
    client.post("/login", data={"username": "ana", "password": PASSWORD})
    page = client.get(f"/audits/{audit_id}", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    return {"X-CSRF-Token": page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]}


def events(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(ReviewEvent)))


def test_cli_confirm_of_a_finding_without_a_suggestion_fails_in_one_line_and_stores_nothing(
    store,
) -> None:
    sessions, _, ids = store
    result = cli("review", "decide", str(ids[1]), "--confirm", "--reviewer", "ana", ok=False)
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"finding {ids[1]} suggests no label to confirm" in lines[0]
    assert events(sessions) == 0


def test_api_confirm_of_a_finding_without_a_suggestion_is_a_400_and_stores_nothing(
    store, client
) -> None:
    sessions, _, ids = store
    r = client.post(
        f"/api/findings/{ids[1]}/decision", headers=bearer(client), json={"decision": "confirmed"}
    )
    assert r.status_code == 400 and "suggests no label to confirm" in r.json()["detail"]
    assert events(sessions) == 0


def test_confirming_twice_from_the_cli_records_one_event(store) -> None:
    sessions, _, ids = store
    first = cli("review", "decide", str(ids[0]), "--confirm", "--reviewer", "ana", "--json")
    again = cli("review", "decide", str(ids[0]), "--confirm", "--reviewer", "ana", "--json")
    assert again == first and (first["decision"], first["version"]) == ("confirmed", 1)
    assert events(sessions) == 1


def test_confirming_twice_from_the_api_records_one_event_and_answers_200(store, client) -> None:
    sessions, _, ids = store
    h = bearer(client)
    first = client.post(
        f"/api/findings/{ids[0]}/decision", headers=h, json={"decision": "confirmed"}
    )
    again = client.post(
        f"/api/findings/{ids[0]}/decision", headers=h, json={"decision": "confirmed"}
    )
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["decision"]["version"] == 1
    # with the version seen, too: still nothing new
    third = client.post(
        f"/api/findings/{ids[0]}/decision",
        headers=h,
        json={"decision": "confirmed", "expected_version": 1},
    )
    assert third.status_code == 200 and third.json()["decision"]["version"] == 1
    assert events(sessions) == 1


def test_a_confirm_of_another_label_still_needs_the_version(store) -> None:
    """Idempotent only for the same label: a later audit's finding of the same example that
    suggests another class changes the decision, so it must name the version it saw."""
    sessions, audit_id, ids = store
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[0], "confirmed", reviewer="ana")
        later = make_audit(s, dataset_store.get_dataset(s, "ds"))
        finding_store.upsert_findings(s, later.id, records(suggest=1))
        other = finding_store.list_findings(s, later.id)[0].id
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="already decided"):
        reviewing.decide(s, other, "confirmed", reviewer="ana")
    with sessions() as s, s.begin():
        assert (
            reviewing.decide(s, other, "confirmed", reviewer="ana", expected_version=1).version == 2
        )
    assert events(sessions) == 2


def test_a_stale_version_is_still_a_conflict(store) -> None:
    sessions, _, ids = store
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[2], "dismissed", reviewer="ana")
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[2], "relabelled", 1, reviewer="ana", expected_version=1)
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="version 2"):
        reviewing.decide(s, ids[2], "dismissed", reviewer="ana", expected_version=1)
    with sessions() as s, s.begin(), pytest.raises(AuditorError, match="outside"):
        reviewing.decide(s, ids[2], "relabelled", 7, reviewer="ana", expected_version=2)
    assert events(sessions) == 2


@pytest.mark.parametrize("service", ["decide", "undo"])
def test_the_cli_the_api_and_the_page_meet_in_the_same_service_function(
    store, client, monkeypatch, service
) -> None:
    sessions, audit_id, ids = store
    real = getattr(reviewing, service)
    calls: list[int] = []

    def spy(s, finding_id, *args, **kwargs):
        calls.append(finding_id)
        return real(s, finding_id, *args, **kwargs)

    monkeypatch.setattr(reviewing, service, spy)
    if service == "undo":  # something to undo on each of the three examples
        with sessions() as s, s.begin():
            for i in ids[:3]:
                reviewing.decide(s, i, "dismissed", reviewer="ana")
    verb, cli_args, body = (
        ("decision", ["--dismiss"], {"decision": "dismissed"})
        if service == "decide"
        else ("undo", [], {})
    )
    cli("review", service, str(ids[0]), *cli_args, "--reviewer", "ana", "--json")
    r = client.post(f"/api/findings/{ids[1]}/{verb}", headers=bearer(client), json=body)
    assert r.status_code == 200, r.text
    # the page's script posts to the same route with the session cookie and the page's token
    script = (
        Path(__file__).resolve().parents[1] / "auditor" / "web" / "static" / "queue.js"
    ).read_text()
    assert "/api/findings/${f.id}/decision" in script and "/api/findings/${id}/undo" in script
    r = client.post(
        f"/api/findings/{ids[2]}/{verb}", headers=page_csrf(client, audit_id), json=body
    )
    assert r.status_code == 200, r.text
    assert calls == ids[:3]


def test_bulk_accept_from_the_api_and_the_page_meets_in_the_service(
    store, client, monkeypatch
) -> None:
    sessions, audit_id, ids = store
    real = reviewing.accept_suggested
    calls: list[int] = []
    monkeypatch.setattr(
        reviewing, "accept_suggested", lambda s, a, **kw: calls.append(a) or real(s, a, **kw)
    )
    r = client.post(
        f"/api/audits/{audit_id}/accept-suggested",
        headers=bearer(client),
        json={"finding_ids": ids[:2]},
    )
    assert r.json()["confirmed"] == [ids[0]] and r.json()["skipped"] == [
        {"finding_id": ids[1], "reason": "suggests no label"}
    ]
    r = client.post(
        f"/api/audits/{audit_id}/accept-suggested",
        headers=page_csrf(client, audit_id),
        json={"top_k": 2},
    )
    assert r.json()["confirmed"] == [ids[2]] and [x["finding_id"] for x in r.json()["skipped"]] == [
        ids[1]
    ]
    assert calls == [audit_id, audit_id] and events(sessions) == 2


def test_the_views_issue_no_sql(store) -> None:
    """Everything a view shows is read up front (the finding, its decision, the history with each
    event's suggested label, the context); formatting them then runs no statement. The confirm in
    the history was prompted by another audit's finding, which this session never loaded."""
    sessions, audit_id, ids = store
    with sessions() as s, s.begin():
        later = make_audit(s, dataset_store.get_dataset(s, "ds"))
        finding_store.upsert_findings(s, later.id, records(suggest=1))
        reviewing.decide(s, finding_store.list_findings(s, later.id)[0].id, "confirmed", reviewer="ana")
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[0], "relabelled", 0, reviewer="ana", expected_version=1)
    with sessions() as s:
        f = finding_store.get_finding(s, ids[0])
        audit = audit_store.get_audit(s, audit_id)
        review = review_store.get_review(s, audit.dataset_id, f.example_key)
        ctx = context_for(s, audit_id, [f])
        history = review_store.review_history_with_suggestions(s, audit.dataset_id, f.example_key)
        rows = export_rows(s, audit_id)
        statements: list[str] = []

        def count(conn, cursor, statement, *args) -> None:
            statements.append(statement)

        engine = s.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            doc = finding_doc(f, ctx, review)
            shown = [event_doc(e, ctx, suggested) for e, suggested in history]
            decision_doc(review, ctx)
            corrected_label(f, review)
            label_text(f.label, ctx)
            manifest_rows(rows)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert statements == []
    assert doc["decision"]["decision"] == "relabelled"
    assert [(e["decision"], e["label"]) for e in shown] == [("confirmed", 1), ("relabelled", 0)]


def test_finding_detail_shows_the_label_each_event_gave(store) -> None:
    sessions, _, ids = store
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[0], "confirmed", reviewer="ana")
        reviewing.decide(s, ids[0], "relabelled", 1, reviewer="ana", expected_version=1)
        reviewing.undo(s, ids[0], reviewer="ana")
    with sessions() as s:
        detail = reviewing.finding_detail(s, ids[0])
    assert [(e["decision"], e["label"]) for e in detail.doc["history"]] == [
        ("confirmed", 2),
        ("relabelled", 1),
        ("undone", None),
    ]
    assert detail.doc["decision"]["decision"] == "confirmed"
