"""Bot profiles: who the bot is, in YAML, rendered through the model's chat template.

name: Pine
system_prompt: You are Pine, the support assistant of Pinecrest Outfitters.
persona: ["You are friendly and brief.", "You never invent order numbers."]
examples:                      # few-shot turns placed before the conversation
  - user: Do you ship to Canada?
    assistant: Yes, we ship to the United States and Canada.
generation: {max_new_tokens: 160, temperature: 0.7}
stop: ["\\nUser:"]
knowledge: {k: 3, faq_answers: verbatim}   # used with --kb DIR (see knowledge.grounding)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chattune.config import format_validation_error, load_yaml
from chattune.data.types import Message
from chattune.errors import ConfigError
from chattune.knowledge.grounding import KnowledgeSettings
from chattune.model.generation import GenerationOptions


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1)
    assistant: str = Field(min_length=1)


class BotProfile(BaseModel):
    """A bot's identity and defaults; every field optional."""

    model_config = ConfigDict(extra="forbid")

    name: str = "assistant"
    system_prompt: str = ""
    persona: list[str] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    generation: GenerationOptions = Field(default_factory=GenerationOptions)
    stop: list[str] = Field(default_factory=list)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)

    def system_message(self, override: str | None = None) -> Message | None:
        """The system turn: the prompt (or ``override``) followed by the persona facts."""
        parts = [override if override is not None else self.system_prompt, *self.persona]
        text = "\n".join(p for p in parts if p.strip())
        return Message("system", text) if text else None

    def example_messages(self) -> list[Message]:
        out: list[Message] = []
        for ex in self.examples:
            out += [Message("user", ex.user), Message("assistant", ex.assistant)]
        return out


def load_profile(path: str | Path | None) -> BotProfile:
    """Read a profile YAML file; no path gives the default (empty) profile."""
    if path is None:
        return BotProfile()
    p = Path(path)
    data = load_yaml(p, "--profile")
    try:
        return BotProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"--profile {p}: " + format_validation_error(e)) from None
