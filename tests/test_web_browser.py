"""The review app in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright),
served by a real `auditor serve` process on PostgreSQL, over a real label check of 28x28 digits.

A reviewer signs in, triages ten findings by keyboard, undoes one, bulk-accepts the top three
undecided, filters by class and opens an example; the database then holds exactly those events.
A viewer signs in and cannot decide. Screenshots of the queue and of an example page are kept
in test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from review_data import Template, build_template, drop

from auditor import auth
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store
from auditor.store import reviews as review_store

pytestmark = [pytest.mark.services, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct horse"
# Without the networking flags Chromium tries Google's hosts at start, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Iterator[Template]:
    t = build_template("postgres", tmp_path_factory.mktemp("browser"))
    yield t
    drop(t.url)


@pytest.fixture
def server(template: Template, tmp_path: Path) -> Iterator[tuple[str, object]]:
    url = template.copy(tmp_path)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        auth.add_user(s, "ana", "reviewer", PASSWORD)
        auth.add_user(s, "vic", "viewer", PASSWORD)
    port = free_port()
    env = {**os.environ, "AUDITOR_DATABASE_URL": url, "AUDITOR_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("auditor")), "serve", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            return False

    wait_for(up, 30, "auditor serve to listen")
    yield base, sessions
    proc.terminate()
    proc.wait(timeout=10)
    drop(url)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def sign_in(page, base: str, user: str, target: str) -> None:
    page.goto(base + target)
    assert "/login" in page.url  # nobody anonymous gets the page
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + target)


def test_a_reviewer_triages_by_keyboard_undoes_bulk_accepts_and_filters(server, template, browser) -> None:
    from playwright.sync_api import expect

    base, sessions = server
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, base, "ana", f"/audits/{template.audit_id}")
    cards = page.locator("[data-testid=card]")
    expect(cards.first).to_be_visible()
    # the first row's thumbnails have loaded (lazy images), so the screenshot shows pictures
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)",
        timeout=10_000,
    )
    page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=False)
    with sessions() as s:
        classes = dataset_store.get_dataset(s, template.dataset).class_names
        ranked = [f for f, _ in finding_store.query_findings(s, template.audit_id, kind="label", limit=20).rows]

    # ten decisions by keyboard; the cursor moves on after each
    page.on("dialog", lambda dialog: dialog.accept("seven"))  # `r` asks for a class by name
    keys = ["c", "d", "c", "5", "d", "c", "r", "d", "c", "c"]
    expected = []
    for i, key in enumerate(keys):
        page.keyboard.press(key)
        expect(cards.nth(i).locator("[data-testid=decision]")).not_to_have_text("")
        if key == "c":
            expected.append(("confirmed", None))
        elif key == "d":
            expected.append(("dismissed", None))
        else:
            expected.append(("relabelled", 5 if key == "5" else classes.index("seven")))
    expect(cards.nth(6).locator("[data-testid=decision]")).to_contain_text("relabelled → seven")
    page.keyboard.press("u")  # undo the last one
    expect(cards.nth(9).locator("[data-testid=decision]")).to_have_text("")

    # bulk: accept the suggested label for the top three undecided (the undone one comes first)
    page.fill("[data-testid=top-k]", "3")
    page.click("[data-testid=accept-top]")
    for i in (9, 10, 11):
        expect(cards.nth(i).locator("[data-testid=decision]")).to_contain_text("confirmed · ana")
    expect(cards.nth(12).locator("[data-testid=decision]")).to_have_text("")

    # filter by class: it applies on change (no button); every card shown is given that class
    page.select_option("[data-testid=filter-class]", "seven")
    page.wait_for_url("**label=seven**")
    shown = cards.locator(".given").all_inner_texts()
    assert shown and set(shown) == {"seven"}

    # an example page: picture, why, history
    page.goto(f"{base}/findings/{ranked[0].id}")
    expect(page.locator("[data-testid=current-decision]")).to_contain_text("confirmed by ana")
    expect(page.locator("[data-testid=history]")).to_contain_text("ana")
    # the history names the label a confirm accepted
    expect(page.locator("[data-testid=history]")).to_contain_text(f"confirmed → {ranked[0].payload['suggested_label']} (")
    assert page.locator("section.why img").count() > 0
    page.screenshot(path=str(ARTIFACTS / "example.png"), full_page=True)

    # the database holds exactly those events, in order, under ana
    with sessions() as s:
        events = review_store.list_review_events(s)
        ana = auth.get_user(s, "ana")
    got = [(e.finding_id, e.decision, e.new_label) for e in events]
    want = [(ranked[i].id, d, label) for i, (d, label) in enumerate(expected)]
    want.append((ranked[9].id, "undone", None))
    bulk = [(ranked[i].id, "confirmed", None) for i in (9, 10, 11)]
    # one bulk accept decides its findings in example-key order (a fixed lock order), not queue order
    assert got[:11] == want and sorted(got[11:]) == sorted(bulk)
    assert {(e.reviewer, e.user_id) for e in events} == {("ana", ana.id)}
    assert events[10].undoes_id == events[9].id


def test_the_audit_page_shows_estimate_progress_summary_and_a_flagged_findings_worth_and_evidence(
    server, template, browser, tmp_path: Path
) -> None:
    """What a team lead and a reviewer read: the estimate, the review so far and the audit's
    summary on the audit page; on a flagged finding's page what fixing it is worth and its
    helpful and harmful examples as shares, in words. The serve process logs each request."""
    from playwright.sync_api import expect

    base, sessions = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sessions() as s, s.begin():
        audit = audit_store.get_audit(s, template.audit_id)
        summary = dict(audit.summary)
        summary["estimate"] = {
            "count": 21, "low": 15, "high": 27, "interval": 0.95, "method": "confident learning",
            "flagged": 3, "pairs": [{"given": 1, "suggested": 7, "count": 4}], "evaluated_rows": 200,
        }  # fmt: skip
        audit_store.set_audit_summary(s, template.audit_id, summary)
        top = finding_store.list_findings(s, template.audit_id, top=3, kind="label")
        for f in top:
            f.flagged = True
        top[0].payload = {
            **top[0].payload,
            "fix_value": {
                "relabel": {"test_loss": -0.0042, "test_accuracy": 0.005},
                "remove": {"test_loss": -0.0017, "test_accuracy": 0.0},
                "evaluated_on": "held-out rows (40)",
            },
        }
        first = top[0].id
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, base, "ana", f"/audits/{template.audit_id}")
    expect(page.locator("[data-testid=estimate]")).to_have_text("estimated 21 (15–27) wrong labels; 3 flagged")
    expect(page.locator("[data-testid=review-progress]")).to_contain_text("0 of 3 flagged reviewed, 3 left")
    facts = page.locator("[data-testid=summary]")
    for text in ("model", "logreg", "solver", "damping", "ranking", "prefers another label by"):
        expect(facts).to_contain_text(text)
    assert page.locator(".card .flag").count() == 3
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=False)

    page.goto(f"{base}/findings/{first}")
    worth = page.locator("[data-testid=worth]")
    expect(worth).to_contain_text("What fixing it is worth")
    expect(worth).to_contain_text("-0.0042")
    expect(worth).to_contain_text("+0.50 points")
    helpful, harmful = page.locator("[data-testid=helpful] .num"), page.locator("[data-testid=harmful] .num")
    expect(helpful.first).to_contain_text("supports the given label")
    expect(harmful.first).to_contain_text("argues against it")
    shares = [float(t.rsplit(" ", 1)[1].rstrip("%")) for t in harmful.all_inner_texts() + helpful.all_inner_texts()]
    assert shares and all(0 < x < 100 for x in shares) and sum(shares) <= 100
    expect(page.locator("[data-testid=flagged]")).to_contain_text("flagged")
    page.screenshot(path=str(ARTIFACTS / "evidence.png"), full_page=True)
    # confirm, then confirm again: the second records nothing and the page's script is fine
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    for _ in range(2):
        with page.expect_navigation():
            page.keyboard.press("c")
        expect(page.locator("[data-testid=current-decision]")).to_contain_text("confirmed by ana (version 1)")
    with sessions() as s:
        assert [e.decision for e in review_store.list_review_events(s)] == ["confirmed"]
    assert errors == []
    # `auditor serve` logged each request, one line apiece (uvicorn's access log)
    logged = (tmp_path / "serve.log").read_text()
    assert f'"GET /findings/{first} HTTP/1.1" 200' in logged
    assert f'"GET /api/audits/{template.audit_id}/examples/' in logged


def test_a_running_audit_appears_and_moves_without_a_reload(server, template, browser) -> None:
    """An audit started while the list is open appears in it; its page follows its progress bar,
    message and time left from the store, bulk actions wait, and it shows the queue when done."""
    from playwright.sync_api import expect

    base, sessions = server
    page = browser.new_page()
    sign_in(page, base, "ana", "/")
    with sessions() as s, s.begin():
        audit = audit_store.create_audit(s, "label-check", dataset_store.get_dataset(s, template.dataset))
        audit_store.set_audit_status(s, audit.id, "running")
        audit_store.update_progress(s, audit.id, 0.1, "training model")
        running = audit.id
    row = page.locator(f"tr[data-audit='{running}']")
    expect(row).to_be_visible(timeout=10_000)  # no reload: the list polls the API
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".msg")).to_have_text("training model")

    page.goto(f"{base}/audits/{running}")
    banner = page.locator("[data-testid=running]")
    expect(banner.locator(".pct")).to_have_text("10%")
    assert page.locator("[data-testid=accept-top]").is_disabled()
    with sessions() as s, s.begin():
        phase = {"fraction": 0.3, "started_at": time.time() - 20}
        audit_store.update_progress(s, running, 0.6, "self-influence (600/1,000 examples)", phase=phase)
    expect(banner.locator(".pct")).to_have_text("60%", timeout=10_000)
    expect(banner.locator(".msg")).to_have_text("self-influence (600/1,000 examples)")
    expect(banner.locator(".eta")).to_contain_text("left")  # 0.3 in 20 s: about 27 s
    with sessions() as s, s.begin():
        audit_store.set_audit_status(s, running, "succeeded", message="done")
    expect(page.locator("[data-testid=status]")).to_have_text("succeeded", timeout=10_000)
    expect(banner).to_be_hidden()
    assert not page.locator("[data-testid=accept-top]").is_disabled()


def test_a_viewer_sees_the_queue_but_cannot_decide(server, template, browser) -> None:
    base, sessions = server
    page = browser.new_page()
    sign_in(page, base, "vic", f"/audits/{template.audit_id}")
    assert page.locator("[data-testid=card]").count() > 0
    assert page.locator("[data-testid=bulk]").count() == 0
    page.keyboard.press("c")  # no effect for a viewer
    with sessions() as s:
        finding_id = finding_store.list_findings(s, template.audit_id, top=1)[0].id
    # even a hand-made request from the signed-in page is refused
    status = page.evaluate(
        """async (id) => (await fetch(`/api/findings/${id}/decision`, {method: "POST",
            headers: {"Content-Type": "application/json",
                      "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
            body: JSON.stringify({decision: "dismissed"})})).status""",
        finding_id,
    )
    assert status == 403
    with sessions() as s:
        assert review_store.list_review_events(s) == []
