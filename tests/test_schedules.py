"""Schedules (#8): CLI round trip, ticks that run / skip / re-run, next-run timing, concurrent
ticks, settled examples staying out of the review queue, and `auditor audit diff`.

Audits run in process (embedded default, no broker) with logreg on 200 digits, so each takes
about a second once torch is imported.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from croniter import croniter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from auditor import recurrence, schedules
from auditor.analyses.base import FindingRecord
from auditor.audit_diff import parse_top
from auditor.audits import run_in_process
from auditor.cli.main import app
from auditor.config import get_settings
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.data.keys import example_keys
from auditor.errors import AuditorError
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store
from auditor.store import reviews as review_store
from auditor.store import schedules as schedule_store
from auditor.store.models import Audit, utcnow

runner = CliRunner()
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def cli(*args: str) -> Any:
    """Run a command that must succeed with --json; return its one JSON document."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr or result.output
    return json.loads(result.stdout)


def cli_error(*args: str) -> str:
    """Run a command that must fail; return its one-line error (stdout stays empty)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write_digits(path: Path, n: int = 200, relabel: tuple[int, ...] = ()) -> Path:
    """The first n of sklearn's digits as an NPZ, with the labels of rows `relabel` moved on."""
    d = digits()
    x, y = d.x[:n].copy(), d.y[:n].copy()
    for i in relabel:
        y[i] = (y[i] + 1) % 10
    return write_npz(Examples(x=x, y=y, keys=example_keys(x, y)), path)


@pytest.fixture
def digits_npz(tmp_path: Path) -> Path:
    path = write_digits(tmp_path / "data" / "digits.npz")
    cli("dataset", "add", "dg", str(path))
    return path


def make_due(schedule_id: int) -> None:
    with open_store()() as s, s.begin():
        schedule_store.get_schedule(s, schedule_id).next_run_at = utcnow() - timedelta(seconds=1)


def schedule_row(schedule_id: int) -> dict[str, Any]:
    (doc,) = [d for d in cli("schedule", "list") if d["id"] == schedule_id]
    return doc


def audits_of(schedule_id: int) -> list[Audit]:
    with open_store()() as s:
        return list(
            s.scalars(select(Audit).where(Audit.schedule_id == schedule_id).order_by(Audit.id))
        )


# ---------------------------------------------------------------------------------------------
# managing schedules


def test_schedule_commands_round_trip_as_json(digits_npz: Path) -> None:
    before = utcnow()
    added = cli(
        "schedule",
        "add",
        "dg",
        "label-check",
        "--every",
        "6h",
        "--solver",
        "direct",
        "--damping",
        "0.1",
        "--rank-by",
        "loss",
    )
    doc = added["schedule"]
    assert added["created"] and doc["enabled"] and doc["skip_unchanged"]
    assert (doc["dataset"], doc["kind"], doc["every"], doc["interval_seconds"]) == (
        "dg",
        "label-check",
        "6h",
        21600,
    )
    # the same params `auditor audit run label-check dg` with these options would carry
    expected = {
        "model": {
            "name": "logreg", "weights": None, "weight_decay": None, "params": "all", "train": True,
            "train_fn": None, "device": "auto", "seed": 0,
        },  # fmt: skip
        "solver": {"name": "direct", "damping": 0.1, "reuse": True},
        "rank_by": "loss",
    }
    assert doc["params"] == expected
    next_run = datetime.fromisoformat(doc["next_run_at"])
    assert before + timedelta(hours=6) <= next_run <= utcnow() + timedelta(hours=6)

    again = cli(
        "schedule",
        "add",
        "dg",
        "label-check",
        "--every",
        "6h",
        "--solver",
        "direct",
        "--damping",
        "0.1",
        "--rank-by",
        "loss",
    )
    assert not again["created"] and again["schedule"]["id"] == doc["id"]
    nightly = cli(
        "schedule", "add", "dg", "label-check", "--cron", "0 3 * * *", "--no-skip-unchanged"
    )["schedule"]
    assert nightly["cron"] == "0 3 * * *" and not nightly["skip_unchanged"]
    assert [d["id"] for d in cli("schedule", "list")] == [doc["id"], nightly["id"]]

    sid = str(doc["id"])
    paused = cli("schedule", "pause", sid)
    assert paused["changed"] and not paused["schedule"]["enabled"]
    assert paused["schedule"]["next_run_at"] is None
    again = cli("schedule", "pause", sid)  # idempotent
    assert not again["changed"] and not again["schedule"]["enabled"]
    resumed = cli("schedule", "resume", sid)
    assert resumed["changed"] and resumed["schedule"]["enabled"]
    assert not cli("schedule", "resume", sid)["changed"]
    assert schedule_row(doc["id"])["enabled"]

    assert cli("schedule", "remove", sid) == {"id": doc["id"], "removed": True}
    assert [d["id"] for d in cli("schedule", "list")] == [nightly["id"]]
    assert "no schedule with id" in cli_error("schedule", "remove", sid)
    assert "no schedule with id" in cli_error("schedule", "pause", "999")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dg", "label-check"], "exactly one of --every"),
        (["dg", "label-check", "--every", "1h", "--cron", "0 3 * * *"], "exactly one of --every"),
        (["dg", "label-check", "--every", "soon"], "cannot read interval"),
        (["dg", "label-check", "--cron", "every night"], "invalid cron expression"),
        (["nope", "label-check", "--every", "1h"], "no dataset named 'nope'"),
        (["dg", "sort", "--every", "1h"], "unknown audit kind 'sort'"),
        (["dg", "explain", "--every", "1h"], "need a test set"),
        (["dg", "explain", "--every", "1h", "--test", "nope"], "no dataset named 'nope'"),
    ],
)
def test_schedule_add_refuses_bad_input_in_one_line(
    digits_npz: Path, args: list[str], message: str
) -> None:
    assert message in cli_error("schedule", "add", *args, "--json")
    assert cli("schedule", "list") == []


