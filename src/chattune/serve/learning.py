"""Stored conversations as training conversations: what feedback and agents teach the bot.

A stored conversation is not always a valid training conversation (``data.validate``: user
and assistant alternate, starting with the user, no empty turn). Handoff makes it
irregular: a customer may write several messages while waiting for a person (each stored
alone, with no reply), an agent may answer in two messages, and the bot's handoff notice
("a person will answer you here") sits between the question and the person's answer.

:func:`training_turns` makes the history regular, and :func:`corrected` puts a better reply
(a thumbs-up reply, a correction, an agent's answer) after the customer's last turn.

Example:
    >>> history = [("user", "This is useless!", {}),
    ...            ("assistant", "A person will answer you here.", {"nlu": {"route": "handoff"}}),
    ...            ("user", "Hello?", {})]
    >>> corrected(history, "Sorry about that, I'm Sam. Let me look.")
    [{'role': 'user', 'content': 'This is useless!\\n\\nHello?'}, {'role': 'assistant', \
'content': "Sorry about that, I'm Sam. Let me look."}]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

from sqlalchemy import select
from sqlalchemy.orm import Session

from chattune.serve.schema import ConversationRow, FeedbackRow, MessageRow

#: (role, content, meta) of one stored message.
Stored = tuple[str, str, dict[str, Any]]


class FeedbackExample(TypedDict):
    """One training conversation made from feedback, and whose conversation it came from
    (``conversation``: its id; examples of one conversation extend each other, so a
    learning round holds them out together)."""

    messages: list[dict[str, str]]
    owner: str
    conversation: str


def is_agent_reply(meta: dict[str, Any]) -> bool:
    """True for a message a person wrote through the agent API."""
    return meta.get("author") == "agent"


def is_handoff_notice(meta: dict[str, Any]) -> bool:
    """True for the bot's "a person will answer you" reply of a ``handoff`` decision."""
    nlu = meta.get("nlu")
    return isinstance(nlu, dict) and nlu.get("route") == "handoff" and not is_agent_reply(meta)


def training_turns(messages: Iterable[Stored]) -> list[dict[str, str]]:
    """The stored messages as alternating ``{"role", "content"}`` turns, starting with the
    user.

    - The bot's handoff notices are dropped: they are what the bot said *instead of* an
      answer, and the person's reply that follows is the answer to learn. (Kept, the notice
      would also be trained on as a reply, in every later example of the conversation.)
    - Empty turns (an empty model reply) are dropped: the validator refuses them.
    - Consecutive turns of one role are joined with a blank line: messages a customer sent
      while waiting are one question, an agent's two messages are one answer.
    - Assistant turns before the first user turn are dropped.
    """
    turns: list[dict[str, str]] = []
    for role, content, meta in messages:
        if is_handoff_notice(meta) or not content.strip():
            continue
        if not turns and role != "user":
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    return turns


def corrected(history: Iterable[Stored], reply: str) -> list[dict[str, str]] | None:
    """``history`` (see :func:`training_turns`) with ``reply`` as the answer to its last
    user turn; ``None`` when there is no user turn to answer.

    Assistant turns after the last user turn are replaced, not kept: the reply is a
    correction of what the bot said there (an agent may answer after the bot did, when the
    customer asked for a person through the API).
    """
    turns = training_turns(history)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    if not turns or not reply.strip():
        return None
    return [*turns, {"role": "assistant", "content": reply}]


# ----- the two kinds of examples, read from the store (``Store.feedback_conversations``) -


def rated_examples(s: Session, owner: str | None) -> Iterator[FeedbackExample]:
    """Each thumbs-up reply with its history, each corrected reply with the correction in
    its place (the newest feedback on a message wins; a bare thumbs-down is skipped)."""
    latest = _latest_feedback(s, owner)
    fixes = {mid: fb.correction for mid, (fb, _, _) in latest.items() if fb.correction}
    for fb, msg, conversation_owner in latest.values():
        if fb.correction is None and fb.rating < 0:
            continue  # a bare thumbs-down says what not to do, not what to do
        if is_agent_reply(message_meta(msg)):
            continue  # exported once, as an agent's answer (below)
        if fb.correction is None and is_handoff_notice(message_meta(msg)):
            continue  # liking "a person will answer" must not teach promising one
        history = _before(s, msg)
        example = corrected(_stored(history, fixes), fb.correction or msg.content)
        if example is not None:
            yield {"messages": example, "owner": conversation_owner,
                   "conversation": msg.conversation_id}  # fmt: skip


