"""Conversations, messages and feedback, stored with SQLAlchemy (SQLite or PostgreSQL).

Every conversation belongs to an owner (a hash of the API key that created it); every read
and write is filtered by owner, so one key can never see or change another key's data.
SQLite runs in WAL mode with ``synchronous=FULL``: a write that returned has reached the
log, and a server killed mid-write leaves an intact database. The schema is created and
upgraded by Alembic migrations (``serve/migrations``), never by ``create_all``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

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


class ConversationRow(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    messages: Mapped[list[MessageRow]] = relationship(
        order_by="MessageRow.seq", cascade="all, delete-orphan"
    )


class MessageRow(Base):
    __tablename__ = "messages"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    meta: Mapped[str] = mapped_column(Text, default="{}")  # JSON: sources, finish reason


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    rating: Mapped[int] = mapped_column(Integer)  # +1 / -1
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime]


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


def database_url(value: str | None) -> str:
    """``--db``: a SQLAlchemy URL, or a plain path meaning a SQLite file."""
    if not value:
        value = "chattune.db"
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"


class Store:
    """All database access of the server; every method takes the caller's owner."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        migrate(self.url)
        self.engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def create_conversation(self, owner: str, title: str = "New chat") -> dict[str, Any]:
        row = ConversationRow(
            id=f"conv-{uuid.uuid4().hex[:20]}",
            owner=owner,
            title=title,
            created_at=now(),
            updated_at=now(),
        )
        with self.session() as s:
            s.add(row)
        return self._summary(row)

    def list_conversations(self, owner: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(
                select(ConversationRow)
                .where(ConversationRow.owner == owner)
                .order_by(ConversationRow.updated_at.desc())
            ).all()
            return [self._summary(r) for r in rows]

    def get_conversation(self, owner: str, conversation_id: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = self._owned(s, owner, conversation_id)
            if row is None:
                return None
            out = self._summary(row)
            out["messages"] = [
                {
                    "id": m.id,
                    "role": m.role,
                    "content": m.content,
                    "created_at": m.created_at.isoformat(),
                    **json.loads(m.meta or "{}"),
                }
                for m in row.messages
            ]
            return out

    def append(
        self,
        owner: str,
        conversation_id: str,
        role: str,
        content: str,
        meta: dict[str, Any] | None = None,
    ) -> str | None:
        """Add a message; ``None`` if the conversation is not the owner's."""
        with self.session() as s:
            row = self._owned(s, owner, conversation_id)
            if row is None:
                return None
            message = MessageRow(
                id=f"msg-{uuid.uuid4().hex[:20]}",
                conversation_id=row.id,
                seq=s.scalar(select(func.count()).where(MessageRow.conversation_id == row.id)),
                role=role,
                content=content,
                created_at=now(),
                meta=json.dumps(meta or {}),
            )
            s.add(message)
            row.updated_at = now()
            if role == "user" and row.title == "New chat":
                row.title = content.strip().splitlines()[0][:60] or row.title
            return message.id

    def add_feedback(
        self, owner: str, conversation_id: str, message_id: str, rating: str, correction: str | None
    ) -> bool:
        with self.session() as s:
            row = self._owned(s, owner, conversation_id)
            message = s.get(MessageRow, message_id)
            if row is None or message is None or message.conversation_id != row.id:
                return False
            if message.role != "assistant":
                raise ValueError("feedback is for assistant messages")
            s.add(
                FeedbackRow(
                    message_id=message_id,
                    owner=owner,
                    rating=1 if rating == "up" else -1,
                    correction=correction,
                    created_at=now(),
                )
            )
            return True

    def feedback_conversations(self) -> Iterator[list[dict[str, str]]]:
        """Training conversations from feedback: each thumbs-up reply with its history, and
        each corrected reply with the correction in its place (newest feedback wins)."""
        with self.session() as s:
            rows = s.execute(
                select(FeedbackRow, MessageRow)
                .join(MessageRow, FeedbackRow.message_id == MessageRow.id)
                .order_by(FeedbackRow.id)
            ).all()
            latest: dict[str, FeedbackRow] = {}
            messages: dict[str, MessageRow] = {}
            for fb, msg in rows:
                latest[msg.id], messages[msg.id] = fb, msg
            for message_id, fb in latest.items():
                msg = messages[message_id]
                if fb.correction is None and fb.rating < 0:
                    continue  # a bare thumbs-down says what not to do, not what to do
                history = s.scalars(
                    select(MessageRow)
                    .where(
                        MessageRow.conversation_id == msg.conversation_id, MessageRow.seq < msg.seq
                    )
                    .order_by(MessageRow.seq)
                ).all()
                reply = fb.correction if fb.correction else msg.content
                yield [
                    *({"role": m.role, "content": m.content} for m in history),
                    {"role": "assistant", "content": reply},
                ]

    @staticmethod
    def _owned(s: Session, owner: str, conversation_id: str) -> ConversationRow | None:
        row = s.get(ConversationRow, conversation_id)
        return row if row is not None and row.owner == owner else None

    @staticmethod
    def _summary(row: ConversationRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "object": "conversation",
            "title": row.title,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
        }
