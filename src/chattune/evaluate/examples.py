"""Evaluation examples: every assistant turn, with the conversation before it."""

from __future__ import annotations

from dataclasses import dataclass

from chattune.data.types import Conversation, Message


@dataclass(frozen=True)
class TurnExample:
    """Reply to ``history`` (which ends with a user turn); ``reference`` is what was said."""

    history: tuple[Message, ...]
    reference: str
    id: str  # "file:line#turn", stable across runs (used to resume ratings)


def turn_examples(conversations: list[Conversation], limit: int | None = None) -> list[TurnExample]:
    """One example per assistant turn, in file order, at most ``limit``.

    Example:
        >>> conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!")], "a:1")
        >>> turn_examples([conv])[0].id
        'a:1#2'
    """
    out: list[TurnExample] = []
    for conv in conversations:
        for i, m in enumerate(conv.messages):
            if m.role == "assistant":
                out.append(
                    TurnExample(tuple(conv.messages[:i]), m.content, f"{conv.source}#{i + 1}")
                )
                if limit is not None and len(out) >= limit:
                    return out
    return out
