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
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("queue_rank", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_findings_audit_flagged_queue", ["audit_id", "flagged", "queue_rank"])
    op.execute("UPDATE findings SET queue_rank = rank")


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.drop_index("ix_findings_audit_flagged_queue")
        batch.drop_column("queue_rank")
        batch.drop_column("flagged")