@pytest.mark.parametrize("seconds", [1, 59, 90, 3600, 5400, 86400, 93784, 604800])
def test_intervals_print_as_text_that_parses_back(seconds: int) -> None:
    assert recurrence.parse_interval(schedules.format_interval(seconds)) == seconds


def test_next_run_follows_the_interval_or_the_cron_expression(digits_npz: Path) -> None:
    sessions = open_store()
    hourly, _ = schedules.add_schedule(
        sessions, "dg", "label-check", {}, every="90m", now=NOON, settings=get_settings()
    )
    nightly, _ = schedules.add_schedule(
        sessions, "dg", "label-check", {"x": 1}, cron="0 3 * * *", now=NOON, settings=get_settings()
    )
    assert datetime.fromisoformat(hourly["next_run_at"]) == NOON + timedelta(minutes=90)
    assert datetime.fromisoformat(nightly["next_run_at"]) == datetime(
        2026, 3, 2, 3, 0, tzinfo=timezone.utc
    )
    assert schedules.claim_due(sessions, NOON + timedelta(minutes=89)) == []

    late = NOON + timedelta(minutes=95)  # a tick five minutes late: the period counts from now
    (claim,) = schedules.claim_due(sessions, late)
    assert claim.schedule_id == hourly["id"] and claim.next_run_at == late + timedelta(minutes=90)

    at_three = datetime(2026, 3, 2, 3, 0, 30, tzinfo=timezone.utc)
    claims = schedules.claim_due(sessions, at_three)
    assert [c.schedule_id for c in claims] == [hourly["id"], nightly["id"]]
    assert claims[1].next_run_at == datetime(2026, 3, 3, 3, 0, tzinfo=timezone.utc)
    with sessions() as s:
        stored = schedule_store.get_schedule(s, nightly["id"])
        assert stored.last_run_at == at_three
        assert stored.next_run_at == datetime(2026, 3, 3, 3, 0, tzinfo=timezone.utc)

    # the CLI computes the first cron run from now, in UTC
    before = utcnow()
    doc = cli("schedule", "add", "dg", "label-check", "--cron", "*/15 * * * *")["schedule"]
    first = datetime.fromisoformat(doc["next_run_at"])
    assert first == croniter("*/15 * * * *", first - timedelta(minutes=15)).get_next(datetime)
    assert before < first <= before + timedelta(minutes=15)


# ---------------------------------------------------------------------------------------------
# ticking


