"""conversation_turns: the tokens of card and approval links in stored texts masked

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A /pay/card/<token> or /pay/auth/<token> link lets whoever holds it save a card or approve a
payment. Texts are now stored with the token replaced by "[redacted]" (bot.redact); this masks
the ones stored before, so no live link stays in the database or its next backup. A queued
text not sent yet gets new links when it goes (billing.links.with_new_links). The downgrade
leaves the texts masked: the tokens are gone on purpose.
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# bot.redact's pattern as of this migration, copied so the migration stays what it was.
_LINK_TOKEN = re.compile(r"(/pay/(?:card|auth)/)[A-Za-z0-9_%=-]+")
_TURNS = sa.table("conversation_turns", sa.column("id", sa.Integer), sa.column("body", sa.Text))


def upgrade() -> None:
    connection = op.get_bind()
    with_links = connection.execute(
        sa.select(_TURNS.c.id, _TURNS.c.body).where(
            sa.or_(_TURNS.c.body.like("%/pay/card/%"), _TURNS.c.body.like("%/pay/auth/%"))
        )
    ).all()
    for turn_id, body in with_links:
        masked = _LINK_TOKEN.sub(r"\g<1>[redacted]", body)
        if masked != body:
            connection.execute(
                _TURNS.update().where(_TURNS.c.id == turn_id).values(body=masked)
            )


def downgrade() -> None:
    pass
