"""Reviewers colliding: concurrent reviewers against a real `auditor serve` on 127.0.0.1.

    python bench/review_load.py                       # 20 and 100 reviewers, 60 s, both databases
    python bench/review_load.py --reviewers 20 --seconds 15 --backends postgres

For each database (a scratch PostgreSQL database, or a SQLite file) and each number of
reviewers: one succeeded label-check audit with `--findings` constructed findings (10 named
classes, a payload like a real label check's, the top tenth flagged) is stored, the tables are
analysed (as autovacuum would), one user and bearer token per reviewer is made, and
`auditor serve` is started. Every reviewer then loops for `--seconds`,
picking each step at random:

- 35% the audit's queue page (HTML, a random page of 48) and 15% a page of the API's queue;
- 30% a decision: read one finding of the hot set (the top `--hot` findings, which every
  reviewer shares, so reviewers collide), then decide it (dismiss or relabel, with the version
  just read);
- 10% a bulk accept of 20 random findings of the hot set, in random order;
- 10% an undo: read a finding of the hot set, undo it with the version just read.

Printed: requests/s, p50/p95/max latency, answers by status code, per kind of request, and a
check afterwards that the review events stored are exactly what the 2xx answers said (each
decision's, each bulk accept's confirmed findings, each undo), no more and no fewer. Only
127.0.0.1 is contacted; the load is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from store import postgres_database, sqlite_database  # noqa: E402

from auditor import auth  # noqa: E402
from auditor.analyses.base import FindingRecord  # noqa: E402
from auditor.data.base import Examples  # noqa: E402
from auditor.store import audits as audit_store  # noqa: E402
from auditor.store import datasets as dataset_store  # noqa: E402
from auditor.store import dispose_engines, open_store  # noqa: E402
from auditor.store import findings as finding_store  # noqa: E402
from auditor.store import reviews as review_store  # noqa: E402
from auditor.store import users as user_store  # noqa: E402
from auditor.store.migrate import upgrade  # noqa: E402

CLASSES = 10
PAGE = 48


def records(n: int) -> list[FindingRecord]:
    return [
        FindingRecord(
            example_index=i, example_key=f"{i:032x}", kind="label", score=float(n - i), rank=i + 1,
            label=i % CLASSES, flagged=i < n // 10,
            payload={"self_influence": 1.0 + (i % 7), "loss": 0.5 + (i % 5) / 10, "margin": 0.1 * (i % 3),
                     "loo_margin": 0.2, "predicted": (i + 1) % CLASSES, "suggested_label": (i + 1) % CLASSES,
                     "prob_label": 0.3, "loo_prob_label": 0.2},
        )
        for i in range(n)
    ]  # fmt: skip


@dataclass
class Store:
    url: str
    audit_id: int
    finding_ids: list[int]  # by rank
    tokens: list[tuple[str, str]]  # (reviewer, bearer token)


def populate(url: str, n: int, reviewers: int) -> Store:
    from sqlalchemy import select

    from auditor.store.models import Dataset, Finding

    upgrade(url)
    sessions = open_store(url)
    with sessions() as s, s.begin():
        ds = dataset_store.create_dataset(s, "load", "/nowhere", "npz")
        s.flush()
        keys = [f"{i:032x}" for i in range(n)]
        ex = Examples(np.zeros((n, 1), np.float32), np.arange(n) % CLASSES, keys)
        dataset_store.record_snapshot(s, ds, ex)
        s.get(Dataset, ds.id).class_names = [f"class-{c}" for c in range(CLASSES)]
        audit = audit_store.create_audit(s, "label-check", ds)
        audit_store.set_audit_status(s, audit.id, "running")
        finding_store.upsert_findings(s, audit.id, records(n))
        audit_store.set_audit_status(s, audit.id, "succeeded")
        password_hash = auth.hash_password("long enough")  # once: 200,000 rounds per user is slow
        tokens = []
        for r in range(reviewers):
            user = user_store.create_user(s, f"reviewer{r:03d}", "reviewer", password_hash)
            s.flush()
            tokens.append((user.name, auth.issue_token(s, user)))
        ids = list(
            s.scalars(select(Finding.id).where(Finding.audit_id == audit.id).order_by(Finding.rank))
        )
        audit_id = audit.id
    dispose_engines()
    analyze(url)
    return Store(url, audit_id, ids, tokens)


def analyze(url: str) -> None:
    """Table statistics, as autovacuum (PostgreSQL) would gather within a minute of the load:
    before them the planner takes the fresh tables for empty, and the queue page's review count
    was a nested loop of 80-220 ms at 3,000 findings."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
            c.execute("ANALYZE")
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as c:
            c.execute("ANALYZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(url: str, home: Path):
    port = free_port()
    env = {**os.environ, "AUDITOR_DATABASE_URL": url, "AUDITOR_HOME": str(home)}
    log = home.parent / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("auditor")), "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"auditor serve did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: Counter = field(default_factory=Counter)
    codes_by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    said: Counter = field(default_factory=Counter)  # (finding id, decision, reviewer) of 2xx writes
    samples: dict[int, str] = field(default_factory=dict)  # one body per error code

    def add(self, kind: str, r: httpx.Response | None, seconds: float, error: str = "") -> None:
        code = r.status_code if r is not None else 0  # 0: no answer (timeout, connection lost)
        self.latencies[kind].append(seconds)
        self.codes[code] += 1
        self.codes_by_kind[kind][code] += 1
        if code >= 400 or code == 0:
            self.samples.setdefault(code, r.text[:200] if r is not None else error)


