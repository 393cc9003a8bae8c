"""payments: disputed_cents, what a dispute (chargeback) put back on the case's balance

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A payment whose money the payer's bank took back is marked disputed (a status value: statuses
are plain strings and need no migration) and its amount is owed again; the amount is kept so
that a dispute the agency wins takes exactly that off the balance again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch_op:
        batch_op.add_column(
            sa.Column("disputed_cents", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch_op:
        batch_op.drop_column("disputed_cents")
