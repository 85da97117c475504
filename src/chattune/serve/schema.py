"""The database: tables, SQLite settings, migrations and ``--db`` URLs.

The tables are declared here for SQLAlchemy's ORM; they are *created* only by the Alembic
migrations in ``serve/migrations`` (``migrate``), which also upgrade older databases.
SQLite runs in WAL mode with ``synchronous=FULL``: a write that returned has reached the log,
and a server killed mid-write leaves an intact database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MIGRATIONS = Path(__file__).parent / "migrations"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def owner_of(api_key: str | None) -> str:
    """Who owns data made with ``api_key``: a hash, so keys are never stored."""
    if not api_key:
        return "anonymous"
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class Base(DeclarativeBase):
    pass


#: Who answers a conversation: the bot, nobody yet (``waiting`` for a person), or a person.
HandoffState = Literal["bot", "waiting", "agent"]
#: The states in which the bot stays silent.
HANDED_OFF: tuple[HandoffState, ...] = ("waiting", "agent")


class ConversationRow(Base):
    """A conversation and who answers it (migration 0003 added the ``handoff_*`` columns).

    ``handoff_state`` is the truth the server acts on; the other ``handoff_*`` columns
    describe the latest handoff (why, when, the decision that triggered it, which agent)
    and are kept after a release, for the record.
    """

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_handoff", "handoff_state", "handoff_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    handoff_state: Mapped[str] = mapped_column(String(16), default="bot", server_default="bot")
    handoff_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    handoff_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    handoff_agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    handoff_nlu: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the decision
    messages: Mapped[list[MessageRow]] = relationship(
        order_by="MessageRow.seq", cascade="all, delete-orphan"
    )


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    meta: Mapped[str] = mapped_column(Text, default="{}")  # JSON: sources, nlu, author


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    rating: Mapped[int] = mapped_column(Integer)  # +1 / -1
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime]


def sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=5000")  # first: the others may wait for a lock
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (Alembic ``upgrade``; the newest by
    default). Safe to call from several processes at once: see ``migrations/env.py``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an .ini parser: a literal "%" (URL-quoted passwords) is written "%%".
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def database_url(value: str | None) -> str:
    """``--db``: a SQLAlchemy URL, or a plain path meaning a SQLite file."""
    if not value:
        value = "chattune.db"
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"
