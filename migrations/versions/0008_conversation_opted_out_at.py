"""conversations: opted_out_at, the number's own opt-out, enrolled or not

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Opt-outs were recorded only on enrollments, so a number on no case that texted STOP was told
no more messages would be sent and then forgotten: it was answered again, and invited when staff
or an import later enrolled it. Every STOP now also sets the number's conversation row's
opted_out_at, and START (or YES) clears it. The phone's conversation is already read with its
enrollments by the webhook's one query, so the check costs a text nothing more.

Numbers that texted STOP on no case before this migration are found in the turn log: their last
STOP came after their last START, and no enrollment records that opt-out or a consent since: the
number is on no case, or only pending on some (an import or staff enrolled it after its STOP,
which then made it pending, to be invited).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.add_column(sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=True))
    turns = sa.table(
        "conversation_turns",
        sa.column("phone"),
        sa.column("direction"),
        sa.column("intent"),
        sa.column("created_at"),
    )
    conversations = sa.table("conversations", sa.column("phone"), sa.column("opted_out_at"))
    enrollments = sa.table("enrollments", sa.column("phone"), sa.column("status"))

    def last(intent: str):
        return (
            sa.select(sa.func.max(turns.c.created_at))
            .where(
                turns.c.phone == conversations.c.phone,
                turns.c.direction == "inbound",
                turns.c.intent == intent,
            )
            .scalar_subquery()
        )

    last_stop, last_start = last("stop"), last("start")
    op.execute(
        conversations.update()
        .where(
            # An opted-out enrollment holds the STOP already; an active one was consented since.
            ~conversations.c.phone.in_(
                sa.select(enrollments.c.phone).where(enrollments.c.status != "pending")
            ),
            last_stop.is_not(None),
            sa.or_(last_start.is_(None), last_start < last_stop),
        )
        .values(opted_out_at=last_stop)
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_column("opted_out_at")
