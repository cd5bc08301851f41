from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.config import get_settings
from auditor.data.bundled import flip_labels, wine, write_npz
from auditor.store import datasets as dataset_store
from auditor.store import open_store

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def wine_npz(tmp_path: Path) -> Path:
    return write_npz(wine(), tmp_path / "data" / "wine.npz")


def _counts() -> tuple[int, int]:
    with open_store()() as s:
        datasets = dataset_store.list_datasets(s)
        return len(datasets), sum(len(dataset_store.list_snapshots(s, d.id)) for d in datasets)


def test_add_then_list_as_json(wine_npz: Path, isolated_home: Path) -> None:
    added = _run("dataset", "add", "wine", str(wine_npz), "--json")
    assert added.exit_code == 0, added.stderr
    doc = json.loads(added.stdout)
    assert doc["created"] and doc["dataset"]["n"] == 178 and doc["diff"]["added"] == 178
    assert doc["dataset"]["source_path"] == str(wine_npz.resolve())
    assert (isolated_home / "auditor.db").exists()  # embedded default, no `db upgrade` needed

    listed = _run("dataset", "list", "--json")
    assert listed.exit_code == 0
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["format"], row["n"]) == ("wine", "npz", 178)
    assert "wine" in _run("dataset", "list").stdout


def test_adding_a_taken_name_fails_and_writes_nothing(wine_npz: Path, tmp_path: Path) -> None:
    assert _run("dataset", "add", "wine", str(wine_npz)).exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text("a,label\n1,0\n")
    result = _run("dataset", "add", "wine", str(other), "--json")
    assert result.exit_code != 0 and result.stdout == ""
    assert "dataset 'wine' already exists; pass --update" in result.stderr
    assert _counts() == (1, 1)
    with open_store()() as s:
        assert dataset_store.get_dataset(s, "wine").format == "npz"


def test_update_and_scan_report_what_changed(wine_npz: Path) -> None:
    assert _run("dataset", "add", "wine", str(wine_npz)).exit_code == 0
    noisy, _ = flip_labels(wine(), 0.05, seed=0)  # 9 labels flipped in place
    write_npz(noisy, wine_npz)
    scanned = _run("dataset", "scan", "wine", "--json")
    assert scanned.exit_code == 0, scanned.stderr
    diff = json.loads(scanned.stdout)["diff"]
    assert (diff["added"], diff["changed"], diff["removed"]) == (0, 9, 0)
    again = _run("dataset", "scan", "wine")
    assert "unchanged" in again.stdout

    fewer = noisy.__class__(x=noisy.x[:170], y=noisy.y[:170], keys=noisy.keys[:170])
    write_npz(fewer, wine_npz)
    updated = _run("dataset", "add", "wine", str(wine_npz), "--update", "--json")
    assert updated.exit_code == 0
    doc = json.loads(updated.stdout)
    assert not doc["created"] and doc["diff"]["removed"] == 8 and doc["dataset"]["n"] == 170
    assert _counts() == (1, 3)


def test_show_lists_snapshots_and_label_counts(wine_npz: Path) -> None:
    _run("dataset", "add", "wine", str(wine_npz))
    shown = _run("dataset", "show", "wine", "--json")
    doc = json.loads(shown.stdout)
    assert doc["label_counts"] == {"0": 59, "1": 71, "2": 48}
    assert len(doc["snapshots"]) == 1 and doc["reviewed"] == 0
    assert "59" in _run("dataset", "show", "wine").stdout
    missing = _run("dataset", "show", "nope")
    assert missing.exit_code != 0 and "no dataset named 'nope'" in missing.stderr


def test_csv_options_are_kept_for_rescans(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,f,y\nA,1.5,cat\nB,2.5,dog\n")
    added = _run(
        "dataset", "add", "t", str(path), "--label-column", "y", "--group-column", "site", "--json"
    )
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["dataset"]["options"] == {
        "label_column": "y",
        "group_column": "site",
    }
    path.write_text("site,f,y\nA,1.5,cat\nB,2.5,dog\nC,0.5,dog\n")
    diff = json.loads(_run("dataset", "scan", "t", "--json").stdout)["diff"]
    assert (diff["added"], diff["unchanged"]) == (1, 2)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.write_text("a,b\n1,2\n"), "no label column 'label'"),
        (lambda p: p.write_text("a,label\nx,1\n"), "column 'a' is not numeric"),
    ],
)
def test_unreadable_sources_fail_without_registering(tmp_path: Path, setup, message: str) -> None:
    path = tmp_path / "bad.csv"
    setup(path)
    result = _run("dataset", "add", "bad", str(path))
    assert result.exit_code != 0 and message in result.stderr
    assert _counts() == (0, 0)


def test_images_folder_can_be_added_with_resize(tmp_path: Path) -> None:
    from PIL import Image

    for name, size in (("a/1.png", (4, 4)), ("b/2.png", (6, 6))):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(tmp_path / "img" / name)
    refused = _run("dataset", "add", "img", str(tmp_path / "img"))
    assert refused.exit_code != 0 and "pass --resize" in refused.stderr
    added = _run("dataset", "add", "img", str(tmp_path / "img"), "--resize", "4x4", "--json")
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["dataset"]["format"] == "imagefolder"


def test_a_down_database_is_one_line_and_non_zero(
    wine_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_DATABASE_URL", "postgresql+psycopg://postgres:pw@127.0.0.1:1/x")
    result = _run("dataset", "list", "--json")
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach database at ")
    assert "pw" not in lines[0] and "127.0.0.1" in lines[0]
    assert _run("dataset", "add", "wine", str(wine_npz)).exit_code != 0


def test_db_upgrade_and_current(isolated_home: Path) -> None:
    upgraded = _run("db", "upgrade", "--json")
    assert upgraded.exit_code == 0, upgraded.stderr
    doc = json.loads(upgraded.stdout)
    assert doc["revision"] == doc["head"]
    current = json.loads(_run("db", "current", "--json").stdout)
    assert current["up_to_date"] and current["database"] == get_settings().database_url


@pytest.mark.services
def test_postgres_needs_an_explicit_upgrade_then_works(
    wine_npz: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_DATABASE_URL", pg_url)
    current = json.loads(_run("db", "current", "--json").stdout)
    assert current["revision"] is None and not current["up_to_date"]
    refused = _run("dataset", "add", "wine", str(wine_npz))
    assert refused.exit_code != 0 and "run `auditor db upgrade`" in refused.stderr
    assert _run("db", "upgrade").exit_code == 0
    added = _run("dataset", "add", "wine", str(wine_npz), "--json")
    assert added.exit_code == 0, added.stderr
    assert json.loads(_run("dataset", "list", "--json").stdout)[0]["n"] == 178
