"""Sign-in attempts are limited per user name and per client address: after the configured
number of failures within the window, `POST /login` and `POST /api/token` answer 429 with
Retry-After, the right password included, until the window has passed. The failures are rows of
the database, so two app servers over one database count them together. No transaction is open
while a password is hashed, so on SQLite sign-ins never hold the write lock that every other
request needs. On SQLite and PostgreSQL, through the app and a real `auditor serve`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import wait_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor import auth
from auditor.config import Settings
from auditor.store.db import session_factory
from auditor.store.migrate import upgrade
from auditor.store.models import LoginFailure, WebSession
from auditor.web.app import create_app

PASSWORD = "correct horse"
WINDOW = 1.5  # seconds: tiny, so the test can wait it out


@pytest.fixture
def store(db_url: str) -> Iterator[tuple[sessionmaker[Session], str]]:
    upgrade(db_url)
    sessions = session_factory(db_url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "vic", "viewer", PASSWORD)
    yield sessions, db_url
    sessions.kw["bind"].dispose()


def make_app(store, tmp_path: Path, max_failures: int = 3, window: float = WINDOW):
    sessions, url = store
    settings = Settings(
        home=tmp_path / "home",
        database_url=url,
        secret_key="k",
        login_max_failures=max_failures,
        login_window=window,
    )
    return create_app(sessions, settings=settings)


def client(app, address: str = "10.0.0.1") -> TestClient:
    return TestClient(app, client=(address, 40000))


def login(c: TestClient, user: str = "ana", password: str = PASSWORD):
    return c.post("/login", data={"username": user, "password": password})


def token(c: TestClient, user: str = "ana", password: str = PASSWORD):
    return c.post("/api/token", json={"username": user, "password": password})


def failures(store) -> int:
    with store[0]() as s:
        return int(s.scalar(select(func.count()).select_from(LoginFailure)))


def assert_locked(r) -> int:
    assert r.status_code == 429, r.text
    detail = r.json()["detail"]
    assert detail.startswith("too many failed sign-ins") and "\n" not in detail
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= WINDOW + 1
    return retry


@pytest.mark.parametrize("door", [login, token], ids=["login", "api-token"])
def test_after_n_failures_a_name_is_locked_the_right_password_too_until_the_window_passes(
    store, tmp_path, door
) -> None:
    app = make_app(store, tmp_path)
    c = client(app)
    assert [door(c, password="wrong password").status_code for _ in range(3)] == [401, 401, 401]
    assert_locked(door(c))  # the right password does not work while locked
    assert_locked(login(client(app, "10.9.9.9")))  # nor from another address: the name is locked
    assert_locked(token(client(app, "10.9.9.9")))
    # refused attempts are not counted: hammering cannot extend the lock
    assert failures(store) == 3
    with store[0]() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0
    assert login(client(app), "vic").status_code == 429  # the address is at its limit as well
    # another name from elsewhere: fine
    assert login(client(app, "10.9.9.9"), "vic").status_code == 200
    time.sleep(WINDOW + 0.2)
    assert door(c).status_code == 200


def test_failures_from_one_address_lock_it_for_every_name(store, tmp_path) -> None:
    app = make_app(store, tmp_path)
    attacker = client(app, "10.6.6.6")
    for name in ("alice", "bob", "carol"):  # names that do not exist count the same
        assert login(attacker, name, "guess").status_code == 401
    assert_locked(login(attacker))
    assert_locked(token(attacker, "vic"))
    assert login(client(app, "10.0.0.2")).status_code == 200


def test_the_sign_in_page_says_when_to_try_again(store, tmp_path) -> None:
    app = make_app(store, tmp_path, max_failures=1)
    c = client(app)
    html = {"Accept": "text/html"}
    assert (
        c.post("/login", data={"username": "ana", "password": "nope"}, headers=html).status_code
        == 401
    )
    r = c.post(
        "/login",
        data={"username": "ana", "password": PASSWORD},
        headers=html,
        follow_redirects=False,
    )
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert 'data-testid="login-locked"' in r.text and "try again in" in r.text


def test_app_servers_sharing_a_database_count_failures_together(store, tmp_path) -> None:
    first, second = make_app(store, tmp_path / "a"), make_app(store, tmp_path / "b")
    for app in (first, second, first):
        assert login(client(app), password="wrong password").status_code == 401
    assert_locked(login(client(second)))


def test_failures_older_than_the_window_are_forgotten_and_deleted(store, tmp_path) -> None:
    app = make_app(store, tmp_path, max_failures=2, window=0.5)
    c = client(app)
    assert login(c, password="wrong password").status_code == 401
    time.sleep(0.7)
    assert login(c, password="wrong password").status_code == 401
    assert failures(store) == 1  # the first one was out of the window and is gone
    assert login(c).status_code == 200


def test_sign_in_limits_are_read_from_the_environment(monkeypatch) -> None:
    from auditor.config import get_settings
    from auditor.errors import ServiceError

    monkeypatch.setenv("AUDITOR_LOGIN_MAX_FAILURES", "4")
    monkeypatch.setenv("AUDITOR_LOGIN_WINDOW", "60")
    limits = auth.LoginLimits.from_settings(get_settings())
    assert limits.max_failures == 4 and limits.window.total_seconds() == 60
    defaults = Settings(home=Path("/tmp"), database_url="sqlite://")
    assert (defaults.login_max_failures, defaults.login_window) == (10, 900)
    for name, bad in (
        ("AUDITOR_LOGIN_MAX_FAILURES", "0"),
        ("AUDITOR_LOGIN_MAX_FAILURES", "ten"),
        ("AUDITOR_LOGIN_WINDOW", "-1"),
    ):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ServiceError, match=name):
            get_settings()
        monkeypatch.delenv(name)


# ---- the write lock ---------------------------------------------------------------------------
def test_a_password_is_never_hashed_while_the_sqlite_write_lock_is_held(
    sqlite_url, tmp_path, monkeypatch
) -> None:
    """While each sign-in hashes its password (right or wrong, /login or /api/token), another
    connection can take SQLite's write lock at once (busy timeout 0)."""
    import sqlite3

    upgrade(sqlite_url)
    store = session_factory(sqlite_url), sqlite_url
    with store[0]() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    app = make_app(store, tmp_path, max_failures=100)
    path = sqlite_url.removeprefix("sqlite:///")
    real_verify = auth.verify_password
    lock_free: list[bool] = []

    def verify_and_probe(password: str, stored: str) -> bool:
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            lock_free.append(True)
        except sqlite3.OperationalError:  # database is locked
            lock_free.append(False)
        finally:
            probe.close()
        return real_verify(password, stored)

    monkeypatch.setattr(auth, "verify_password", verify_and_probe)
    c = client(app)
    assert login(c, password="wrong password").status_code == 401
    assert login(c, "nobody", "wrong password").status_code == 401
    assert login(c).status_code == 200
    assert token(c).status_code == 200
    assert lock_free == [True, True, True, True]
    store[0].kw["bind"].dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_other_requests_stay_fast_while_four_clients_guess_passwords(sqlite_url, tmp_path) -> None:
    """The red team's load, bounded: a real `auditor serve` on SQLite, four threads sending
    wrong passwords for 4 s, and meanwhile a client whose requests each take the write lock
    (every request's unit of work does on SQLite): none of its requests waits 5 s, and at least
    eight get through (before, with the hash under the lock: two, 3.8 s each)."""
    upgrade(sqlite_url)
    sessions = session_factory(sqlite_url)
    with sessions() as s, s.begin():
        user = auth.add_user(s, "ana", "reviewer", PASSWORD)
        bearer = auth.issue_token(s, user)
    sessions.kw["bind"].dispose()
    port = free_port()
    env = {**os.environ, "AUDITOR_DATABASE_URL": sqlite_url, "AUDITOR_HOME": str(tmp_path / "home"),
           "AUDITOR_LOGIN_MAX_FAILURES": "100000"}  # fmt: skip
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("auditor")), "serve", "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/login", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "auditor serve to answer")
        stop = time.monotonic() + 4.0
        attempts: list[int] = []

        def guess() -> None:
            with httpx.Client(base_url=base, timeout=30) as h:
                while time.monotonic() < stop:
                    attempts.append(
                        h.post(
                            "/api/token", json={"username": "ana", "password": "wrong guess"}
                        ).status_code
                    )

        attackers = [threading.Thread(target=guess) for _ in range(4)]
        for t in attackers:
            t.start()
        waits: list[float] = []
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {bearer}"}
        ) as h:
            time.sleep(0.3)
            while time.monotonic() < stop:
                started = time.monotonic()
                assert h.get("/api/me").status_code == 200
                waits.append(time.monotonic() - started)
        for t in attackers:
            t.join()
        assert attempts and set(attempts) == {401}
        assert len(waits) >= 8 and max(waits) < 5.0, (max(waits), len(waits), len(attempts))
        waits.sort()
        print(f"\n{len(attempts)} wrong guesses; /api/me p50 {waits[len(waits) // 2] * 1000:.0f} ms, "
              f"max {waits[-1] * 1000:.0f} ms over {len(waits)} requests")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
