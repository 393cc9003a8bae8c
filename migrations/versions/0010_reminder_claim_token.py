"""reminders: claim_token, the claim's token, apart from the attempts counter

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Each claim of a reminder bumped `attempts`, which was also the claim's token, so a reminder
held for a payment in flight (looked at every six hours, up to a day) or for quiet hours used
up the tries meant for send failures (MAX_ATTEMPTS) and lengthened their backoff. The token is
now a column of its own; `attempts` counts only the times a reminder's texts were tried. It
starts equal to `attempts`, so send jobs already queued keep their claims across the upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reminders") as batch_op:
        batch_op.add_column(
            sa.Column("claim_token", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute("UPDATE reminders SET claim_token = attempts")


def downgrade() -> None:
    # Before this revision `attempts` counted claims and was the token: so it is again.
    op.execute("UPDATE reminders SET attempts = claim_token")
    with op.batch_alter_table("reminders") as batch_op:
        batch_op.drop_column("claim_token")
