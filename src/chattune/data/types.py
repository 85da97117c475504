"""The one dialogue type every format is converted to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    Example:
        >>> Message("user", "Where is my order?").as_dict()
        {'role': 'user', 'content': 'Where is my order?'}
    """

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        """The shape chat templates and the OpenAI API expect."""
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    """A validated conversation and the place it was read from (``file:line``)."""

    messages: list[Message]
    source: str = "<memory>"

    def as_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]

    @property
    def assistant_turns(self) -> int:
        return sum(m.role == "assistant" for m in self.messages)


@dataclass
class Document:
    """Raw text for continued pre-training (the ``lm`` objective)."""

    text: str
    source: str = "<memory>"
    meta: dict[str, str] = field(default_factory=dict)
