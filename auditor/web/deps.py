"""What the routes share, as FastAPI dependencies: the unit of work, who is asking, may they.

    def decide(finding_id: FindingId, body: DecisionRequest, user: Decider, s: DB): ...

`DB` is one transaction per request, committed before the response is sent; `Reader` is any
signed-in user (cookie or bearer token), `Decider` one who may decide, with the CSRF token
checked for a cookie session. Pages call `page_user` in their body instead: a page's query is
checked before it asks who you are, as it always has.

Reviewers colliding must not take the app down, so the unit of work is gated (`DbGate`):
- a request takes a database slot before its transaction begins, waiting in the event loop
  (not in a thread), and there are no more slots than the pool has connections: no request
  thread ever waits for a connection while holding one of the threads that others need to
  finish (that was a 30 s stall, then a 500, with 40 threads over 15 connections);
- GET and HEAD requests read (`ReadDB` for any other read-only route): on SQLite a DEFERRED
  transaction that never waits for the writer in WAL mode; every other request writes: on
  SQLite one writing request at a time in this process (SQLite has one writer anyway; a queue
  in the event loop instead of polling on busy_timeout), on PostgreSQL with its row lock waits
  bounded (`LOCK_TIMEOUT_MS`), a lost wait being a 409 "try again";
- commit, rollback and close run on threads of their own, never queued behind request threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from auditor.auth import Principal
from auditor.store.db import begin_unit
from auditor.web.examples import ExampleStore
from auditor.web.security import check_csrf, identify

MAX_ID = 2**63 - 1
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCK_TIMEOUT_MS = 2_000  # a decision waits this long for another reviewer's, then is a 409
SLOT_WAIT_S = 20.0  # last resort: a request that waited this long for the database is a 503
DEFAULT_SLOTS = 5  # for a pool that does not say its size
THREAD_HEADROOM = 8  # request threads beyond the slots, for routes that do not use the database


@dataclass
class DbGate:
    """How many requests may use the database at once, and how many of them may write."""

    slots: int
    any_request: anyio.Semaphore
    writer: anyio.Semaphore | None  # SQLite: one writing request at a time
    cleanup: anyio.CapacityLimiter  # threads for commit / rollback / close

    @asynccontextmanager
    async def enter(self, writes: bool) -> AsyncIterator[None]:
        # a writer waits for the write slot first, so waiting writers never hold the slots
        # that readers need
        gates = [self.writer, self.any_request] if writes else [self.any_request]
        held: list[anyio.Semaphore] = []
        try:
            for gate in gates:
                if gate is None:
                    continue
                try:
                    with anyio.fail_after(SLOT_WAIT_S):
                        await gate.acquire()
                except TimeoutError:
                    raise HTTPException(
                        503, f"the review app is busy: no database slot (of {self.slots}) came "
                        f"free in {SLOT_WAIT_S:.0f} s; nothing was stored, try again",
                    ) from None  # fmt: skip
                held.append(gate)
            yield
        finally:
            for gate in reversed(held):
                gate.release()


def db_gate(app: FastAPI) -> DbGate:
    """The app's gate, made on first use from its engine: as many slots as the pool keeps
    connections (`auditor serve` sizes the pool; its overflow is left for the few routes that
    open sessions of their own), and at least that many request threads plus headroom."""
    gate = getattr(app.state, "db_gate", None)
    if gate is None:
        engine = app.state.sessions.kw["bind"]
        size = getattr(engine.pool, "size", None)
        slots = max(1, size()) if callable(size) else DEFAULT_SLOTS
        threads = anyio.to_thread.current_default_thread_limiter()
        threads.total_tokens = max(int(threads.total_tokens), slots + THREAD_HEADROOM)
        writer = anyio.Semaphore(1) if engine.dialect.name == "sqlite" else None
        gate = app.state.db_gate = DbGate(
            slots, anyio.Semaphore(slots), writer, anyio.CapacityLimiter(slots)
        )
    return gate


@asynccontextmanager
async def _unit_of_work(request: Request, writes: bool) -> AsyncIterator[Session]:
    gate = db_gate(request.app)
    async with gate.enter(writes):
        s = request.app.state.sessions()
        finish = partial(anyio.to_thread.run_sync, limiter=gate.cleanup)
        try:
            await anyio.to_thread.run_sync(
                partial(begin_unit, s, writes=writes, lock_timeout_ms=LOCK_TIMEOUT_MS)
            )
            yield s
            with anyio.CancelScope(shield=True):
                await finish(s.commit)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await finish(s.rollback)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await finish(s.close)


async def get_db(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work: a reader for GET and HEAD, a writer otherwise."""
    async with _unit_of_work(request, request.method not in READ_METHODS) as s:
        yield s


async def get_read_db(request: Request) -> AsyncIterator[Session]:
    """A read-only unit of work whatever the method (a POST that only reads, such as sign-in)."""
    async with _unit_of_work(request, False) as s:
        yield s


# scope="function", said explicitly: the transaction commits before the response is sent, so a
# 200 means stored (a "request" scope would commit after a 200 was already sent)
DB = Annotated[Session, Depends(get_db, scope="function")]
ReadDB = Annotated[Session, Depends(get_read_db, scope="function")]


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
