"""Bulk-store throughput: upsert N findings into PostgreSQL and SQLite, then upsert them again.

    python bench/store.py --rows 1000000

The first pass inserts every row; the second changes every score and goes through the
ON CONFLICT DO UPDATE path, which is what a retried worker task does. Times include turning
FindingRecords into rows and the commit. Prints a markdown table. PostgreSQL is reached as user
postgres on 127.0.0.1:5432; a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from auditor.analyses.base import FindingRecord
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store.db import session_factory
from auditor.store.migrate import upgrade
from auditor.store.models import Finding, Snapshot

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"


def records(n: int, score_offset: float) -> list[FindingRecord]:
    return [
        FindingRecord(
            example_index=i,
            example_key=f"{i:032x}",
            kind="label",
            score=float(n - i) + score_offset,
            rank=i,
            label=i % 10,
            payload={"p_given": round((i % 97) / 97, 4)},
        )
        for i in range(n)
    ]


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"auditor_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{Path(folder) / 'bench.db'}"


def run(url: str, n: int) -> tuple[float, float, int]:
    """Seconds for the first upsert, seconds for the re-upsert, rows in the table afterwards."""
    upgrade(url)
    sessions = session_factory(url)
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "bench", "/dev/null", "npz")
        s.flush()
        snapshot = Snapshot(dataset_id=dataset.id, content_hash="0" * 64, n=n)
        s.add(snapshot)
        s.flush()
        audit_id = audit_store.create_audit(s, "label-check", dataset, snapshot=snapshot).id
    timings = []
    for offset in (0.0, 0.5):
        batch = records(n, offset)
        start = time.perf_counter()
        with sessions() as s, s.begin():
            finding_store.upsert_findings(s, audit_id, batch)
        timings.append(time.perf_counter() - start)
        del batch
    with sessions() as s:
        count = s.scalar(select(func.count()).select_from(Finding)) or 0
        assert s.scalar(select(func.max(Finding.score))) == n + 0.5
    sessions.kw["bind"].dispose()
    return timings[0], timings[1], count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    databases = {"postgres": postgres_database, "sqlite": sqlite_database}
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        f"Findings upsert, {args.rows:,} rows, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average at start {load}), Python {sys.version.split()[0]}",
        "",
        "| backend | rows | first insert (s) | rows/s | re-upsert, all rows updated (s) | rows/s "
        "| rows after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in args.backends.split(","):
        with databases[backend]() as url:
            first, again, count = run(url, args.rows)
        lines.append(
            f"| {backend} | {args.rows:,} | {first:.1f} | {args.rows / first:,.0f} | {again:.1f} "
            f"| {args.rows / again:,.0f} | {count:,} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
