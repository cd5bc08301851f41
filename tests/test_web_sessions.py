"""Sessions that end: a browser session lives on the server, so signing out, a new password, a
new role or removing the user ends it at once, a copy of the cookie included; a removed user's
id never goes to the next user; the cookie can be Secure; every response carries strict
headers; another site's page cannot sign a visitor in. On SQLite and PostgreSQL, through the
app (Starlette's TestClient), the CLI (in process) and a real `auditor serve`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import cli, wait_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor import auth
from auditor.config import Settings
from auditor.store import users as user_store
from auditor.store.db import make_engine, session_factory
from auditor.store.migrate import upgrade
from auditor.store.models import ApiToken, LoginFailure, WebSession
from auditor.web.app import create_app
from auditor.web.security import secure_cookies_default

PASSWORD = "correct horse"


@pytest.fixture
def app_url(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[sessionmaker[Session], str]]:
    """A migrated database with a reviewer and a viewer; the CLI in this process uses it too."""
    upgrade(db_url)
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    sessions = session_factory(db_url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "vic", "viewer", PASSWORD)
    yield sessions, db_url
    sessions.kw["bind"].dispose()


def make_app(sessions: sessionmaker[Session], url: str, tmp_path: Path, **kwargs: object):
    settings = Settings(home=tmp_path / "home", database_url=url, secret_key="test-key")
    return create_app(sessions, settings=settings, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def app(app_url, tmp_path):
    sessions, url = app_url
    return make_app(sessions, url, tmp_path)


def signed_in(app, user: str = "ana") -> TestClient:
    client = TestClient(app)
    r = client.post("/login", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return client


def cookie_of(client: TestClient) -> str:
    return client.cookies["auditor_session"]


def me(app, cookie: str) -> int:
    """/api/me's status for a browser holding only `cookie` (a copy of someone's cookie)."""
    with TestClient(app, cookies={"auditor_session": cookie}) as c:
        return c.get("/api/me").status_code


def csrf_of(client: TestClient) -> str:
    page = client.get("/login", headers={"Accept": "text/html"})
    return page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def count(sessions, model) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


# ---- a removed user's session never becomes the next user ---------------------------------------
def test_a_removed_users_cookie_does_not_sign_in_the_next_user_added(app, app_url) -> None:
    """The red team's case: a viewer's cookie, `user remove` the viewer, `user add boss --role
    admin`; the old cookie must not answer as boss."""
    sessions, _ = app_url
    viewer = signed_in(app, "vic")
    cookie = cookie_of(viewer)
    assert viewer.get("/api/me").json()["name"] == "vic"
    cli("user", "remove", "vic")
    cli("user", "add", "boss", "--role", "admin", "--password", PASSWORD)
    assert me(app, cookie) == 401
    assert viewer.get("/api/me").status_code == 401
    with sessions() as s:
        assert auth.get_user(s, "boss").role == "admin"


def test_user_ids_are_never_reused_even_after_removing_the_newest(app_url) -> None:
    sessions, _ = app_url
    first = cli("user", "add", "newest", "--role", "viewer", "--password", PASSWORD, "--json")
    cli("user", "remove", "newest")
    second = cli("user", "add", "boss", "--role", "admin", "--password", PASSWORD, "--json")
    assert second["id"] > first["id"]


def test_the_autoincrement_rebuild_of_users_keeps_every_row_that_points_at_a_user(
    sqlite_url: str,
) -> None:
    """Migration 0007 rebuilds SQLite's users table; with foreign keys on, dropping the old one
    would delete the tokens (CASCADE) and null review_events.user_id (SET NULL)."""
    upgrade(sqlite_url, "0006")
    engine = make_engine(sqlite_url)
    stamp = "'2026-12-01 00:00:00'"
    with engine.begin() as c:
        for sql in (
            f"INSERT INTO users (name, role, password_hash, created_at) VALUES ('ana', 'reviewer', 'x', {stamp}), "
            f"('bob', 'admin', 'x', {stamp})",
            f"INSERT INTO api_tokens (user_id, token_hash, created_at, expires_at) VALUES (2, 'h', {stamp}, {stamp})",
            f"INSERT INTO datasets (name, source_path, format, options, created_at) VALUES ('d', '/d', 'npz', '{{}}', {stamp})",
            "INSERT INTO review_events (dataset_id, example_key, decision, reviewer, user_id, created_at) VALUES "
            f"(1, 'k1', 'dismissed', 'ana', 1, {stamp}), (1, 'k2', 'confirmed', 'bob', 2, {stamp})",
        ):
            c.exec_driver_sql(sql)
    engine.dispose()
    assert upgrade(sqlite_url) == "0007"
    engine = make_engine(sqlite_url)
    with engine.begin() as c:
        assert c.exec_driver_sql(
            "SELECT example_key, user_id FROM review_events ORDER BY id"
        ).all() == [("k1", 1), ("k2", 2)]
        assert c.exec_driver_sql("SELECT user_id FROM api_tokens").all() == [(2,)]
        assert c.exec_driver_sql("SELECT id, name FROM users ORDER BY id").all() == [
            (1, "ana"),
            (2, "bob"),
        ]
        assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert (
            "AUTOINCREMENT"
            in c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'users'").scalar()
        )
    engine.dispose()


# ---- sessions end --------------------------------------------------------------------------------
def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(app, app_url) -> None:
    sessions, _ = app_url
    client = signed_in(app)
    other = signed_in(app)  # the same user in a second browser keeps working
    copied = cookie_of(client)
    r = client.post("/logout", data={"csrf_token": csrf_of(client)}, follow_redirects=False)
    assert r.status_code == 303
    assert me(app, copied) == 401
    assert other.get("/api/me").status_code == 200
    assert count(sessions, WebSession) == 1


@pytest.mark.parametrize(
    "change",
    [
        ("user", "passwd", "ana", "--password", "a new password"),
        ("user", "role", "ana", "viewer"),
        ("user", "remove", "ana"),
    ],
    ids=["passwd", "role", "remove"],
)
def test_a_new_password_role_or_removal_ends_every_session_and_token_of_the_user(
    app, app_url, change
) -> None:
    sessions, _ = app_url
    cookies = [cookie_of(signed_in(app)) for _ in range(2)]
    token = (
        TestClient(app)
        .post("/api/token", json={"username": "ana", "password": PASSWORD})
        .json()["access_token"]
    )
    bystander = cookie_of(signed_in(app, "vic"))
    assert [me(app, c) for c in cookies] == [200, 200]
    cli(*change)
    assert [me(app, c) for c in cookies] == [401, 401]
    with TestClient(app) as c:
        assert c.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert me(app, bystander) == 200  # only that user's sessions end
    with sessions() as s:
        ana = user_store.find_user(s, "ana")
        if ana is not None:
            assert user_store.count_web_sessions(s, ana) == 0
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_a_role_change_takes_effect_on_the_next_sign_in(app) -> None:
    cli("user", "role", "vic", "reviewer")
    client = signed_in(app, "vic")
    assert client.get("/api/me").json() == {"name": "vic", "role": "reviewer", "can_decide": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [(("vic", "boss"), "role must be one of"), (("nobody", "admin"), "no user named 'nobody'")],
    ids=["unknown-role", "unknown-user"],
)
def test_a_role_change_to_an_unknown_role_or_user_is_one_line_and_changes_nothing(
    app, app_url, args, message
) -> None:
    sessions, _ = app_url
    cookie = cookie_of(signed_in(app, "vic"))
    result = cli("user", "role", *args, ok=False)
    assert result.exit_code != 0
    err = result.stderr.strip()
    assert message in err and "\n" not in err
    assert me(app, cookie) == 200
    with sessions() as s:
        assert auth.get_user(s, "vic").role == "viewer"


def test_a_session_that_expired_on_the_server_stops_working(app, app_url) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    sessions, _ = app_url
    cookie = cookie_of(signed_in(app))
    with sessions() as s, s.begin():
        s.execute(update(WebSession).values(expires_at=auth.utcnow() - timedelta(seconds=1)))
    assert me(app, cookie) == 401


# ---- Secure cookies ----------------------------------------------------------------------------
def test_the_session_cookie_is_secure_only_when_asked(app_url, tmp_path) -> None:
    sessions, url = app_url
    for secure in (True, False):
        app = make_app(sessions, url, tmp_path, secure_cookies=secure)
        with TestClient(app, base_url="https://testserver") as c:
            r = c.post("/login", data={"username": "ana", "password": PASSWORD})
            set_cookie = r.headers["set-cookie"].lower()
            assert "httponly" in set_cookie and "samesite=strict" in set_cookie
            assert ("; secure" in set_cookie) is secure
            assert c.get("/api/me").status_code == 200  # sent back over https


@pytest.mark.parametrize(
    ("host", "secure"),
    [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False), ("[::1]", False), ("localhost", False),
     ("0.0.0.0", True), ("::", True), ("10.1.2.3", True), ("review.example.org", True)],
)  # fmt: skip
def test_secure_cookies_are_on_by_default_unless_the_host_is_loopback(
    host: str, secure: bool
) -> None:
    assert secure_cookies_default(host) is secure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_auditor_serve_with_secure_cookies_marks_the_cookie_and_sends_the_headers(
    sqlite_url, tmp_path
) -> None:
    """A real `auditor serve --secure-cookies` on 127.0.0.1 (loopback, so off without the flag)."""
    sessions = session_factory(sqlite_url)
    upgrade(sqlite_url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    sessions.kw["bind"].dispose()
    port = free_port()
    env = {**os.environ, "AUDITOR_DATABASE_URL": sqlite_url, "AUDITOR_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("auditor")), "serve", "--port", str(port), "--secure-cookies"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/login", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "auditor serve to answer")
        r = httpx.post(base + "/login", data={"username": "ana", "password": PASSWORD}, timeout=10)
        assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()
        assert_strict_headers(r)
        assert "Secure" in log.read_text()  # it says so when it starts
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- strict headers ---------------------------------------------------------------------------------
def assert_strict_headers(r) -> str:
    """The four headers; returns the policy's nonce."""
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    script = next(d for d in policy.split("; ") if d.startswith("script-src "))
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    return re.search(r"'nonce-([^']+)'", script).group(1)


