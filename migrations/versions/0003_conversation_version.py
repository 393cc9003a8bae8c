"""conversations: a version number, bumped by every text that changes the conversation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

On SQLite the webhook reads a phone's conversation and facts without holding the database's one
write lock, and takes the lock only to save: it saves if the version is still the one it read,
and starts again with the lock held if another text from the phone got in first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_column("version")