async def reviewer(
    client: httpx.AsyncClient, name: str, token: str, store: Store, hot: list[int], stop: float,
    tally: Tally, rng: random.Random,
) -> None:  # fmt: skip
    h = {"Authorization": f"Bearer {token}"}
    pages = max(1, -(-len(store.finding_ids) // PAGE))

    async def timed(kind: str, method: str, path: str, **kwargs) -> httpx.Response | None:
        start = time.perf_counter()
        error = ""
        try:
            r = await client.request(
                method, path, headers={**h, **kwargs.pop("headers", {})}, **kwargs
            )
        except httpx.HTTPError as exc:
            r, error = None, f"{type(exc).__name__}: {exc}"
        tally.add(kind, r, time.perf_counter() - start, error)
        return r

    while time.monotonic() < stop:
        step = rng.random()
        if step < 0.35:
            await timed("queue page", "GET", f"/audits/{store.audit_id}", params={"page": rng.randint(1, pages)},
                        headers={"Accept": "text/html"})  # fmt: skip
        elif step < 0.50:
            await timed("api page", "GET", f"/api/audits/{store.audit_id}/findings",
                        params={"offset": rng.randrange(len(store.finding_ids)), "limit": PAGE})  # fmt: skip
        elif step < 0.80 or step >= 0.90:
            fid = rng.choice(hot)
            seen = await timed("read finding", "GET", f"/api/findings/{fid}")
            if seen is None or seen.status_code != 200:
                continue
            standing = seen.json().get("decision")
            version = standing["version"] if standing else None
            if step < 0.80:
                body = {"decision": "dismissed", "expected_version": version}
                if rng.random() < 0.5:
                    body = {
                        "decision": "relabelled",
                        "new_label": rng.randrange(CLASSES),
                        "expected_version": version,
                    }
                r = await timed("decision", "POST", f"/api/findings/{fid}/decision", json=body)
                if r is not None and r.status_code == 200:
                    tally.said[(fid, body["decision"], name)] += 1
            elif version is not None:
                r = await timed(
                    "undo", "POST", f"/api/findings/{fid}/undo", json={"expected_version": version}
                )
                if r is not None and r.status_code == 200:
                    tally.said[(fid, "undone", name)] += 1
        else:
            ids = rng.sample(hot, min(20, len(hot)))
            r = await timed("bulk accept", "POST", f"/api/audits/{store.audit_id}/accept-suggested",
                            json={"finding_ids": ids})  # fmt: skip
            if r is not None and r.status_code == 200:
                for fid in r.json()["confirmed"]:
                    tally.said[(fid, "confirmed", name)] += 1


async def load(
    base: str, store: Store, reviewers: int, seconds: float, hot: int, seed: int
) -> tuple[Tally, float]:
    tally = Tally()
    # idle connections are dropped before the server (uvicorn: 5 s) would close them: a request
    # sent on a connection the server is closing at that moment is lost in transit (ReadError)
    limits = httpx.Limits(
        max_connections=reviewers, max_keepalive_connections=reviewers, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        start = time.monotonic()
        stop = start + seconds
        hot_ids = store.finding_ids[:hot]
        await asyncio.gather(*(
            reviewer(client, name, token, store, hot_ids, stop, tally, random.Random(seed * 1000 + i))
            for i, (name, token) in enumerate(store.tokens[:reviewers])
        ))  # fmt: skip
        elapsed = time.monotonic() - start
    return tally, elapsed


def events_match(url: str, tally: Tally) -> tuple[bool, str]:
    sessions = open_store(url)
    with sessions() as s:
        stored = Counter(
            (e.finding_id, e.decision, e.reviewer) for e in review_store.list_review_events(s)
        )
    dispose_engines()
    extra, missing = stored - tally.said, tally.said - stored
    ok = not extra and not missing
    return ok, f"{sum(stored.values())} events, " + (
        "= 2xx answers"
        if ok
        else f"{sum(extra.values())} unanswered, {sum(missing.values())} missing"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def run(backend: str, reviewers: int, args: argparse.Namespace) -> dict:
    database = postgres_database if backend == "postgres" else sqlite_database
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        store = populate(url, args.findings, reviewers)
        with serving(url, Path(tmp) / "home") as (base, log, pid):
            cpu = cpu_seconds(pid)
            tally, elapsed = asyncio.run(
                load(base, store, reviewers, args.seconds, args.hot, args.seed)
            )
            cpu = cpu_seconds(pid) - cpu
            log_text = log.read_text()
            tracebacks = log_text.count("Traceback")
        ok, check = events_match(url, tally)
    every = [x for xs in tally.latencies.values() for x in xs]
    return {
        "backend": backend, "reviewers": reviewers, "seconds": elapsed, "requests": len(every),
        "rps": len(every) / elapsed, "cpu_ms": cpu * 1000 / max(1, len(every)), "p50": pct(every, 50), "p95": pct(every, 95), "max": pct(every, 100),
        "codes": tally.codes, "fivexx": sum(c for code, c in tally.codes.items() if code >= 500 or code == 0),
        "check": check, "ok": ok, "tracebacks": tracebacks, "tally": tally, "log": log_text,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backends", default="postgres,sqlite")
    ap.add_argument("--reviewers", default="20,100", help="comma-separated counts")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--findings", type=int, default=3000)
    ap.add_argument("--hot", type=int, default=300, help="the top findings every reviewer shares")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for backend in args.backends.split(","):
        for reviewers in (int(r) for r in args.reviewers.split(",")):
            print(
                f"{backend}, {reviewers} reviewers, {args.seconds:.0f} s ...",
                file=sys.stderr,
                flush=True,
            )
            rows.append(run(backend, reviewers, args))
    print(f"\n{args.findings:,} findings, hot set {args.hot}, {args.seconds:.0f} s per run\n")
    print("| database | reviewers | requests | req/s | server CPU ms/request | p50 ms | p95 ms | max ms "
          "| answers by code | 5xx | events | tracebacks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(r["codes"].items()))
        print(f"| {r['backend']} | {r['reviewers']} | {r['requests']} | {r['rps']:.1f} | {r['cpu_ms']:.0f} | {r['p50']:.0f} | "
              f"{r['p95']:.0f} | {r['max']:.0f} | {codes} | {r['fivexx']} | {r['check']} | {r['tracebacks']} |")  # fmt: skip
    print(
        "\n| database | reviewers | kind | requests | p50 ms | p95 ms | max ms | answers by code |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for kind, values in sorted(r["tally"].latencies.items()):
            codes = ", ".join(
                f"{c}: {n}" for c, n in sorted(r["tally"].codes_by_kind[kind].items())
            )
            print(f"| {r['backend']} | {r['reviewers']} | {kind} | {len(values)} | {pct(values, 50):.0f} | "
                  f"{pct(values, 95):.0f} | {pct(values, 100):.0f} | {codes} |")  # fmt: skip
    for r in rows:
        for code, text in sorted(r["tally"].samples.items()):
            print(f"\n{r['backend']} {r['reviewers']}: {code}: {text}", file=sys.stderr)
        if r["fivexx"] or r["tracebacks"]:
            print(f"\n{r['backend']} {r['reviewers']}: the server's log ends:", file=sys.stderr)
            print("\n".join(r["log"].splitlines()[-30:]), file=sys.stderr)
    if any(r["fivexx"] or not r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
