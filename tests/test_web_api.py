"""The review app's JSON API and sign-in, over a real label check of 28x28 digits in an
ImageFolder whose folders are class names; on SQLite and on PostgreSQL.

Every bad request gets one line (`{"detail": ...}`) with the status that says what kind, and
stores nothing: each such test counts the review events before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_data import CLASS_NAMES, Template, build_template, drop
from sqlalchemy import func, select

from auditor import auth
from auditor.store import open_store
from auditor.store import reviews as review_store
from auditor.store.models import ReviewEvent
from auditor.web.app import create_app

PASSWORD = "correct horse"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def template(request, tmp_path_factory) -> Iterator[Template]:
    t = build_template(request.param, tmp_path_factory.mktemp(f"web-{request.param}"))
    yield t
    drop(t.url)


@pytest.fixture
def app_db(template: Template, tmp_path: Path) -> Iterator[tuple[TestClient, object, Template]]:
    url = template.copy(tmp_path)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "vic", "viewer", PASSWORD)
        auth.add_user(s, "root", "admin", PASSWORD)
    app = create_app(sessions, home=tmp_path / "home")
    with TestClient(app) as client:
        yield client, sessions, template
    drop(url)


def bearer(client: TestClient, user: str = "ana") -> dict[str, str]:
    r = client.post("/api/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def events(sessions) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(ReviewEvent)))


def one_line(r) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, r.text
    return detail


def findings(client, headers, audit_id, **params) -> dict:
    r = client.get(f"/api/audits/{audit_id}/findings", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_findings_carry_class_names_files_and_why(app_db) -> None:
    client, _, t = app_db
    h = bearer(client)
    page = findings(client, h, t.audit_id, limit=5)
    assert page["total"] == 200 and len(page["items"]) == 5
    top = page["items"][0]
    assert top["label_name"] in CLASS_NAMES
    folder, file = top["locator"].split("/")
    assert folder == top["label_name"] and (t.folder / top["locator"]).is_file()
    assert top["suggested_label_name"] in CLASS_NAMES and top["suggested_label_name"] != top["label_name"]
    why = top["why"]
    assert set(why) == {"helpful", "harmful", "nearest"} and why["nearest"]
    assert all((t.folder / r["locator"]).is_file() and r["label_name"] in CLASS_NAMES for r in why["nearest"])
    assert all(r["influence"] < 0 for r in why["helpful"]) and all(r["influence"] > 0 for r in why["harmful"])
    assert top["example_index"] not in {r["index"] for rows in why.values() for r in rows}
    # the picture of the example is served as a PNG
    img = client.get(f"/api/audits/{t.audit_id}/examples/{top['example_index']}/image", headers=h)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_picture_whose_file_is_gone_is_a_one_line_404_and_the_rest_still_works(app_db, tmp_path) -> None:
    client, _, t = app_db
    h = bearer(client)
    items = findings(client, h, t.audit_id, limit=2)["items"]
    gone = t.folder / items[0]["locator"]
    moved = tmp_path / "moved.png"
    gone.rename(moved)
    try:
        r = client.get(f"/api/audits/{t.audit_id}/examples/{items[0]['example_index']}/image", headers=h,
                       params={"key": items[0]["example_key"]})  # fmt: skip
        assert r.status_code == 404 and "no longer in data set" in one_line(r)
        ok = client.get(f"/api/audits/{t.audit_id}/examples/{items[1]['example_index']}/image", headers=h)
        assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"
        assert client.get(f"/api/findings/{items[0]['id']}", headers=h).status_code == 200
    finally:
        moved.rename(gone)


def test_a_class_filter_by_name_or_index_gives_the_same_findings(app_db) -> None:
    client, _, t = app_db
    h = bearer(client)
    by_name = findings(client, h, t.audit_id, label="seven", limit=500)
    index = sorted(CLASS_NAMES).index("seven")  # ImageFolder orders class folders by name
    by_index = findings(client, h, t.audit_id, label=str(index), limit=500)
    assert by_name == by_index and by_name["total"] == len(list((t.folder / "seven").iterdir()))
    assert {i["label_name"] for i in by_name["items"]} == {"seven"} and {i["label"] for i in by_name["items"]} == {index}


def test_decide_change_undo_and_history_under_the_signed_in_user(app_db) -> None:
    client, sessions, t = app_db
    h = bearer(client)
    f = findings(client, h, t.audit_id, limit=1)["items"][0]
    url = f"/api/findings/{f['id']}"
    r = client.post(f"{url}/decision", headers=h, json={"decision": "relabelled", "new_label": "three"})
    assert r.status_code == 200, r.text
    d = r.json()["decision"]
    assert (d["decision"], d["new_label_name"], d["reviewer"], d["version"]) == ("relabelled", "three", "ana", 1)
    r = client.post(f"{url}/decision", headers=h, json={"decision": "dismissed", "expected_version": 1})
    assert r.json()["decision"]["version"] == 2
    r = client.post(f"{url}/undo", headers=h, json={"expected_version": 2})
    assert r.json()["decision"]["decision"] == "relabelled"
    doc = client.get(url, headers=h).json()
    assert [e["decision"] for e in doc["history"]] == ["relabelled", "dismissed", "undone"]
    assert {e["reviewer"] for e in doc["history"]} == {"ana"}
    with sessions() as s:
        user_ids = {e.user_id for e in review_store.list_review_events(s)}
        assert user_ids == {auth.get_user(s, "ana").id}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"decision": "relabelled", "new_label": "eleven"}, 400, "unknown class 'eleven'"),
        ({"decision": "relabelled", "new_label": 10}, 400, "outside the data set's classes"),
        ({"decision": "relabelled", "new_label": -1}, 400, "outside"),
        ({"decision": "relabelled"}, 400, "needs new_label"),
        ({"decision": "dismissed", "new_label": 3}, 400, "takes no new_label"),
        ({"decision": "maybe"}, 422, "decision"),
        ({"decision": "confirmed", "surprise": 1}, 422, "surprise"),
        ({"decision": "confirmed", "expected_version": 0}, 422, "expected_version"),
        ({"decision": "confirmed", "expected_version": 5}, 409, "no decision yet"),
    ],
)
def test_a_bad_decision_is_one_line_and_stores_nothing(app_db, body, status, message) -> None:
    client, sessions, t = app_db
    h = bearer(client)
    f = findings(client, h, t.audit_id, limit=1)["items"][0]
    r = client.post(f"/api/findings/{f['id']}/decision", headers=h, json=body)
    assert r.status_code == status and message in one_line(r)
    assert events(sessions) == 0


def test_malformed_unknown_and_oversized_requests_are_refused(app_db) -> None:
    client, sessions, t = app_db
    h = bearer(client)
    f = findings(client, h, t.audit_id, limit=1)["items"][0]
    r = client.post(f"/api/findings/{f['id']}/decision", headers={**h, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 422 and one_line(r)
    r = client.post("/api/findings/99999999/decision", headers=h, json={"decision": "dismissed"})
    assert r.status_code == 404 and "no finding with id 99999999" in one_line(r)
    r = client.post(f"/api/findings/{2**70}/decision", headers=h, json={"decision": "dismissed"})
    assert r.status_code == 422
    r = client.post(f"/api/findings/{f['id']}/decision", headers=h, json={"decision": "dismissed", "note": "x" * 100_000})
    assert r.status_code == 413 and "larger than" in one_line(r)
    r = client.get("/api/audits/4242", headers=h)
    assert r.status_code == 404 and one_line(r).startswith("no audit with id 4242")
    assert events(sessions) == 0


def test_nobody_anonymous_reads_a_wrong_token_is_refused_and_a_viewer_cannot_decide(app_db) -> None:
    client, sessions, t = app_db
    for path in ("/api/audits", f"/api/audits/{t.audit_id}/findings", f"/api/audits/{t.audit_id}/examples/0/image"):
        r = client.get(path)
        assert r.status_code == 401 and "sign in" in one_line(r)
    r = client.get("/api/audits", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401 and one_line(r) == "invalid or expired token"
    r = client.post("/api/token", json={"username": "ana", "password": "wrong password"})
    assert r.status_code == 401 and one_line(r) == "wrong user name or password"
    viewer = bearer(client, "vic")
    assert client.get("/api/audits", headers=viewer).status_code == 200
    f = findings(client, viewer, t.audit_id, limit=1)["items"][0]
    r = client.post(f"/api/findings/{f['id']}/decision", headers=viewer, json={"decision": "dismissed"})
    assert r.status_code == 403 and "viewer and cannot decide" in one_line(r)
    r = client.post(f"/api/audits/{t.audit_id}/accept-suggested", headers=viewer, json={"top_k": 3})
    assert r.status_code == 403
    assert events(sessions) == 0


def test_an_expired_token_stops_working(app_db) -> None:
    from datetime import timedelta

    client, sessions, _ = app_db
    with sessions() as s, s.begin():
        token = auth.issue_token(s, auth.get_user(s, "ana"), ttl=timedelta(seconds=-1))
    r = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_a_browser_session_must_echo_its_csrf_token_to_decide(app_db) -> None:
    client, sessions, t = app_db
    r = client.post("/login", data={"username": "ana", "password": PASSWORD})
    assert r.status_code == 200 and r.json() == {"name": "ana", "role": "reviewer"}
    assert "auditor_session" in client.cookies
    f = findings(client, {}, t.audit_id, limit=1)["items"][0]
    r = client.post(f"/api/findings/{f['id']}/decision", json={"decision": "dismissed"})
    assert r.status_code == 403 and "CSRF" in one_line(r)
    assert events(sessions) == 0
    page = client.get(f"/audits/{t.audit_id}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    r = client.post(f"/api/findings/{f['id']}/decision", json={"decision": "dismissed"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and events(sessions) == 1


def test_sign_out_needs_the_csrf_token_and_ends_the_session(app_db) -> None:
    client, _, t = app_db
    client.post("/login", data={"username": "ana", "password": PASSWORD})
    page = client.get(f"/audits/{t.audit_id}", headers={"Accept": "text/html"})
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    r = client.post("/logout", data={"csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and client.get("/api/me").status_code == 200
    r = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/api/me").status_code == 401


def test_bulk_accept_confirms_the_top_undecided_and_skips_what_others_decided(app_db) -> None:
    client, sessions, t = app_db
    h = bearer(client)
    top = findings(client, h, t.audit_id, limit=4)["items"]
    client.post(f"/api/findings/{top[1]['id']}/decision", headers=h, json={"decision": "dismissed"})
    r = client.post(f"/api/audits/{t.audit_id}/accept-suggested", headers=h, json={"top_k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["confirmed"] == [top[0]["id"], top[2]["id"], top[3]["id"]]
    r = client.post(f"/api/audits/{t.audit_id}/accept-suggested", headers=h, json={"finding_ids": [top[0]["id"], top[1]["id"]]})
    assert r.json()["confirmed"] == [] and len(r.json()["skipped"]) == 2
    r = client.post(f"/api/audits/{t.audit_id}/accept-suggested", headers=h, json={"top_k": 3, "finding_ids": [1]})
    assert r.status_code == 400 and "exactly one" in one_line(r)
    assert events(sessions) == 4
    confirmed = findings(client, h, t.audit_id, decision="confirmed", limit=500)
    assert {i["id"] for i in confirmed["items"]} == {top[0]["id"], top[2]["id"], top[3]["id"]}


def test_a_decision_is_answered_only_once_it_is_committed(app_db, monkeypatch) -> None:
    """The request's transaction commits before the response is sent: a commit that fails is a
    one-line 503, never a 200 for a decision that was not stored."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import SessionTransaction

    client, sessions, t = app_db
    h = bearer(client)
    f = findings(client, h, t.audit_id, limit=1)["items"][0]
    real_commit = SessionTransaction.commit

    def failing_commit(self, _to_root=False):
        if self.nested:  # savepoints (the decision's own) go through
            return real_commit(self, _to_root)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(SessionTransaction, "commit", failing_commit)
    r = client.post(f"/api/findings/{f['id']}/decision", headers=h, json={"decision": "dismissed"})
    monkeypatch.setattr(SessionTransaction, "commit", real_commit)
    assert r.status_code == 503 and one_line(r).startswith("database error, nothing was stored")
    assert events(sessions) == 0
    r = client.post(f"/api/findings/{f['id']}/decision", headers=h, json={"decision": "dismissed"})
    assert r.status_code == 200 and events(sessions) == 1


