"""admin_users: session_version, bumped to end every session of the user

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Sessions are signed cookies, so until now signing out only made the browser forget its cookie: a
copy taken before kept working until it expired. The session now carries the user's id and this
number, and a cookie whose number is no longer the stored one is refused. Sign-out and a role
change bump it. Cookies signed before this migration carry no number and are refused once, so
everyone signs in again after the upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("admin_users") as batch_op:
        batch_op.add_column(
            sa.Column("session_version", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("admin_users") as batch_op:
        batch_op.drop_column("session_version")
