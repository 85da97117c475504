"""Dialogue data: one ``Conversation`` type, format readers, validation, rendering, batching.

Every reader converts its format to :class:`Conversation` (a list of :class:`Message` plus
where it came from), validated once; the tokenizer's own chat template turns it into tokens.
"""

from chattune.data.types import Conversation, Document, Message, Role

__all__ = ["Conversation", "Document", "Message", "Role"]
