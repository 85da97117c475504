"""Human handoff: who answers each conversation (the bot, nobody yet, or a person).

Adds to ``conversations``:

- ``handoff_state``: ``bot`` | ``waiting`` | ``agent``; every existing conversation is with
  the bot (the server default fills the column for rows already there);
- ``handoff_reason``, ``handoff_at``, ``handoff_agent``, ``handoff_nlu``: the latest
  handoff's why (a route's reason or the caller's), when, which agent answered, and the
  decision that triggered it (JSON; null for a handoff asked through the API);
- an index on (``handoff_state``, ``handoff_at``): agents list the waiting conversations,
  newest first, without reading every conversation.

Plain ``ADD COLUMN`` on both databases (batch mode on SQLite copies nothing for an added
column), so the upgrade is quick on a large table.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_conversations_handoff"


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column("handoff_state", sa.String(16), nullable=False, server_default="bot")
        )
        batch.add_column(sa.Column("handoff_reason", sa.String(200), nullable=True))
        batch.add_column(sa.Column("handoff_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("handoff_agent", sa.String(64), nullable=True))
        batch.add_column(sa.Column("handoff_nlu", sa.Text(), nullable=True))
    op.create_index(INDEX, "conversations", ["handoff_state", "handoff_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="conversations")
    with op.batch_alter_table("conversations") as batch:
        for name in ("handoff_nlu", "handoff_agent", "handoff_at", "handoff_reason"):
            batch.drop_column(name)
        batch.drop_column("handoff_state")