def test_every_response_carries_strict_headers_with_a_fresh_nonce(app) -> None:
    client = signed_in(app)
    token = (
        TestClient(app)
        .post("/api/token", json={"username": "ana", "password": PASSWORD})
        .json()["access_token"]
    )
    responses = [
        client.get("/login", headers={"Accept": "text/html"}),  # a page
        client.get("/", headers={"Accept": "text/html"}),
        client.get("/api/me"),  # the API
        TestClient(app).get("/api/me"),  # 401
        client.get("/api/audits/99999", headers={"Authorization": f"Bearer {token}"}),  # 404
        client.get("/static/app.css"),  # a static file
        client.post(
            "/api/token", content=b"x" * (65 * 1024), headers={"Content-Type": "application/json"}
        ),  # 413
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 401, 404, 200, 413]
    nonces = [assert_strict_headers(r) for r in responses]
    assert len(set(nonces)) == len(nonces)


def test_the_inline_handlers_of_the_templates_are_allowed_by_hash_and_nothing_else_inline(
    app,
) -> None:
    """Pages keep working under the policy: each `on...=` handler in a template has its hash in
    script-src (the pages' inline `<script>` blocks carry the nonce instead)."""
    import base64
    import hashlib

    from auditor.web.templating import HERE

    policy = TestClient(app).get("/login").headers["content-security-policy"]
    handlers = {
        m
        for p in (HERE / "templates").glob("*.html")
        for m in re.findall(r'\son[a-z]+="([^"]*)"', p.read_text())
    }
    assert handlers  # the queue's and the example page's picture fallbacks, at least
    for h in handlers:
        digest = base64.b64encode(hashlib.sha256(h.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    inline = [
        m
        for p in (HERE / "templates").glob("*.html")
        for m in re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", p.read_text())
    ]
    assert all('type="application/json"' in attrs or "csp_nonce" in attrs for attrs in inline), (
        inline
    )


# ---- login CSRF ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/attack.html"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
        {"Origin": "http://testserver.evil.example"},
    ],
    ids=["origin", "null-origin", "referer", "sec-fetch-site", "look-alike"],
)
def test_a_sign_in_posted_by_another_sites_page_is_refused(app, app_url, headers) -> None:
    sessions, _ = app_url
    client = TestClient(app)
    for accept in ("application/json", "text/html"):
        r = client.post("/login", data={"username": "ana", "password": PASSWORD}, headers={**headers, "Accept": accept},
                        follow_redirects=False)  # fmt: skip
        assert r.status_code == 403
        assert "auditor_session" not in r.headers.get("set-cookie", "")
    assert client.get("/api/me").status_code == 401
    assert count(sessions, WebSession) == 0 and count(sessions, LoginFailure) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Referer": "http://testserver/login?next=/"},
        {"Origin": "https://review.example.org", "X-Forwarded-Host": "review.example.org"},
        {},  # a script: no browser headers at all
    ],
    ids=["same-origin", "referer", "behind-a-proxy", "script"],
)
def test_a_sign_in_from_the_apps_own_page_goes_through(app, headers) -> None:
    client = TestClient(app)
    r = client.post("/login", data={"username": "ana", "password": PASSWORD}, headers=headers)
    assert r.status_code == 200 and client.get("/api/me").status_code == 200
