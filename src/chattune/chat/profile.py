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
nlu: {model: runs/nlu, gazetteer: {product: [Ridgeline 2]}}   # see nlu.pipeline
routes:                        # first match wins (see nlu.router)
  - {intent: human_agent, action: handoff}
  - {intent: "faq_*", action: knowledge}
  - {default: llm}
handoff: {message: "A person from our team will answer you here shortly."}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chattune.chat.routing import HandoffSettings
from chattune.config import format_validation_error, load_yaml
from chattune.data.types import Message
from chattune.errors import ConfigError
from chattune.knowledge.grounding import KnowledgeSettings
from chattune.model.generation import GenerationOptions
from chattune.nlu.router import Route
from chattune.nlu.settings import NluSettings


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
    nlu: NluSettings = Field(default_factory=NluSettings)
    routes: list[Route] = Field(default_factory=list, max_length=200)
    handoff: HandoffSettings = Field(default_factory=HandoffSettings)

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

    def prompt_head(self, system: str | None = None, context: str | None = None) -> list[Message]:
        """What every prompt starts with: the system turn, with a knowledge ``context`` block
        after it, then the few-shot examples. Serving (``ChatEngine.build_prompt``) and
        grounded training (:mod:`chattune.chat.grounded_training`) both build it here, so a
        model is trained on the very prompt it is served."""
        sys_msg = self.system_message(system)
        if context:
            text = f"{sys_msg.content}\n\n{context}" if sys_msg else context
            sys_msg = Message("system", text)
        return ([sys_msg] if sys_msg else []) + self.example_messages()


def load_profile(path: str | Path | None, flag: str = "--profile") -> BotProfile:
    """Read a profile YAML file; no path gives the default (empty) profile. Errors name
    ``flag``, where the path came from.

    ``extends: base.yaml`` (a path relative to this file) starts from another profile: this
    file's sections replace the base's, and its ``nlu``, ``knowledge``, ``handoff`` and
    ``generation`` keys replace only the keys they name. So a support bot's routing profile
    can extend the profile its model was trained with and never drift from its prompt.
    """
    if path is None:
        return BotProfile()
    p = Path(path)
    data = _with_bases(p, [], flag)
    try:
        return BotProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{flag} {p}: " + format_validation_error(e)) from None


_MERGED = ("nlu", "knowledge", "handoff", "generation")


def _with_bases(path: Path, seen: list[Path], flag: str) -> dict[str, Any]:
    """The profile's YAML with every ``extends`` resolved (bases first)."""
    if path.resolve() in seen:
        chain = " -> ".join(str(s) for s in [*seen, path.resolve()])
        raise ConfigError(f"{flag}: 'extends' loops: {chain}")
    data = load_yaml(path, flag)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{flag} {path}: 'extends' must be the path of another profile")
    if not (path.parent / base).is_file():
        raise ConfigError(f"{flag} {path}: extends {base}: no such file "
                          f"(looked for {path.parent / base})")  # fmt: skip
    merged = _with_bases(path.parent / base, [*seen, path.resolve()], flag)
    for key, value in data.items():
        if key in _MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
