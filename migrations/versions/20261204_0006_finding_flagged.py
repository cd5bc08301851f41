"""findings.flagged and queue_rank: the review workload (a label check's estimate of the wrong
labels) vs ranked only, and the queue's order once decisions re-rank it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN, never a batch copy of the table: on SQLite a copy drops the
    # old `findings` table, and with foreign keys on that sets every review's finding_id to NULL.
    op.add_column("findings", sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("findings", sa.Column("queue_rank", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_findings_audit_flagged_queue", "findings", ["audit_id", "flagged", "queue_rank"])
    op.execute("UPDATE findings SET queue_rank = rank")


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), for the same reason as above
    op.drop_index("ix_findings_audit_flagged_queue", "findings")
    op.drop_column("findings", "queue_rank")
    op.drop_column("findings", "flagged")
