"""Property-based run of the review API against its own OpenAPI schema (schemathesis): for
generated requests, valid and not, signed in as a reviewer, the app never fails with a server
error, and every error it answers is one line of JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from review_data import Template, build_template, drop
from schemathesis.checks import not_a_server_error

from auditor import auth
from auditor.store import open_store
from auditor.web.app import create_app

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Iterator[Template]:
    t = build_template("sqlite", tmp_path_factory.mktemp("schema"), n=120)
    yield t
    drop(t.url)


@pytest.fixture(scope="module")
def served(template: Template, tmp_path_factory) -> Iterator[tuple[object, str]]:
    where = tmp_path_factory.mktemp("schema-db")
    url = template.copy(where)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        user = auth.add_user(s, "ana", "reviewer", PASSWORD)
        token = auth.issue_token(s, user)
    yield create_app(sessions, home=Path(where) / "home"), token
    drop(url)


def one_line_errors(ctx, response, case) -> None:
    """Every error is `{"detail": "<one line>"}` (images and successes are not errors)."""
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail, response.text


def test_the_api_never_fails_on_generated_requests(served) -> None:
    """Each operation of the schema, with generated path, query and body values (positive and
    negative), as a signed-in reviewer. (Driven through Hypothesis directly: schemathesis's
    pytest plugin does not run under this pytest.)"""
    app, token = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error, one_line_errors]
            )
            statuses.append(response.status_code)

        run()
    # the run really exercised the app: many requests, some answered, some refused
    assert len(statuses) > 100, len(statuses)
    assert any(200 <= c < 300 for c in statuses) and any(400 <= c < 500 for c in statuses)
    print(f"{len(statuses)} generated requests: " + ", ".join(f"{c}: {statuses.count(c)}" for c in sorted(set(statuses))))