def test_tick_runs_a_due_schedule_then_skips_it_until_the_data_changes(
    digits_npz: Path,
) -> None:
    sid = cli("schedule", "add", "dg", "label-check", "--every", "1h", "--due-now")["schedule"][
        "id"
    ]
    first = cli("schedule", "tick")
    (outcome,) = first["outcomes"]
    assert (outcome["schedule_id"], outcome["action"], outcome["audit_status"]) == (
        sid,
        "ran",
        "succeeded",
    )
    (audit,) = audits_of(sid)
    assert first["audit_ids"] == [audit.id] and audit.status == "succeeded"
    with open_store()() as s:
        assert finding_store.count_findings(s, audit.id) == 200
    ran_at = datetime.fromisoformat(schedule_row(sid)["last_run_at"])

    assert cli("schedule", "tick") == {"outcomes": [], "audit_ids": []}  # not due again yet

    make_due(sid)
    (skipped,) = cli("schedule", "tick")["outcomes"]
    assert (skipped["action"], skipped["reason"], skipped["audit_id"]) == (
        "skipped",
        "unchanged",
        None,
    )
    row = schedule_row(sid)
    assert datetime.fromisoformat(row["last_run_at"]) > ran_at  # the skip is recorded
    assert datetime.fromisoformat(row["next_run_at"]) > utcnow() + timedelta(minutes=59)
    assert len(audits_of(sid)) == 1

    write_digits(digits_npz, n=210)  # ten new rows
    make_due(sid)
    (rerun,) = cli("schedule", "tick")["outcomes"]
    assert rerun["action"] == "ran" and rerun["new_snapshot"]
    assert rerun["snapshot_id"] != audit.snapshot_id
    second = audits_of(sid)[-1]
    assert second.id == rerun["audit_id"] and second.status == "succeeded"
    history = cli("audit", "list", "--dataset", "dg")
    assert [a["id"] for a in history] == [second.id, audit.id]

    # --no-skip-unchanged audits unchanged data too; `tick` (the task's entry) returns the ids
    always = cli(
        "schedule", "add", "dg", "label-check", "--every", "1h", "--due-now", "--no-skip-unchanged"
    )["schedule"]["id"]
    assert len(schedules.tick(open_store(), start=run_in_process(get_settings()), settings=get_settings())) == 1
    make_due(always)
    (audit_id,) = schedules.tick(open_store(), start=run_in_process(get_settings()), settings=get_settings())
    assert [a.id for a in audits_of(always)][-1] == audit_id and len(audits_of(always)) == 2


def test_a_schedule_whose_source_vanished_fails_in_one_line(digits_npz: Path) -> None:
    sid = cli("schedule", "add", "dg", "label-check", "--every", "1h", "--due-now")["schedule"][
        "id"
    ]
    digits_npz.unlink()
    result = runner.invoke(app, ["schedule", "tick", "--json"])
    assert result.exit_code == 1
    (outcome,) = json.loads(result.stdout)["outcomes"]
    assert outcome["action"] == "failed" and str(digits_npz.name) in outcome["reason"]
    assert audits_of(sid) == [] and schedule_row(sid)["last_run_at"] is not None


def _walk_queue(sessions: sessionmaker[Session], dataset_id: int) -> list[str]:
    """Every key the review queue hands out, best first (dismissing each to get the next)."""
    keys = []
    with sessions() as s, s.begin():
        while (finding := review_store.next_unsettled_finding(s, dataset_id=dataset_id)) is not None:
            keys.append(finding.example_key)
            review_store.decide(s, finding.id, "dismissed", reviewer="walker")
    return keys


def test_settled_examples_stay_settled_across_scans_and_diff_reports_them(
    digits_npz: Path,
) -> None:
    sessions = open_store()
    sid = cli("schedule", "add", "dg", "label-check", "--every", "1h", "--due-now")["schedule"][
        "id"
    ]
    (first_id,) = cli("schedule", "tick")["audit_ids"]
    with sessions() as s, s.begin():
        dataset_id = dataset_store.get_dataset(s, "dg").id
        top = finding_store.list_findings(s, first_id, top=2)
        kept, edited = top[0], top[1]  # a reviewer settles the two best-ranked examples
        review_store.decide(s, kept.id, "confirmed", reviewer="ana")
        review_store.decide(s, edited.id, "dismissed", reviewer="ana")
        head = review_store.next_unsettled_finding(s, dataset_id=dataset_id)
        assert head is not None and head.rank == 3

    # scan 2: the dataset grew by 20 rows, and the label of the second example changed
    write_digits(digits_npz, n=220, relabel=(edited.example_index,))
    make_due(sid)
    (second_id,) = cli("schedule", "tick")["audit_ids"]
    with sessions() as s:
        second = {f.example_key: f for f in finding_store.list_findings(s, second_id)}
    assert len(second) == 220
    assert kept.example_key in second  # still audited, same key ...
    assert edited.example_key not in second  # ... the relabelled example has a new key
    (new_key,) = [f.example_key for f in second.values() if f.example_index == edited.example_index]

    diff = cli("audit", "diff", str(first_id), str(second_id), "--top", "10%")
    check_diff_against_rankings(sessions, diff, first_id, second_id, math.ceil(0.1 * 200), 22)
    (edited_row,) = [r for r in diff["no_longer_flagged"] if r["example_key"] == edited.example_key]
    assert edited_row["in_b"] is False and edited_row["rank_in_b"] is None
    assert edited_row["settled"] == "dismissed"
    settled = {r["example_key"]: r for r in diff["settled"]}
    assert settled[kept.example_key]["decision"] == "confirmed"
    assert "a" in settled[kept.example_key]["flagged_in"]

    queue = _walk_queue(sessions, dataset_id)
    assert len(queue) == 220 - 1  # everything but the settled, unchanged example
    assert kept.example_key not in queue
    assert new_key in queue
    with sessions() as s:  # the old decision is still there, for the old key
        review = review_store.get_review(s, dataset_id, edited.example_key)
        assert review is not None and review.decision == "dismissed"


