"""One ``seq`` per message in a conversation: unique (conversation_id, seq).

Servers before this revision picked ``seq`` by counting a conversation's rows, so two
concurrent appends could get the same number. Conversations with such clashes are first
renumbered 0, 1, 2, ... in their stored order (seq, then time, then id), so the constraint
can be added to any existing database. Batch mode rebuilds the table on SQLite, which cannot
add a constraint to an existing table.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CONSTRAINT = "uq_messages_conversation_seq"
messages = sa.table(
    "messages",
    sa.column("id", sa.String),
    sa.column("conversation_id", sa.String),
    sa.column("seq", sa.Integer),
    sa.column("created_at", sa.DateTime),
)


def renumber_clashing_conversations() -> None:
    bind = op.get_bind()
    clashing = bind.scalars(
        sa.select(messages.c.conversation_id)
        .group_by(messages.c.conversation_id, messages.c.seq)
        .having(sa.func.count() > 1)
    ).all()
    for conversation_id in sorted(set(clashing)):
        ids = bind.scalars(
            sa.select(messages.c.id)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.seq, messages.c.created_at, messages.c.id)
        ).all()
        for seq, message_id in enumerate(ids):
            bind.execute(sa.update(messages).where(messages.c.id == message_id).values(seq=seq))


def upgrade() -> None:
    renumber_clashing_conversations()
    with op.batch_alter_table("messages") as batch:
        batch.create_unique_constraint(CONSTRAINT, ["conversation_id", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint(CONSTRAINT, type_="unique")
