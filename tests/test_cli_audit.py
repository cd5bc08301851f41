"""The audit, findings and review commands on the embedded default: SQLite under a temporary
AUDITOR_HOME, no broker; audits run in process."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.store import audits as audit_store
from auditor.store import open_store
from tests.helpers import cli

runner = CliRunner()
N = 150


run = cli


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    d = digits()
    path = write_npz(
        Examples(x=d.x[:N], y=d.y[:N], keys=d.keys[:N], is_image=True), tmp_path / "d.npz"
    )
    run("dataset", "add", "small", str(path))
    return "small"


@pytest.fixture
def audit(dataset: str) -> dict[str, Any]:
    """A finished label check of the small dataset (the `audit run --json` document)."""
    return run("audit", "run", "label-check", dataset, "--json")


def _audit_count() -> int:
    with open_store()() as s:
        return len(audit_store.list_audits(s))


def test_run_prints_one_json_document_with_findings(audit: dict[str, Any]) -> None:
    assert audit["status"] == "succeeded" and audit["findings"] == N
    assert audit["kind"] == "label-check" and audit["dataset"] == "small"
    assert audit["progress"] == 1.0 and audit["error"] is None
    assert audit["summary"]["n"] == N
    top = audit["top"]
    assert len(top) == 10 and [r["rank"] for r in top] == list(range(1, 11))
    assert top[0]["score"] >= top[-1]["score"]

    listed = run("audit", "list", "--json")
    assert [(d["id"], d["status"]) for d in listed] == [(audit["id"], "succeeded")]
    status = run("audit", "status", str(audit["id"]), "--json")
    assert status["status"] == "succeeded" and status["finished_at"] is not None
    assert "succeeded" in run("audit", "status", str(audit["id"]))
    missing = run("audit", "status", "999", ok=False)
    assert missing.exit_code != 0 and "no audit with id 999" in missing.stderr


def test_status_says_which_ranking_the_label_check_used_and_why(audit: dict[str, Any]) -> None:
    summary = audit["summary"]
    assert summary["rank_by_requested"] == "auto" and summary["rank_by"] in ("margin", "self-influence")
    shown = " ".join(run("audit", "status", str(audit["id"])).split())
    assert f"ranked by {summary['rank_by']}:" in shown


def test_findings_rows_carry_the_contract_fields(audit: dict[str, Any]) -> None:
    rows = run("findings", "list", str(audit["id"]), "--top", "25", "--json")
    assert len(rows) == 25
    for row in rows:
        assert {"id", "example_index", "example_key", "score", "rank", "label"} <= row.keys()
        assert 0 <= row["example_index"] < N and isinstance(row["label"], int)
    assert [r["rank"] for r in rows] == list(range(1, 26))
    everything = run("findings", "list", str(audit["id"]), "--top", str(N + 5), "--json")
    assert len(everything) == N and len({r["example_key"] for r in everything}) == N
    shown = run("findings", "show", str(rows[0]["id"]), "--json")
    assert shown["id"] == rows[0]["id"] and shown["decision"] is None


def test_review_next_walks_the_queue_and_a_second_decision_needs_the_version(
    audit: dict[str, Any],
) -> None:
    first = run("review", "next", "--json")
    assert first["rank"] == 1 and first["audit_id"] == audit["id"]
    decided = run("review", "decide", str(first["id"]), "--relabel", "3", "--json")
    assert (decided["decision"], decided["new_label"], decided["version"]) == ("relabelled", 3, 1)

    second = run("review", "next", str(audit["id"]), "--json")
    assert second["id"] != first["id"] and second["rank"] == 2

    again = run("review", "decide", str(first["id"]), "--dismiss", ok=False)
    assert again.exit_code != 0 and again.stdout == ""
    line = again.stderr.strip()
    assert "\n" not in line and "already decided" in line and "--version 1" in line
    changed = run("review", "decide", str(first["id"]), "--dismiss", "--version", "1", "--json")
    assert (changed["decision"], changed["version"]) == ("dismissed", 2)
    stale = run("review", "decide", str(first["id"]), "--confirm", "--version", "1", ok=False)
    assert stale.exit_code != 0 and "version 2" in stale.stderr
    both = run("review", "decide", str(first["id"]), "--confirm", "--dismiss", ok=False)
    assert both.exit_code != 0 and "exactly one of" in both.stderr


def test_relabel_takes_a_class_name_and_refuses_an_unknown_label(tmp_path: Path) -> None:
    d = digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    path = write_npz(
        Examples(x=d.x[:N], y=d.y[:N], keys=d.keys[:N], is_image=True, class_names=names),
        tmp_path / "named.npz",
    )
    run("dataset", "add", "named", str(path))
    finding = run("audit", "run", "label-check", "named", "--json")["top"][0]
    for bad, says in [("eleven", "its classes are zero, one"), ("12", "class 12 is outside the data set's classes 0..9")]:
        refused = run("review", "decide", str(finding["id"]), "--relabel", bad, ok=False)
        assert refused.exit_code != 0 and says in refused.stderr
    assert run("review", "next", "--json")["id"] == finding["id"]  # nothing was stored
    decided = run("review", "decide", str(finding["id"]), "--relabel", "seven", "--json")
    assert (decided["decision"], decided["new_label"]) == ("relabelled", 7)


def test_export_has_every_row_with_the_decisions_applied(
    audit: dict[str, Any], tmp_path: Path
) -> None:
    rows = run("findings", "list", str(audit["id"]), "--top", "3", "--json")
    run("review", "decide", str(rows[0]["id"]), "--relabel", "7")
    run("review", "decide", str(rows[1]["id"]), "--confirm", "--note", "clearly a 4")
    run("review", "decide", str(rows[2]["id"]), "--dismiss")
    out = tmp_path / "out" / "labels.csv"
    summary = run("findings", "export", str(audit["id"]), "--out", str(out), "--json")
    assert summary == {"out": str(out), "rows": N, "decided": 3}
    with out.open() as fh:
        exported = {int(r["example_index"]): r for r in csv.DictReader(fh)}
    assert sorted(exported) == list(range(N))
    relabelled, confirmed, dismissed = (exported[r["example_index"]] for r in rows)
    assert (relabelled["decision"], relabelled["corrected_label"]) == ("relabelled", "7")
    assert confirmed["decision"] == "confirmed" and confirmed["note"] == "clearly a 4"
    assert confirmed["corrected_label"] == str(rows[1]["payload"]["suggested_label"])
    assert dismissed["corrected_label"] == dismissed["original_label"] == str(rows[2]["label"])
    untouched = [r for i, r in exported.items() if i not in {x["example_index"] for x in rows}]
    assert all(
        r["decision"] == "" and r["corrected_label"] == r["original_label"] for r in untouched
    )
    assert (
        run(
            "findings", "export", str(audit["id"]), "--out", str(tmp_path / "x.txt"), ok=False
        ).exit_code
        != 0
    )


def test_enqueue_without_a_broker_is_one_line_and_creates_nothing(dataset: str) -> None:
    result = run("audit", "enqueue", "label-check", dataset, "--json", ok=False)
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no broker configured")
    assert _audit_count() == 0


def test_a_run_on_a_vanished_file_fails_with_the_reason(dataset: str, tmp_path: Path) -> None:
    (tmp_path / "d.npz").unlink()
    result = run("audit", "run", "label-check", dataset, "--json", ok=False)
    assert result.exit_code != 0 and result.stdout == ""
    assert "d.npz: no such file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _audit_count() == 0  # the scan before creating the audit failed: nothing recorded


def test_cancelling_a_finished_audit_is_refused(audit: dict[str, Any]) -> None:
    refused = run("audit", "cancel", str(audit["id"]), ok=False)
    assert refused.exit_code != 0 and "already succeeded" in refused.stderr


def test_findings_show_works_when_the_dataset_file_is_gone(
    audit: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "d.npz").unlink()
    row = run("findings", "list", str(audit["id"]), "--top", "1", "--json")[0]
    shown = run("findings", "show", str(row["id"]), "--json")
    assert shown["example_key"] == row["example_key"]
    assert f"finding {row['id']}" in run("findings", "show", str(row["id"]))


@pytest.mark.slow
def test_demo_plants_flips_and_reports_recall() -> None:
    doc = run("demo", "--fraction", "0.05", "--json")
    assert doc["status"] == "succeeded" and doc["error"] is None
    assert doc["n"] == 1797 and doc["flipped"] == 90
    assert set(doc["recall"]) == {"5%", "10%", "20%", "30%"}
    assert doc["recall"]["30%"] >= doc["recall"]["5%"] and doc["recall"]["10%"] > 0.3
    assert len(doc["top"]) == 10 and all("flipped" in r for r in doc["top"])
    assert Path(doc["truth"]).exists()
    bad = run("demo", "--fraction", "1.5", ok=False)
    assert bad.exit_code != 0 and "--fraction" in bad.stderr
