"""The CLI speaks in class names and files, keeps the decision history, records decisions under
registered users, and exports a relabel manifest and a corrected ImageFolder tree. Over a real
label check of 28x28 digits in class-named folders."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli
from review_data import CLASS_NAMES, Template, build_template, drop


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Iterator[Template]:
    t = build_template("sqlite", tmp_path_factory.mktemp("cli-names"), n=150)
    yield t
    drop(t.url)


@pytest.fixture
def db(template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Template:
    monkeypatch.setenv("AUDITOR_DATABASE_URL", template.copy(tmp_path))
    return template


def test_findings_list_shows_files_and_class_names_and_filters_by_them(db: Template) -> None:
    rows = cli("findings", "list", str(db.audit_id), "--top", "5", "--json")
    for r in rows:
        assert (db.folder / r["locator"]).is_file()
        assert r["locator"].split("/")[0] == r["label_name"] and r["suggested_label_name"] in CLASS_NAMES
    table = cli("findings", "list", str(db.audit_id), "--top", "5")
    assert rows[0]["locator"] in table and f"({rows[0]['label_name']})" in table
    sevens = cli("findings", "list", str(db.audit_id), "--class", "seven", "--top", "500", "--json")
    assert sevens and {r["label_name"] for r in sevens} == {"seven"}
    assert len(sevens) == len(list((db.folder / "seven").iterdir()))
    page2 = cli("findings", "list", str(db.audit_id), "--top", "3", "--page", "2", "--json")
    first6 = cli("findings", "list", str(db.audit_id), "--top", "6", "--json")
    assert [r["id"] for r in page2] == [r["id"] for r in first6[3:]]
    bad = cli("findings", "list", str(db.audit_id), "--class", "eleven", ok=False)
    assert bad.exit_code != 0 and "unknown class 'eleven'" in bad.stderr


def test_decisions_keep_their_history_and_undo_from_the_cli(db: Template) -> None:
    top = cli("findings", "list", str(db.audit_id), "--top", "1", "--json")[0]
    fid = str(top["id"])
    cli("review", "decide", fid, "--relabel", "seven", "--reviewer", "ana", "--json")
    cli("review", "decide", fid, "--dismiss", "--reviewer", "bo", "--version", "1", "--json")
    undone = cli("review", "undo", fid, "--reviewer", "bo", "--json")
    assert (undone["decision"], undone["new_label"]) == ("relabelled", sorted(CLASS_NAMES).index("seven"))
    shown = cli("findings", "show", fid, "--json")
    assert [(e["decision"], e["reviewer"]) for e in shown["history"]] == [
        ("relabelled", "ana"), ("dismissed", "bo"), ("undone", "bo"),
    ]
    assert shown["decision"]["new_label_name"] == "seven"
    assert [e["label_name"] for e in shown["history"]] == ["seven", None, None]
    text = cli("findings", "show", fid)
    assert top["locator"] in text and "relabelled -> " in text and "(seven)" in text
    undecided = cli("findings", "list", str(db.audit_id), "--decision", "relabelled", "--json")
    assert [r["id"] for r in undecided] == [top["id"]]


def test_once_users_exist_cli_decisions_need_a_registered_reviewer(db: Template, monkeypatch) -> None:
    top = cli("findings", "list", str(db.audit_id), "--top", "2", "--json")
    cli("user", "add", "ana", "--role", "reviewer", "--password", "long enough", "--json")
    cli("user", "add", "vic", "--role", "viewer", "--password", "long enough")
    stranger = cli("review", "decide", str(top[0]["id"]), "--dismiss", "--reviewer", "mallory", ok=False)
    assert stranger.exit_code != 0 and "'mallory' is not a registered user" in stranger.stderr
    viewer = cli("review", "decide", str(top[0]["id"]), "--dismiss", "--reviewer", "vic", ok=False)
    assert viewer.exit_code != 0 and "viewer and cannot decide" in viewer.stderr
    monkeypatch.setenv("AUDITOR_REVIEWER_PASSWORD", "long enough")  # and prove it (test_small_holes.py)
    ok = cli("review", "decide", str(top[0]["id"]), "--dismiss", "--reviewer", "ana", "--json")
    assert ok["reviewer"] == "ana"
    users = cli("user", "list", "--json")
    assert [(u["name"], u["role"]) for u in users] == [("ana", "reviewer"), ("vic", "viewer")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "add", "ana", "--role", "boss", "--password", "long enough"], "role must be one of viewer, reviewer, admin"),
        (["user", "add", "ana", "--password", "short"], "at least 8 characters"),
        (["user", "add", "a/b", "--password", "long enough"], "user name 'a/b' is not allowed"),
        (["user", "passwd", "nobody", "--password", "long enough"], "no user named 'nobody'"),
    ],
)
def test_bad_user_commands_are_one_line(db: Template, args, message) -> None:
    result = cli(*args, ok=False)
    assert result.exit_code != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert cli("user", "list", "--json") == []


def test_a_second_user_with_the_same_name_is_refused(db: Template) -> None:
    cli("user", "add", "ana", "--password", "long enough")
    again = cli("user", "add", "ana", "--password", "long enough", ok=False)
    assert again.exit_code != 0 and "user 'ana' already exists" in again.stderr


def test_export_writes_names_files_a_relabel_manifest_and_a_corrected_tree(db: Template, tmp_path: Path) -> None:
    top = cli("findings", "list", str(db.audit_id), "--top", "3", "--json")
    cli("review", "decide", str(top[0]["id"]), "--confirm", "--reviewer", "ana")
    cli("review", "decide", str(top[1]["id"]), "--relabel", "zero", "--reviewer", "ana")
    cli("review", "decide", str(top[2]["id"]), "--dismiss", "--reviewer", "ana")
    out = tmp_path / "labels.csv"
    cli("findings", "export", str(db.audit_id), "--out", str(out))
    rows = {r["locator"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 150
    assert rows[top[1]["locator"]]["corrected_class"] == "zero"
    assert rows[top[0]["locator"]]["corrected_class"] == top[0]["suggested_label_name"]
    assert rows[top[2]["locator"]]["corrected_class"] == top[2]["label_name"]

    manifest = tmp_path / "manifest.json"
    tree = tmp_path / "corrected"
    doc = cli("findings", "export", str(db.audit_id), "--out", str(manifest), "--manifest", "--corrected-tree", str(tree), "--json")
    changes = json.loads(manifest.read_text())
    assert {(c["path"], c["old_class"], c["new_class"], c["reviewer"]) for c in changes} == {
        (top[0]["locator"], top[0]["label_name"], top[0]["suggested_label_name"], "ana"),
        (top[1]["locator"], top[1]["label_name"], "zero", "ana"),
    } and all(c["time"] for c in changes)
    assert doc["moved"] == 2
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.png"))
    assert len(files) == 150
    name0 = Path(top[0]["locator"]).name
    assert f"{top[0]['suggested_label_name']}/{name0}" in files and top[0]["locator"] not in files
    assert f"zero/{Path(top[1]['locator']).name}" in files
    assert top[2]["locator"] in files  # dismissed: stays where it was
    again = cli("findings", "export", str(db.audit_id), "--out", str(manifest), "--corrected-tree", str(tree), ok=False)
    assert again.exit_code != 0 and "exists; give a new folder" in again.stderr


def test_the_html_report_names_files_and_classes(db: Template, tmp_path: Path) -> None:
    top = cli("findings", "list", str(db.audit_id), "--top", "1", "--json")[0]
    out = tmp_path / "report.html"
    cli("report", str(db.audit_id), "--out", str(out))
    text = out.read_text()
    assert f"#1 {top['locator']}" in text
    assert f"{top['label_name']} → {top['suggested_label_name']}" in text
