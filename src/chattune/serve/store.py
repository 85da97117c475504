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

Human handoff: a conversation is answered by the ``bot``, ``waiting`` for a person, or
answered by an ``agent``. The handoff methods (``hand_off``, ``list_handoffs``,
``get_handoff``, ``agent_reply``, ``release``) are the agents' side: they read and write
handed-off conversations of every owner, and only those.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    create_engine,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.orm import Session

from chattune.serve.learning import (
    FeedbackExample,
    agent_examples,
    is_agent_reply,
    message_meta,
    rated_examples,
)
from chattune.serve.schema import (
    HANDED_OFF,
    ConversationRow,
    FeedbackRow,
    HandoffState,
    MessageRow,
    database_url,
    migrate,
    now,
    sqlite_pragmas,
)

#: Characters of the last message shown in the agents' list of handoffs.
PREVIEW_CHARS = 200


@dataclass(frozen=True)
class Handoff:
    """Why a conversation goes to a person: a route's reason (with the decision that took
    it, the ``nlu`` JSON) or the reason a caller of the API gave."""

    reason: str
    nlu: dict[str, Any] | None = None


class NotHandedOff(Exception):
    """An agent acted on a conversation that the bot answers (HTTP 409)."""


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
            return self._with_messages(row)

    def handoff_state(self, owner: str, conversation_id: str) -> HandoffState | None:
        """Who answers the owner's conversation (one indexed read); ``None`` if it is not
        the owner's. What a chat completion checks before it runs the engine."""
        with self.session() as s:
            return s.scalar(  # type: ignore[return-value]
                select(ConversationRow.handoff_state).where(
                    ConversationRow.id == conversation_id, ConversationRow.owner == owner
                )
            )

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
            row = self._locked(s, conversation_id, owner)
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

        ``meta`` (finish reason, sources, nlu) goes on the reply. Returns the reply's message
        id, or ``None`` if the conversation is not the owner's.

        Example:
            >>> reply_id = store.append_exchange(owner, conv_id, "Hi", "Hello!")  # doctest: +SKIP
        """
        with self.session() as s:
            row = self._locked(s, conversation_id, owner)
            if row is None:
                return None
            return self._add_exchange(s, row, user_text, reply_text, meta)

    def append_bot_reply(
        self, owner: str, conversation_id: str, user_text: str, reply_text: str,
        meta: dict[str, Any],
    ) -> tuple[str | None, dict[str, Any] | None] | None:  # fmt: skip
        """:meth:`append_exchange` for the bot's reply, unless a person took the
        conversation while it was generated: then the question is stored alone (the
        person answers it) and the reply is dropped.

        Returns (the reply's id or ``None`` if dropped, the ``handoff`` field if handed
        off), or ``None`` if the conversation is not the owner's.
        """
        with self.session() as s:
            row = self._locked(s, conversation_id, owner)
            if row is None:
                return None
            if row.handoff_state in HANDED_OFF:
                self._add_messages(s, row, [("user", user_text, None)])
                return None, handoff_summary(row)
            return self._add_exchange(s, row, user_text, reply_text, meta), None

    def append_handoff(
        self,
        owner: str,
        conversation_id: str,
        user_text: str,
        reply_text: str,
        meta: dict[str, Any],
        handoff: Handoff,
    ) -> tuple[str, dict[str, Any], bool] | None:
        """:meth:`append_exchange` for a reply that hands the conversation to a person: in
        the same transaction it becomes ``waiting`` (unless a person already has it), so
        the handoff notice is never stored without the handoff.

        Returns (the reply's id, the conversation's ``handoff`` field, whether this call
        handed it off), or ``None`` if the conversation is not the owner's.
        """
        with self.session() as s:
            row = self._locked(s, conversation_id, owner)
            if row is None:
                return None
            message_id = self._add_exchange(s, row, user_text, reply_text, meta)
            changed = _wait_for_person(row, handoff)
            return message_id, handoff_summary(row), changed

    def _add_exchange(
        self, s: Session, row: ConversationRow, user: str, reply: str, meta: dict[str, Any] | None
    ) -> str:
        return self._add_messages(s, row, [("user", user, None), ("assistant", reply, meta)])[-1]

    def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """Delete the owner's conversation for good, with its messages and their feedback
        (so it is gone from feedback exports too); ``False`` if it is not the owner's."""
        with self.session() as s:
            row = self._locked(s, conversation_id, owner)
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
        """Training conversations from feedback and from agents: each thumbs-up reply with
        its history, each corrected reply with the correction in its place (newest feedback
        wins), and each agent's answer in place of what the bot said (a person's reply is
        a correction). Histories are made valid training data by
        :func:`~chattune.serve.learning.corrected`.

        Each comes with the owner hash of its conversation; ``owner`` keeps only that
        owner's (to export, or leave out, one user's data).

        Example:
            >>> next(store.feedback_conversations(owner_of("sk-alice")))  # doctest: +SKIP
            {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', ...}],
             'owner': '3f6c...'}
        """
        with self.session() as s:
            yield from rated_examples(s, owner)
            yield from agent_examples(s, owner)

    # ----- handoff: the customer's side and the agents' ----------------------------------

    def hand_off(
        self, owner: str, conversation_id: str, handoff: Handoff
    ) -> tuple[dict[str, Any], bool] | None:
        """Ask for a person in the owner's conversation: (its summary, whether it changed).
        A conversation already waiting or with an agent stays as it is (``False``);
        ``None`` if it is not the owner's."""
        with self.session() as s:
            row = self._locked(s, conversation_id, owner)
            if row is None:
                return None
            changed = _wait_for_person(row, handoff)
            return self._summary(row), changed

    def list_handoffs(self, states: tuple[HandoffState, ...], limit: int) -> list[dict[str, Any]]:
        """Handed-off conversations of every owner in ``states``, the longest waiting first
        (a queue: a flood of new handoffs cannot push an old one out of ``limit``), each
        with its last message (a preview) and the decision that triggered the handoff."""
        with self.session() as s:
            rows = s.scalars(
                select(ConversationRow)
                .where(ConversationRow.handoff_state.in_(states))
                .order_by(ConversationRow.handoff_at, ConversationRow.id)
                .limit(limit)
            ).all()
            last = self._last_messages(s, [r.id for r in rows])
            return [
                {**self._summary(r), "nlu": _json(r.handoff_nlu), "last_message": last.get(r.id)}
                for r in rows
            ]

    def get_handoff(self, conversation_id: str) -> dict[str, Any] | None:
        """A handed-off conversation of any owner, with its messages; ``None`` if there is
        none; :class:`NotHandedOff` if the bot answers it (agents see only handoffs)."""
        with self.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if row is None:
                return None
            _require_handed_off(row)
            return {**self._with_messages(row), "nlu": _json(row.handoff_nlu)}

    def agent_reply(self, conversation_id: str, content: str, agent: str) -> dict[str, Any] | None:
        """Store a person's reply (an assistant message with ``author: agent``); the
        conversation is then the agent's. The stored message, or ``None`` if there is no
        such conversation; :class:`NotHandedOff` if the bot answers it."""
        with self.session() as s:
            row = self._locked(s, conversation_id, owner=None)
            if row is None:
                return None
            _require_handed_off(row)
            meta = {"author": "agent", "agent": agent}
            (message_id,) = self._add_messages(s, row, [("assistant", content, meta)])
            row.handoff_state, row.handoff_agent = "agent", agent
            return {"id": message_id, "role": "assistant", "content": content, **meta,
                    "conversation": self._summary(row)}  # fmt: skip

    def release(self, conversation_id: str) -> dict[str, Any] | None:
        """Give the conversation back to the bot; its summary, or ``None`` if there is none;
        :class:`NotHandedOff` if the bot already answers it."""
        with self.session() as s:
            row = self._locked(s, conversation_id, owner=None)
            if row is None:
                return None
            _require_handed_off(row)
            row.handoff_state, row.updated_at = "bot", now()
            return self._summary(row)

    @staticmethod
    def _last_messages(s: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The last message of each conversation in ``ids``, shortened for a list."""
        if not ids:
            return {}
        newest = (
            select(MessageRow.conversation_id, func.max(MessageRow.seq).label("seq"))
            .where(MessageRow.conversation_id.in_(ids))
            .group_by(MessageRow.conversation_id)
            .subquery()
        )
        rows = s.scalars(
            select(MessageRow).join(
                newest,
                (MessageRow.conversation_id == newest.c.conversation_id)
                & (MessageRow.seq == newest.c.seq),
            )
        ).all()
        return {
            m.conversation_id: {
                "role": m.role,
                "content": m.content[:PREVIEW_CHARS],
                "created_at": m.created_at.isoformat(),
                **({"author": "agent"} if is_agent_reply(message_meta(m)) else {}),
            }
            for m in rows
        }

    @staticmethod
    def _owned(s: Session, owner: str, conversation_id: str) -> ConversationRow | None:
        row = s.get(ConversationRow, conversation_id)
        return row if row is not None and row.owner == owner else None

    @staticmethod
    def _locked(s: Session, conversation_id: str, owner: str | None) -> ConversationRow | None:
        """The owner's conversation (any owner's if ``owner`` is ``None``: the agents'
        methods), locked against other writers until ``s`` ends.

        An append reads the highest ``seq`` and writes the next one; two writers doing that
        at once would pick the same number (the unique constraint would then refuse one).
        PostgreSQL locks the conversation's row (``FOR UPDATE``): a second writer waits, then
        reads the first one's messages. SQLite allows one writer at a time, but its Python
        driver starts the write transaction only at the first INSERT, after the read;
        ``BEGIN IMMEDIATE`` takes the write lock before reading (others wait, busy_timeout).
        """
        if s.get_bind().dialect.name == "sqlite":
            s.execute(text("BEGIN IMMEDIATE"))
        query = select(ConversationRow).where(ConversationRow.id == conversation_id)
        if owner is not None:
            query = query.where(ConversationRow.owner == owner)
        return s.scalar(query.with_for_update())

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
            "handoff": handoff_summary(row),
        }

    @classmethod
    def _with_messages(cls, row: ConversationRow) -> dict[str, Any]:
        """The summary with every message; a message's meta (finish reason, sources, nlu,
        author) is merged into it."""
        out = cls._summary(row)
        out["messages"] = [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "created_at": m.created_at.isoformat(),
                **message_meta(m),
            }
            for m in row.messages
        ]
        return out


def handoff_summary(row: ConversationRow) -> dict[str, Any]:
    """The ``handoff`` field of a conversation: ``{"state": "bot"}``, or while a person is
    asked for or answering, also why, since when and (once one replied) which agent."""
    if row.handoff_state not in HANDED_OFF:
        return {"state": "bot"}
    since = row.handoff_at.isoformat() if row.handoff_at else None
    return {"state": row.handoff_state, "reason": row.handoff_reason, "since": since,
            "agent": row.handoff_agent}  # fmt: skip


def _wait_for_person(row: ConversationRow, handoff: Handoff) -> bool:
    """Mark ``row`` (locked) as waiting for a person, unless it already is handed off;
    whether it changed."""
    if row.handoff_state in HANDED_OFF:
        return False
    row.handoff_state, row.handoff_reason = "waiting", handoff.reason[:200]
    row.handoff_at = row.updated_at = now()
    row.handoff_agent = None
    row.handoff_nlu = json.dumps(handoff.nlu) if handoff.nlu is not None else None
    return True


def _require_handed_off(row: ConversationRow) -> None:
    if row.handoff_state not in HANDED_OFF:
        raise NotHandedOff(f"conversation {row.id!r} is answered by the bot, not handed off")


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None