def test_pages_need_sign_in_and_show_names_not_indices(app_db) -> None:
    client, _, t = app_db
    html = {"Accept": "text/html"}
    r = client.get(f"/audits/{t.audit_id}", headers=html, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next=/audits/{t.audit_id}"
    r = client.post("/login", data={"username": "ana", "password": "nope", "next": "/"}, headers=html)
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = client.post("/login", data={"username": "ana", "password": PASSWORD, "next": "https://evil.example/"}, headers=html, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never an open redirect
    queue = client.get(f"/audits/{t.audit_id}", headers=html)
    assert queue.status_code == 200 and 'data-testid="card"' in queue.text
    first = findings(client, {}, t.audit_id, limit=1)["items"][0]
    assert first["locator"] in queue.text and f"{first['label_name']}</span> →" in queue.text
    page = client.get(f"/findings/{first['id']}", headers=html)
    assert page.status_code == 200 and first["locator"] in page.text
    assert "Most harmful training examples" in page.text and "Decision history" in page.text


def test_the_openapi_schema_lists_the_api(app_db) -> None:
    client, _, _ = app_db
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/token", "/api/audits", "/api/audits/{audit_id}/findings", "/api/findings/{finding_id}/decision",
            "/api/findings/{finding_id}/undo", "/api/audits/{audit_id}/accept-suggested"} <= paths
    assert not any(p.startswith("/login") for p in paths)


def test_two_apps_in_one_process_each_sign_with_their_own_settings(template: Template, tmp_path: Path) -> None:
    """Settings are read once, by the app factory, and kept by the app: two apps made side by
    side with different keys and homes each use their own, so a cookie one signed is no
    session for the other."""
    from auditor.config import Settings

    url = template.copy(tmp_path)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    first = Settings(home=tmp_path / "a", database_url=url, secret_key="key-of-the-first-app")
    second = Settings(home=tmp_path / "b", database_url=url)  # no key: one generated into its home
    app_a, app_b = create_app(sessions, settings=first), create_app(sessions, settings=second)
    assert app_a.state.settings is first and app_b.state.settings is second
    assert (tmp_path / "b" / "secret_key").is_file() and not (tmp_path / "a").exists()
    def me(app, cookie: str) -> int:
        with TestClient(app, cookies={"auditor_session": cookie}) as c:
            return c.get("/api/me").status_code

    signed: dict[str, str] = {}
    for name, app in (("a", app_a), ("b", app_b)):
        with TestClient(app) as c:
            assert c.post("/login", data={"username": "ana", "password": PASSWORD}).status_code == 200
            signed[name] = c.cookies["auditor_session"]
    assert me(app_a, signed["a"]) == 200 and me(app_b, signed["b"]) == 200
    assert me(app_b, signed["a"]) == 401 and me(app_a, signed["b"]) == 401  # the other app's key
    drop(url)
