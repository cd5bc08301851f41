"""Evidence a reviewer can read (issue 24, items 6 and 7): why lists for every flagged finding,
helpful and harmful examples as shares with signs in words, flagged examples marked, scores
named after what they mean, the audit's summary on its page, and the rough edges of the trial
(pages past the end, class options, relabel default, favicon, offline /docs, declared security,
one why per item, conflict messages, `audit list` in 80 columns, `review next` in a pipe,
README's marker). Over the real store on SQLite and PostgreSQL, with findings built here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import make_audit, make_dataset
from fastapi.testclient import TestClient
from helpers import cli
from sqlalchemy.orm import Session, sessionmaker

from auditor import auth, reviewing
from auditor.analyses.base import AnalysisInput, FindingRecord, no_progress
from auditor.analyses.label_check import (
    LabelCheckConfig,
    explain_flagged,
    run,
    score_examples,
    why_rows,
)
from auditor.audit_view import audit_label, estimate_line, summary_facts
from auditor.data.bundled import digits, flip_labels
from auditor.errors import Conflict
from auditor.findings_view import context_for, finding_doc, score_label
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store
from auditor.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
N = 12
SUMMARY = {
    "n": N,
    "rank_by": "margin",
    "rank_by_requested": "auto",
    "rank_by_reason": "the model disagrees with 14.7% of the given labels",
    "train_agreement": 0.853,
    "model": {"name": "logreg", "weights": None, "train": True, "params": "all"},
    "training": {"trained": True, "loss": 1.07, "iterations": 75, "reused": False},
    "curvature": {
        "solver": "direct", "damping": 0.0, "damping_reason": "none needed: positive definite",
        "solver_reason": "exact: the 650 x 650 Hessian", "parameters": {"counted": 650, "total": 650},
    },
    "estimate": {
        "count": 180, "low": 160, "high": 205, "interval": 0.95, "method": "confident learning",
        "flagged": 4, "pairs": [{"given": 7, "suggested": 1, "count": 12}], "evaluated_rows": N,
    },
    "rerank": {"note": "calibrated on 40 decisions", "at": "2026-12-04T10:31:00", "decisions": 40},
}  # fmt: skip


# ---- the label check explains every flagged finding, in bounded chunks ----------------------
@pytest.fixture(scope="module")
def small():
    noisy, _ = flip_labels(digits(), 0.1, seed=0)
    part = noisy.__class__(noisy.x[:200], noisy.y[:200], noisy.keys[:200], noisy.source, True)
    scores = score_examples(part, LabelCheckConfig.from_params({}), no_progress)
    return part, scores


def test_why_lists_in_chunks_equal_one_pass_and_carry_their_scale(small) -> None:
    examples, scores = small
    rows = why_rows(scores, "margin", 23)
    whole = explain_flagged(examples, scores.fitted, scores.influence, rows)
    chunked = explain_flagged(examples, scores.fitted, scores.influence, rows, chunk=5)
    assert list(chunked) == rows and len(rows) == 23
    for i in rows:
        assert [r["index"] for r in chunked[i]["harmful"]] == [
            r["index"] for r in whole[i]["harmful"]
        ]
        assert chunked[i]["total_abs_influence"] == pytest.approx(
            whole[i]["total_abs_influence"], rel=1e-6
        )
        listed = sum(abs(r["influence"]) for k in ("helpful", "harmful") for r in chunked[i][k])
        assert 0 < listed <= chunked[i]["total_abs_influence"] * (1 + 1e-9)


def test_why_rows_are_the_flagged_ones_in_rank_order_when_the_estimate_has_chosen(small) -> None:
    _, scores = small
    order = np.argsort(-scores.margin, kind="stable")
    flagged = order[[1, 4, 6]]  # positions into the score arrays, as the estimate gives them
    assert why_rows(scores, "margin", 10, flagged) == [int(scores.indices[j]) for j in flagged]
    assert why_rows(scores, "margin", 2, flagged) == [int(scores.indices[j]) for j in flagged[:2]]
    assert why_rows(scores, "margin", 0, flagged) == []


def test_a_label_check_stores_why_for_every_flagged_finding_within_why_top(small) -> None:
    examples, _ = small
    result = run(
        AnalysisInput(train=examples, test=None, params={"rank_by": "margin", "why_top": 150})
    )
    findings = list(result.findings)
    flagged = [f for f in findings if f.flagged]
    assert 0 < len(flagged) < 150, "the planted flips are estimated and flagged"
    assert result.summary["why_top"] == len(flagged)
    assert all("why" in f.payload and f.payload["why_total_abs_influence"] > 0 for f in flagged)
    assert not any("why" in f.payload for f in findings if not f.flagged)
    assert set(flagged[0].payload["why"]) == {"helpful", "harmful", "nearest"}
    capped = run(AnalysisInput(train=examples, test=None, params={"rank_by": "margin", "why_top": 5}))
    assert capped.summary["why_top"] == 5  # at most why_top, the best-ranked flagged first


# ---- views ---------------------------------------------------------------------------------
def label_records() -> list[FindingRecord]:
    """N findings; 0..3 flagged; finding 0 lists examples 1 (flagged) and 9 as harmful."""
    why = {
        "helpful": [{"index": 9, "key": "k000009", "label": 2, "influence": -0.5, "distance": 1.0}],
        "harmful": [
            {"index": 1, "key": "k000001", "label": 1, "influence": 1.5, "distance": 2.0},
            {"index": 8, "key": "k000008", "label": 1, "influence": 0.5, "distance": 3.0},
        ],
        "nearest": [{"index": 9, "key": "k000009", "label": 2, "influence": -0.5, "distance": 1.0}],
    }
    out = []
    for i in range(N):
        payload = {"margin": 2.0 - i / 10, "loo_margin": 2.1 - i / 10, "prob_label": 0.2,
                   "loo_prob_label": 0.1, "self_influence": 0.3, "predicted": 1,
                   "suggested_label": 1 if i < 4 else None}  # fmt: skip
        if i == 0:
            payload.update(why=why, why_total_abs_influence=10.0)
            payload["fix_value"] = {
                "relabel": {"test_loss": -0.0123, "test_accuracy": 0.004},
                "remove": {"test_loss": -0.005, "test_accuracy": 0.002},
                "evaluated_on": "test set digits-test (300 rows)",
            }
        out.append(
            FindingRecord(
                i, f"k{i:06d}", "label", 2.0 - i / 10, i + 1, i % 3, payload, flagged=i < 4
            )
        )
    return out


@pytest.fixture
def store(
    sessions: sessionmaker[Session], db_url: str, monkeypatch
) -> tuple[sessionmaker[Session], int, list[int]]:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, n=N))
        audit_store.set_audit_summary(s, audit.id, SUMMARY)
        finding_store.upsert_findings(s, audit.id, label_records())
        ids = [f.id for f in finding_store.list_findings(s, audit.id)]
        auth.add_user(s, "ana", "reviewer", PASSWORD)
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    return sessions, audit.id, ids


def test_helpful_and_harmful_read_as_shares_with_their_direction_and_flagged_marks(store) -> None:
    sessions, audit_id, ids = store
    with sessions() as s:
        f = finding_store.get_finding(s, ids[0])
        doc = finding_doc(f, context_for(s, audit_id, [f]))
    harmful, helpful = doc["why"]["harmful"], doc["why"]["helpful"]
    # 1.5 and 0.5 of a total absolute influence of 10: 15% and 5%; example 1 is flagged itself
    assert [(r["effect"], r["share"], r["flagged"]) for r in harmful] == [
        ("argues against", pytest.approx(15.0), True),
        ("argues against", pytest.approx(5.0), False),
    ]
    assert helpful[0]["effect"] == "supports" and helpful[0]["share"] == pytest.approx(5.0)
    assert helpful[0]["share_of"] == "training set" and helpful[0]["influence"] == -0.5
    assert "why" not in doc["payload"]  # one why per item
    assert doc["flagged"] is True and doc["score_label"] == "prefers another label by"


def test_summary_facts_say_model_solver_damping_ranking_estimate_and_rerank() -> None:
    facts = {f["what"]: f for f in summary_facts({"summary": SUMMARY, "params": {}})}
    assert facts["estimate"]["value"] == "estimated 180 (160\u2013205) wrong labels; 4 flagged"
    assert facts["model"]["value"] == "logreg" and facts["solver"]["value"] == "direct"
    assert "exact" in facts["solver"]["why"] and "positive definite" in facts["damping"]["why"]
    assert facts["ranking"]["value"].startswith("margin (prefers another label by)")
    assert "14.7%" in facts["ranking"]["why"]
    assert "calibrated on 40 decisions" == facts["re-ranking"]["why"]
    assert (
        estimate_line({}) is None
        and score_label("loo-margin") == "left out, prefers another label by"
    )
    label = audit_label({"summary": SUMMARY, "created_at": "2026-12-04T10:31:09+00:00"})
    assert label == "logreg \u00b7 direct \u00b7 2026-12-04 10:31"


# ---- the web ---------------------------------------------------------------------------------
@pytest.fixture
def client(store, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(store[0], home=tmp_path / "home")) as c:
        c.post("/login", data={"username": "ana", "password": PASSWORD})
        yield c


HTML = {"Accept": "text/html"}


def test_the_audit_page_shows_its_summary_estimate_and_review_counts(store, client) -> None:
    _, audit_id, _ = store
    page = client.get(f"/audits/{audit_id}", headers=HTML).text
    assert "estimated 180 (160–205) wrong labels; 4 flagged" in page
    assert "About this audit" in page and "none needed: positive definite" in page
    assert "Review: <b>0</b> of 4 flagged reviewed, 4 left." in page
    assert "prefers another label by" in page and page.count('class="flag"') == 4
    listing = client.get("/api/audits").json()[0]
    got = (listing["flagged"], listing["decided"], listing["model"], listing["solver"])
    assert got == (4, 0, "logreg", "direct")
    sessions, _, ids = store
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[2], "dismissed", reviewer="ana")
    assert client.get("/api/audits").json()[0]["decided"] == 1
    page = client.get(f"/audits/{audit_id}", headers=HTML).text
    assert "Review: <b>1</b> of 4 flagged reviewed, 3 left; precision so far <b>0.00</b>" in page


def test_a_page_past_the_end_redirects_to_the_last(store, client) -> None:
    _, audit_id, _ = store
    r = client.get(f"/audits/{audit_id}?size=5&page=9", headers=HTML, follow_redirects=False)
    assert (
        r.status_code == 303
        and "page=3" in r.headers["location"]
        and "size=5" in r.headers["location"]
    )
    assert client.get(r.headers["location"], headers=HTML).status_code == 200


def test_class_options_read_the_index_alone_when_names_are_indices_and_relabel_starts_at_the_suggestion(
    store, client
) -> None:
    _, _, ids = store
    page = client.get(f"/findings/{ids[0]}", headers=HTML).text
    options = re.findall(
        r'<option value="(\d+)" ?(selected)?>([^<]*)</option>',
        page.split('id="relabel"')[1].split("</select>")[0],
    )
    assert [text for _, _, text in options] == ["0", "1", "2"]  # not "1 · 1"
    assert [value for value, selected, _ in options if selected] == ["1"]  # the suggestion


def test_a_flagged_findings_page_shows_its_worth_and_its_evidence_as_shares(store, client) -> None:
    _, _, ids = store
    page = client.get(f"/findings/{ids[0]}", headers=HTML).text
    assert "What fixing it is worth" in page and "-0.0123" in page and "+0.40 points" in page
    assert (
        "argues against it <b>15.0%</b>" in page and "supports the given label <b>5.0%</b>" in page
    )
    other = client.get(f"/findings/{ids[5]}", headers=HTML).text
    assert 'data-testid="no-why"' in other and "ranked only" in other
    assert "What fixing it is worth" not in other


def test_api_items_carry_one_why(store, client) -> None:
    _, audit_id, _ = store
    item = client.get(f"/api/audits/{audit_id}/findings").json()["items"][0]
    assert "why" in item and "why" not in item["payload"]


def test_favicon_offline_docs_and_declared_security(client) -> None:
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg")
    assert 'rel="icon"' in client.get("/", headers=HTML).text
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/static/swagger/swagger-ui-bundle.js" in docs
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
    schema = client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "cookie"}
    assert schema["security"] == [{"bearer": []}, {"cookie": []}]
    assert schema["paths"]["/api/token"]["post"]["security"] == []


def test_a_conflict_names_the_finding_and_its_file_not_a_content_hash(store) -> None:
    sessions, _, ids = store
    with sessions() as s, s.begin():
        reviewing.decide(s, ids[0], "dismissed", reviewer="ana")
    with sessions() as s, s.begin(), pytest.raises(Conflict) as caught:
        reviewing.decide(s, ids[0], "dismissed", reviewer="bob")
    assert str(caught.value).startswith(f"finding {ids[0]} (example row 0) was already decided")
    assert "k000000" not in str(caught.value)


def test_the_runner_keeps_where_the_phase_began_and_the_eta_uses_it(store) -> None:
    from auditor.audits import audit_doc
    from auditor.runner import StoreProgress

    sessions, _, _ = store
    with sessions() as s, s.begin():
        running = make_audit(s, audit_store.get_audit(s, store[1]).dataset, status="running").id
    tracker = StoreProgress(sessions, running, interval=0.0)
    tracker(0.2, "training model")
    with sessions() as s:
        first = audit_store.get_audit(s, running).summary["phase"]
    tracker(0.5, "self-influence (10/100 examples)")
    with sessions() as s:
        a = audit_store.get_audit(s, running)
        phase = a.summary["phase"]
        assert first["fraction"] == 0.0 and phase["fraction"] == 0.5  # a new phase began at 0.5
        assert phase["started_at"] >= first["started_at"]
        assert audit_doc(a)["eta_seconds"] is None  # too early in the phase to tell


# ---- the CLI and the README ------------------------------------------------------------------
def test_findings_show_names_its_scores(store) -> None:
    _, _, ids = store
    out = cli("findings", "show", str(ids[0]))
    assert "left-out prob. of given label (loo_prob_label): 0.1" in out
    assert "harmful (argues against it): row 1 (1, flagged, 15.0%)" in out
    assert "prefers another label by" in cli("findings", "list", str(store[1]))


def test_review_next_in_a_pipe_says_it_draws_no_picture(store) -> None:
    from typer.testing import CliRunner

    from auditor.cli.main import app

    result = CliRunner().invoke(app, ["review", "next", "--reviewer", "ana"], input="q\n")
    assert result.exit_code == 0, result.output
    assert "stdout is not a terminal: examples are not drawn" in result.stderr
    assert "\u2580" not in result.stdout


def test_audit_list_fits_80_columns(store, db_url: str, tmp_path: Path) -> None:
    sessions, audit_id, _ = store
    with sessions() as s, s.begin():
        audit_store.update_progress(s, audit_id, 1.0, "a long message " * 10)
    env = {
        **os.environ,
        "AUDITOR_DATABASE_URL": db_url,
        "AUDITOR_HOME": str(tmp_path),
        "COLUMNS": "80",
    }
    out = subprocess.run(
        [str(Path(sys.executable).with_name("auditor")), "audit", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout  # fmt: skip
    lines = out.rstrip("\n").splitlines()
    assert len(lines) == 2 and max(len(line) for line in lines) <= 80  # header and one audit
    assert "logreg/direct" in lines[1] and lines[1].rstrip().endswith("…")


def test_readme_command_one_leaves_the_marker_the_test_script_checks() -> None:
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv .venv"))
    script = (ROOT / "scripts" / "test.sh").read_text()
    marker = re.search(r"pyproject\.toml -nt (\S+) \]", script).group(1)
    assert f"touch {marker}" in command
    assert command.index(f"touch {marker}") > command.index("pip install")
