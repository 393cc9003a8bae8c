"""enrollments: one index on (phone, status) instead of phone alone

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Every inbound text looks up its phone's enrollments, often with a status too (activate the
pending ones, re-subscribe the opted-out ones). With separate phone and status indexes and no
statistics, SQLite chose the status index and read every enrollment in that status.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.create_index("ix_enrollments_phone_status", ["phone", "status"], unique=False)
        batch_op.drop_index("ix_enrollments_phone")


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.create_index("ix_enrollments_phone", ["phone"], unique=False)
        batch_op.drop_index("ix_enrollments_phone_status")
