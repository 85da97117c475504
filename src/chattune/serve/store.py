"""Conversations, messages and feedback, stored with SQLAlchemy (SQLite or PostgreSQL).

Every conversation belongs to an owner (a hash of the API key that created it); every read
and write is filtered by owner, so one key can never see or change another key's data.
SQLite runs in WAL mode with ``synchronous=FULL``: a write that returned has reached the
log, and a server killed mid-write leaves an intact database. The schema is created and
upgraded by Alembic migrations (``serve/migrations``), never by ``create_all``; several
processes may start on one fresh database at once (the migrations take turns).

Messages are numbered per conversation (``seq`` 0, 1, 2, ...; unique). Writers to one
conversation take turns (see ``Store._locked``), so concurrent appends never pick the same
number, and a question and its reply are written in one transaction (``append_exchange``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

from sqlalchemy import (
    create_engine,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.orm import Session

from chattune.serve.schema import (
    ConversationRow,
    FeedbackRow,
    MessageRow,
    database_url,
    migrate,
    now,
    sqlite_pragmas,
)


class FeedbackExample(TypedDict):
    """One training conversation made from feedback, and whose conversation it came from."""

    messages: list[dict[str, str]]
    owner: str


class Store:
    """All database access of the server; every method takes the caller's owner."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        migrate(self.url)
        self.engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            sqlite_pragmas(self.engine)

    def close(self) -> None:
        """Close the pooled database connections (the store opens new ones if used again)."""
        self.engine.dispose()

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
        """Add one message; its id, or ``None`` if the conversation is not the owner's."""
        with self.session() as s:
            row = self._locked(s, owner, conversation_id)
            if row is None:
                return None
            return self._add_messages(s, row, [(role, content, meta)])[0]

    def append_exchange(
        self,
        owner: str,
        conversation_id: str,
        user_text: str,
        reply_text: str,
        meta: dict[str, Any] | None = None,
    ) -> str | None:
        """Add a question and its reply in one transaction: both are stored, or neither.

        ``meta`` (finish reason, sources) goes on the reply. Returns the reply's message id,
        or ``None`` if the conversation is not the owner's.

        Example:
            >>> reply_id = store.append_exchange(owner, conv_id, "Hi", "Hello!")  # doctest: +SKIP
        """
        with self.session() as s:
            row = self._locked(s, owner, conversation_id)
            if row is None:
                return None
            ids = self._add_messages(
                s, row, [("user", user_text, None), ("assistant", reply_text, meta)]
            )
            return ids[-1]

    def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """Delete the owner's conversation for good, with its messages and their feedback
        (so it is gone from feedback exports too); ``False`` if it is not the owner's."""
        with self.session() as s:
            row = self._locked(s, owner, conversation_id)
            if row is None:
                return False
            message_ids = select(MessageRow.id).where(MessageRow.conversation_id == row.id)
            s.execute(delete(FeedbackRow).where(FeedbackRow.message_id.in_(message_ids)))
            s.execute(delete(MessageRow).where(MessageRow.conversation_id == row.id))
            s.execute(delete(ConversationRow).where(ConversationRow.id == row.id))
            return True

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

    def feedback_conversations(self, owner: str | None = None) -> Iterator[FeedbackExample]:
        """Training conversations from feedback: each thumbs-up reply with its history, and
        each corrected reply with the correction in its place (newest feedback wins).

        Each comes with the owner hash of its conversation; ``owner`` keeps only that
        owner's (to export, or leave out, one user's data).

        Example:
            >>> next(store.feedback_conversations(owner_of("sk-alice")))  # doctest: +SKIP
            {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', ...}],
             'owner': '3f6c...'}
        """
        query = (
            select(FeedbackRow, MessageRow, ConversationRow.owner)
            .join(MessageRow, FeedbackRow.message_id == MessageRow.id)
            .join(ConversationRow, MessageRow.conversation_id == ConversationRow.id)
            .order_by(FeedbackRow.id)
        )
        if owner is not None:
            query = query.where(ConversationRow.owner == owner)
        with self.session() as s:
            latest: dict[str, tuple[FeedbackRow, MessageRow, str]] = {}
            for fb, msg, conversation_owner in s.execute(query).all():
                latest[msg.id] = fb, msg, conversation_owner
            for fb, msg, conversation_owner in latest.values():
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
                messages = [
                    *({"role": m.role, "content": m.content} for m in history),
                    {"role": "assistant", "content": reply},
                ]
                yield {"messages": messages, "owner": conversation_owner}

    @staticmethod
    def _owned(s: Session, owner: str, conversation_id: str) -> ConversationRow | None:
        row = s.get(ConversationRow, conversation_id)
        return row if row is not None and row.owner == owner else None

    @staticmethod
    def _locked(s: Session, owner: str, conversation_id: str) -> ConversationRow | None:
        """The owner's conversation, locked against other writers until ``s`` ends.

        An append reads the highest ``seq`` and writes the next one; two writers doing that
        at once would pick the same number (the unique constraint would then refuse one).
        PostgreSQL locks the conversation's row (``FOR UPDATE``): a second writer waits, then
        reads the first one's messages. SQLite allows one writer at a time, but its Python
        driver starts the write transaction only at the first INSERT, after the read;
        ``BEGIN IMMEDIATE`` takes the write lock before reading (others wait, busy_timeout).
        """
        if s.get_bind().dialect.name == "sqlite":
            s.execute(text("BEGIN IMMEDIATE"))
        return s.scalar(
            select(ConversationRow)
            .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
            .with_for_update()
        )

    @staticmethod
    def _add_messages(
        s: Session, row: ConversationRow, messages: list[tuple[str, str, dict[str, Any] | None]]
    ) -> list[str]:
        """Write ``(role, content, meta)`` messages at the next ``seq`` numbers of ``row``
        (locked by ``_locked``); their ids."""
        seq = s.scalar(
            select(func.coalesce(func.max(MessageRow.seq) + 1, 0)).where(
                MessageRow.conversation_id == row.id
            )
        )
        ids = []
        for offset, (role, content, meta) in enumerate(messages):
            message = MessageRow(
                id=f"msg-{uuid.uuid4().hex[:20]}",
                conversation_id=row.id,
                seq=seq + offset,
                role=role,
                content=content,
                created_at=now(),
                meta=json.dumps(meta or {}),
            )
            s.add(message)
            ids.append(message.id)
            if role == "user" and row.title == "New chat":
                first_line = next(iter(content.strip().splitlines()), "")
                row.title = first_line[:60] or row.title
        row.updated_at = now()
        return ids

    @staticmethod
    def _summary(row: ConversationRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "object": "conversation",
            "title": row.title,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
        }
