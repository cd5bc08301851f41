"""Review app latency at 10k to 1M findings: the requests a reviewer's page makes.

    python bench/review_app.py --sizes 10000,100000,1000000

For each size, one label-check audit with N findings (10 classes, a payload like a real label
check's) is stored in a scratch PostgreSQL database, the top 2,000 get a decision,
and the app (in process, over ASGI, with a bearer token) answers: the first queue page, a page
deep in the queue, the class filter, the undecided filter, one finding, and a decision. Median
of 5 requests each, in milliseconds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastapi.testclient import TestClient  # noqa: E402
from store import postgres_database  # noqa: E402

from auditor import auth  # noqa: E402
from auditor.analyses.base import FindingRecord  # noqa: E402
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import dispose_engines, open_store  # noqa: E402
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.migrate import upgrade  # noqa: E402
from auditor.web.app import create_app  # noqa: E402


def records(n: int) -> list[FindingRecord]:
    return [
        FindingRecord(
            example_index=i, example_key=f"{i:032x}", kind="label", score=float(n - i), rank=i + 1,
            label=i % 10,
            payload={"self_influence": 1.0, "loss": 0.5, "margin": 0.1, "loo_margin": 0.2, "predicted": (i + 1) % 10,
                     "suggested_label": (i + 1) % 10, "prob_label": 0.3, "loo_prob_label": 0.2},
        )
        for i in range(n)
    ]  # fmt: skip


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(n: int, tmp: Path) -> dict[str, float]:
    import numpy as np
    from sqlalchemy import select

    from auditor.data.base import Examples
    from auditor.store.models import Dataset, Finding

    with postgres_database() as url:
        upgrade(url)
        sessions = open_store(url)
        with sessions() as s, s.begin():
            ds = dataset_store.create_dataset(s, "big", "/nowhere", "npz")
            s.flush()
            keys = [f"{i:032x}" for i in range(n)]
            ex = Examples(np.zeros((n, 1), np.float32), np.arange(n) % 10, keys)
            dataset_store.record_snapshot(s, ds, ex)
            s.get(Dataset, ds.id).class_names = [f"class-{c}" for c in range(10)]
            audit = audit_store.create_audit(s, "label-check", ds)
            audit_store.set_audit_status(s, audit.id, "running")
            finding_store.upsert_findings(s, audit.id, records(n))
            audit_store.set_audit_status(s, audit.id, "succeeded")
            user = auth.add_user(s, "ana", "reviewer", "long enough")
            token = auth.issue_token(s, user)
            audit_id = audit.id
            ids = list(s.scalars(select(Finding.id).where(Finding.audit_id == audit_id).order_by(Finding.rank)))
        decided = min(2000, n // 10)
        with sessions() as s, s.begin():
            for fid in ids[:decided]:
                review_store.decide(s, fid, "dismissed", reviewer="ana")
        h = {"Authorization": f"Bearer {token}"}
        out = {}
        with TestClient(create_app(sessions, home=tmp)) as c:
            base = f"/api/audits/{audit_id}/findings"
            out["first page"] = median_ms(lambda: c.get(base, headers=h).raise_for_status())
            out["page at 90%"] = median_ms(lambda: c.get(base, headers=h, params={"offset": int(n * 0.9)}).raise_for_status())
            out["class filter"] = median_ms(lambda: c.get(base, headers=h, params={"label": "class-7"}).raise_for_status())
            out["undecided"] = median_ms(lambda: c.get(base, headers=h, params={"decision": "undecided"}).raise_for_status())
            out["one finding"] = median_ms(lambda: c.get(f"/api/findings/{ids[-1]}", headers=h).raise_for_status())
            pending = iter(ids[decided:])

            def decide() -> None:
                fid = next(pending)
                c.post(f"/api/findings/{fid}/decision", headers=h, json={"decision": "dismissed"}).raise_for_status()

            out["decision"] = median_ms(decide)
        dispose_engines()
    return out


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(f"n = {n:,} ...", file=sys.stderr, flush=True)
            rows[n] = run(n, Path(tmp))
    cols = list(next(iter(rows.values())))
    print("| findings | " + " | ".join(f"{c} (ms)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n, r in rows.items():
        print(f"| {n:,} | " + " | ".join(f"{r[c]:.0f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
