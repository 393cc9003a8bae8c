"""enrollments: invite_at, when an invitation held for the payer's quiet hours goes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Opt-in invitations were texted the moment staff asked, at any hour. One asked for in the
payer's quiet hours now waits in this column for the window to open, and the reminder dispatch
sends it then; sent (invited_at set), or no longer wanted, it is cleared. Indexed because that
dispatch looks for due ones every minute; the column is empty on every row but the few waiting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.add_column(sa.Column("invite_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_enrollments_invite_at", ["invite_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.drop_index("ix_enrollments_invite_at")
        batch_op.drop_column("invite_at")