def check_diff_against_rankings(
    sessions: sessionmaker[Session], diff: dict[str, Any], a: int, b: int, top_a: int, top_b: int
) -> None:
    """The diff's sets equal those computed from the two audits' top-ranked findings."""
    with sessions() as s:
        flagged_a = {f.example_key for f in finding_store.list_findings(s, a, top=top_a)}
        flagged_b = {f.example_key for f in finding_store.list_findings(s, b, top=top_b)}
        dataset_id = audit_store.get_audit(s, a).dataset_id
        settled = review_store.settled_keys(s, dataset_id) & (flagged_a | flagged_b)
    assert (diff["a"]["flagged"], diff["b"]["flagged"]) == (top_a, top_b)
    assert {r["example_key"] for r in diff["newly_flagged"]} == flagged_b - flagged_a
    assert {r["example_key"] for r in diff["no_longer_flagged"]} == flagged_a - flagged_b
    assert diff["still_flagged"] == len(flagged_a & flagged_b)
    assert {r["example_key"] for r in diff["settled"]} == settled


# ---------------------------------------------------------------------------------------------
# audit diff on known rankings


def _audit_with_ranking(s: Session, dataset_name: str, keys: list[str], ranking: list[str]) -> int:
    """A succeeded label-check audit whose snapshot holds `keys`, ranked as `ranking` says."""
    try:
        dataset = dataset_store.get_dataset(s, dataset_name)
    except AuditorError:
        dataset = dataset_store.create_dataset(s, dataset_name, f"/data/{dataset_name}.npz", "npz")
        s.flush()
    n = len(keys)
    examples = Examples(x=np.zeros((n, 2), np.float32), y=np.zeros(n, np.int64), keys=keys)
    snapshot, _ = dataset_store.record_snapshot(s, dataset, examples)
    audit = audit_store.create_audit(s, "label-check", dataset, snapshot=snapshot)
    audit_store.set_audit_status(s, audit.id, "running")
    records = [
        FindingRecord(keys.index(key), key, "label", float(n - rank), rank, 0, {})
        for rank, key in enumerate(ranking, start=1)
    ]
    finding_store.upsert_findings(s, audit.id, records)
    audit_store.set_audit_status(s, audit.id, "succeeded")
    return audit.id


