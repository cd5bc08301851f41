"""What the routes share, as FastAPI dependencies: the unit of work, who is asking, may they.

    def decide(finding_id: FindingId, body: DecisionRequest, user: Decider, s: DB): ...

`DB` is one transaction per request, committed before the response is sent; `Reader` is any
signed-in user (cookie or bearer token), `Decider` one who may decide, with the CSRF token
checked for a cookie session. Pages call `page_user` in their body instead: a page's query is
checked before it asks who you are, as it always has.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from auditor.auth import Principal
from auditor.web.examples import ExampleStore
from auditor.web.security import check_csrf, identify

MAX_ID = 2**63 - 1


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as s, s.begin():
        yield s


# scope="function", said explicitly: the transaction commits before the response is sent, so a
# 200 means stored (a "request" scope would commit after a 200 was already sent)
DB = Annotated[Session, Depends(get_db, scope="function")]


def _signed_in(request: Request, s: DB) -> tuple[Principal, bool]:
    user, by_token = identify(request, s)
    if user is None:
        raise HTTPException(
            401, "sign in first: POST /login, or send Authorization: Bearer <token>"
        )
    return user, by_token


def current_user(request: Request, s: DB) -> Principal:
    return _signed_in(request, s)[0]


def deciding_user(request: Request, s: DB) -> Principal:
    user, by_token = _signed_in(request, s)
    check_csrf(request, by_token)
    if not user.can_decide:
        raise HTTPException(403, f"user {user.name!r} is a {user.role} and cannot decide")
    return user


def page_user(request: Request, s: Session) -> Principal:
    """The signed-in user of a page, or 401 (which a browser sees as a redirect to /login)."""
    user, _ = identify(request, s)
    if user is None:
        raise HTTPException(401, "sign in first")
    return user


def example_store(request: Request) -> ExampleStore:
    return request.app.state.examples


Reader = Annotated[Principal, Depends(current_user)]
Decider = Annotated[Principal, Depends(deciding_user)]
Pictures = Annotated[ExampleStore, Depends(example_store)]
AuditId = Annotated[int, Path(ge=1, le=MAX_ID)]
FindingId = Annotated[int, Path(ge=1, le=MAX_ID)]
ExampleIndex = Annotated[int, Path(ge=0, le=MAX_ID)]


class Strict(BaseModel):
    """A request body that refuses fields it does not know (422)."""

    model_config = ConfigDict(extra="forbid")


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get(
        "accept", ""
    )
