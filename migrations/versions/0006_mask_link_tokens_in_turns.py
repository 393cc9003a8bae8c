"""conversation_turns: link tokens, card numbers and SSNs cut out of the texts stored before

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A /pay/card/<token> or /pay/auth/<token> link lets whoever holds it save a card or approve a
payment. Texts are now stored with the token replaced by "[redacted]" (bot.redact); this masks
the ones stored before, so no live link stays in the database or its next backup. A queued
text not sent yet gets new links when it goes (billing.links.with_new_links).

Card and Social Security numbers payers texted are now cut out before a text is stored
(bot.redact.sensitive_numbers_removed); this cuts them out of the inbound texts stored before.

The downgrade leaves the texts as they are: what was cut out is gone on purpose.
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# bot.redact's patterns as of this migration, copied so the migration stays what it was.
_LINK_TOKEN = re.compile(r"(/pay/(?:card|auth)/)[A-Za-z0-9_%=-]+")
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
_SSN = re.compile(r"(?<![\d])\d{3}([ -])\d{2}\1\d{4}(?![ -]?\d)")
_NAMED_SSN = re.compile(r"\b(ssn|social|seguro|security)\b(\W{0,3})\d{9}(?!\d)", re.IGNORECASE)
_TURNS = sa.table(
    "conversation_turns",
    sa.column("id", sa.Integer),
    sa.column("direction", sa.String),
    sa.column("body", sa.Text),
)
_BATCH = 1000


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
    _cut_sensitive_numbers(connection)


def _cut_sensitive_numbers(connection: sa.Connection) -> None:
    """Every inbound text, a batch at a time: no SQL both databases share can find digits."""
    last_id = 0
    while True:
        batch = connection.execute(
            sa.select(_TURNS.c.id, _TURNS.c.body)
            .where(_TURNS.c.direction == "inbound", _TURNS.c.id > last_id)
            .order_by(_TURNS.c.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        last_id = batch[-1].id
        for turn_id, body in batch:
            if sum(ch.isdigit() for ch in body) < 9:
                continue
            cut = _CARD.sub("[card number removed]", body)
            cut = _SSN.sub("[SSN removed]", cut)
            cut = _NAMED_SSN.sub(r"\1\2[SSN removed]", cut)
            if cut != body:
                connection.execute(_TURNS.update().where(_TURNS.c.id == turn_id).values(body=cut))


def downgrade() -> None:
    pass