def test_audit_diff_names_newly_flagged_no_longer_flagged_and_settled() -> None:
    sessions = open_store()
    old = [f"k{i:02d}" for i in range(20)]
    new = [k for k in old if k != "k02"] + ["n1"]  # k02 was edited into n1
    b_ranking = ["k10", "n1", "k00", "k03", "k11"] + [
        k for k in new if k not in {"k10", "n1", "k00", "k03", "k11"}
    ]
    with sessions() as s, s.begin():
        a = _audit_with_ranking(s, "toy", old, old)
        b = _audit_with_ranking(s, "toy", new, b_ranking)
        k00 = finding_store.list_findings(s, a, top=1)[0]
        review_store.decide(s, k00.id, "confirmed", reviewer="ana")
        other = _audit_with_ranking(s, "other", old, old)

    doc = cli("audit", "diff", str(a), str(b), "--top", "25%")  # 5 of 20
    assert doc["top"] == "25%" and doc["a"]["flagged"] == doc["b"]["flagged"] == 5
    newly = {r["example_key"]: r["rank_in_a"] for r in doc["newly_flagged"]}
    assert newly == {"k10": 11, "n1": None, "k11": 12}
    assert [r["example_key"] for r in doc["newly_flagged"]] == ["k10", "n1", "k11"]
    gone = {r["example_key"]: (r["rank_in_b"], r["in_b"]) for r in doc["no_longer_flagged"]}
    assert gone == {"k01": (6, True), "k02": (None, False), "k04": (7, True)}
    assert doc["still_flagged"] == 2
    (settled,) = doc["settled"]
    assert (settled["example_key"], settled["decision"], settled["flagged_in"]) == (
        "k00",
        "confirmed",
        ["a", "b"],
    )

    by_count = cli("audit", "diff", str(a), str(b), "--top", "2")
    assert {r["example_key"] for r in by_count["newly_flagged"]} == {"k10", "n1"}
    assert {r["example_key"] for r in by_count["no_longer_flagged"]} == {"k00", "k01"}
    human = runner.invoke(app, ["audit", "diff", str(a), str(b)])
    assert human.exit_code == 0 and "newly flagged" in human.stdout

    assert "different datasets" in cli_error("audit", "diff", str(a), str(other))
    assert "cannot read --top" in cli_error("audit", "diff", str(a), str(b), "--top", "ten")
    with sessions() as s, s.begin():
        queued = audit_store.create_audit(s, "label-check", dataset_store.get_dataset(s, "toy")).id
    assert "diff compares succeeded audits" in cli_error("audit", "diff", str(a), str(queued))


@pytest.mark.parametrize(
    ("text", "n", "size"),
    [("10%", 200, 20), ("10%", 5, 1), ("33%", 10, 4), ("100%", 7, 7), ("50", 20, 20), ("3", 20, 3)],
)
def test_top_sizes(text: str, n: int, size: int) -> None:
    assert parse_top(text).size(n) == size


# ---------------------------------------------------------------------------------------------
# concurrency


def test_concurrent_ticks_take_each_due_schedule_once(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_digits(tmp_path / "small.npz", n=40)
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "small", str(path), "npz")
        s.flush()
        ids = [
            schedule_store.add_schedule(
                s,
                dataset,
                "label-check",
                params={"i": i},
                interval_seconds=60,
                skip_unchanged=False,
                now=NOON,
            ).id
            for i in range(4)
        ]
    # Hold each claim's row lock a little longer, so the ticks really overlap.
    mark = schedule_store.mark_schedule_ran

    def slow_mark(session: Session, schedule: Any, now: datetime | None = None) -> None:
        threading.Event().wait(0.05)
        mark(session, schedule, now)

    monkeypatch.setattr(schedule_store, "mark_schedule_ran", slow_mark)
    created: list[int] = []
    outcomes: list[schedules.ScanOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def starter(_sessions: sessionmaker[Session], audit_id: int) -> tuple[str, str]:
        with lock:
            created.append(audit_id)
        return "enqueued", "queued"

    for round_ in range(3):
        now = NOON + timedelta(minutes=1 + 2 * round_)
        barrier = threading.Barrier(4)
        outcomes.clear()

        def one_tick(now: datetime = now, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                result = schedules.run_due(sessions, now, start=starter, settings=get_settings())
                with lock:
                    outcomes.extend(result)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one_tick) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(o.schedule_id for o in outcomes) == ids  # each schedule exactly once
        assert all(o.action == "enqueued" for o in outcomes)
    with sessions() as s:
        per_schedule = [
            len(s.scalars(select(Audit.id).where(Audit.schedule_id == i)).all()) for i in ids
        ]
    assert per_schedule == [3, 3, 3, 3] and len(created) == 12


def test_beat_without_a_broker_says_how_to_run_schedules_instead() -> None:
    assert "auditor schedule tick" in cli_error("beat")


def test_tick_with_an_unreachable_broker_claims_nothing(
    digits_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = cli("schedule", "add", "dg", "label-check", "--every", "1h", "--due-now")["schedule"][
        "id"
    ]
    monkeypatch.setenv("AUDITOR_BROKER_URL", "redis://127.0.0.1:1/0")
    assert "cannot reach the broker" in cli_error("schedule", "tick", "--json")
    row = schedule_row(sid)
    assert row["last_run_at"] is None and audits_of(sid) == []  # still due for the next tick
