"""payments: review_reason, why staff should look at a payment

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A payment the payer was told had failed can still go through at Stripe (a charge request that
timed out and landed later, a bank approval given after a failure was reported). The money is
kept on the balance, and the payment is marked so that the case page asks staff to check for
a double payment, until one of them marks it reviewed (reviewed_at, reviewed_by).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch_op:
        batch_op.add_column(sa.Column("review_reason", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reviewed_by", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_payments_reviewed_by_admin_users", "admin_users", ["reviewed_by"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch_op:
        batch_op.drop_constraint("fk_payments_reviewed_by_admin_users", type_="foreignkey")
        batch_op.drop_column("reviewed_by")
        batch_op.drop_column("reviewed_at")
        batch_op.drop_column("review_reason")