def agent_examples(s: Session, owner: str | None) -> Iterator[FeedbackExample]:
    """One example per answer of a person: a run of consecutive agent messages (one
    answer sent in several messages), with the conversation before it."""
    answered = (
        select(MessageRow.conversation_id)
        .where(MessageRow.meta.contains('"author": "agent"'))  # cheap pre-filter
        .distinct()
    )
    query = select(ConversationRow).where(ConversationRow.id.in_(answered))
    if owner is not None:
        query = query.where(ConversationRow.owner == owner)
    for conversation in s.scalars(query.order_by(ConversationRow.created_at)).all():
        stored = _stored(conversation.messages, _corrections(s, conversation.id))
        for start, end in _agent_runs(stored):
            reply = "\n\n".join(content for _, content, _ in stored[start:end])
            example = corrected(stored[:start], reply)
            if example is not None:
                yield {"messages": example, "owner": conversation.owner,
                       "conversation": conversation.id}  # fmt: skip


class PreferencePair(TypedDict):
    """A correction paired with the reply it replaced: TRL's conversational preference
    format (``prompt`` turns; ``chosen`` and ``rejected`` assistant turns)."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    owner: str
    conversation: str


def preference_pairs(s: Session, owner: str | None) -> Iterator[PreferencePair]:
    """One pair per corrected bot reply (whose newest feedback is a correction): the conversation
    before it as the prompt, the correction chosen, the bot's reply rejected. Thumbs alone
    make no pair (a thumbs-up has nothing rejected, a thumbs-down nothing chosen); agents'
    messages and handoff notices are not the bot's replies."""
    latest = _latest_feedback(s, owner)
    fixes = {mid: fb.correction for mid, (fb, _, _) in latest.items() if fb.correction}
    for fb, msg, conversation_owner in latest.values():
        meta = message_meta(msg)
        if is_agent_reply(meta) or is_handoff_notice(meta) or not msg.content.strip():
            continue
        if fb.correction is None or fb.correction.strip() == msg.content.strip():
            continue  # nothing to prefer
        history = _before(s, msg)
        example = corrected(_stored(history, fixes), fb.correction)
        if example is not None:
            yield {
                "prompt": example[:-1],
                "chosen": [example[-1]],
                "rejected": [{"role": "assistant", "content": msg.content}],
                "owner": conversation_owner,
                "conversation": msg.conversation_id,
            }


def _latest_feedback(
    s: Session, owner: str | None
) -> dict[str, tuple[FeedbackRow, MessageRow, str]]:
    """message id -> (its newest feedback, the message, its conversation's owner): the
    newest feedback on a message is what counts, for training examples and pairs alike."""
    query = (
        select(FeedbackRow, MessageRow, ConversationRow.owner)
        .join(MessageRow, FeedbackRow.message_id == MessageRow.id)
        .join(ConversationRow, MessageRow.conversation_id == ConversationRow.id)
        .order_by(FeedbackRow.id)
    )
    if owner is not None:
        query = query.where(ConversationRow.owner == owner)
    latest: dict[str, tuple[FeedbackRow, MessageRow, str]] = {}
    for fb, msg, conversation_owner in s.execute(query).all():
        latest[msg.id] = fb, msg, conversation_owner
    return latest


def _before(s: Session, msg: MessageRow) -> list[MessageRow]:
    """The messages of ``msg``'s conversation before it, in order."""
    return list(
        s.scalars(
            select(MessageRow)
            .where(MessageRow.conversation_id == msg.conversation_id, MessageRow.seq < msg.seq)
            .order_by(MessageRow.seq)
        ).all()
    )


def message_meta(m: MessageRow) -> dict[str, Any]:
    """A stored message's metadata (finish reason, sources, nlu, author)."""
    return json.loads(m.meta or "{}")


def _stored(messages: Iterable[MessageRow], fixes: dict[str, str] | None = None) -> list[Stored]:
    """(role, content, meta) of each message; a reply with a correction (``fixes``: message
    id -> the newest correction) reads as corrected, so an example never teaches, in its
    history, a reply someone corrected away."""
    fixes = fixes or {}
    return [(m.role, fixes.get(m.id, m.content), message_meta(m)) for m in messages]


def _corrections(s: Session, conversation_id: str) -> dict[str, str]:
    """message id -> its newest feedback's correction, for one conversation's replies
    (only where that newest feedback is a correction)."""
    rows = s.execute(
        select(FeedbackRow.message_id, FeedbackRow.correction)
        .join(MessageRow, FeedbackRow.message_id == MessageRow.id)
        .where(MessageRow.conversation_id == conversation_id)
        .order_by(FeedbackRow.id)
    ).all()
    newest: dict[str, str | None] = {}
    for message_id, correction in rows:
        newest[message_id] = correction
    return {k: v for k, v in newest.items() if v}


def _agent_runs(stored: list[Stored]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of consecutive agent messages in ``stored``."""
    start = None
    for i, (_, _, meta) in enumerate([*stored, ("", "", {})]):
        if is_agent_reply(meta):
            start = i if start is None else start
        elif start is not None:
            yield start, i
            start = None
