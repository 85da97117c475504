"""The one dialogue type every format is converted to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    An assistant turn may say where its answer comes from: ``sources`` (knowledge base
    document names, as ``kb eval`` matches them) and ``faq_ids`` (FAQ entry ids), read from a
    turn's ``source`` and ``faq_id`` keys. Grounded fine-tuning (``data.kb``) puts that
    passage in the turn's prompt; everything else ignores them, and :meth:`as_dict` never
    shows them to a chat template.

    Example:
        >>> Message("user", "Where is my order?").as_dict()
        {'role': 'user', 'content': 'Where is my order?'}
        >>> Message("assistant", "45 days.", faq_ids=("returns-window",)).grounded
        True
    """

    role: Role
    content: str
    sources: tuple[str, ...] = ()
    faq_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, str]:
        """The shape chat templates and the OpenAI API expect (role and content only)."""
        return {"role": self.role, "content": self.content}

    @property
    def grounded(self) -> bool:
        """Whether the turn says which passage holds its answer."""
        return bool(self.sources or self.faq_ids)


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
