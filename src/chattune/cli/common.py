"""Sections shared by the commands that talk: which model, who the bot is, how it samples.

``generate``, ``chat``, ``serve``, ``eval`` and ``rate`` all answer through a chat engine
with a bot profile (``--profile``). Generation flags override the profile's ``generation``
section, and only the ones the user gave: the rest stay the profile's.

Example:
    >>> GenerationOverrides(temperature=0.2).given()
    {'temperature': 0.2}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from chattune.backends.registry import BackendSettings
from chattune.config import Section
from chattune.model.generation import GenerationOptions

if TYPE_CHECKING:
    from chattune.chat.profile import BotProfile
    from chattune.knowledge.grounding import Knowledge

EMBEDDED = "smollm2-135m-instruct"
MODEL_HELP = "chattune output folder, Hugging Face folder, .gguf file or embedded model name"


def model_field() -> Any:
    """The ``model`` field of a talking command: the embedded model unless given."""
    return Field(EMBEDDED, min_length=1, description=MODEL_HELP)


class BotSection(Section):
    """Who the bot is: a profile YAML, and a system prompt that replaces the profile's."""

    profile: str | None = Field(
        None, description="bot profile YAML: system prompt, persona, stop strings, generation"
    )
    system: str | None = Field(None, description="system prompt (replaces the profile's)")


_GENERATION_HELP = {
    "max_new_tokens": "longest reply, in tokens",
    "do_sample": "sample, not greedy",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling: smallest set of tokens with this much probability",
    "top_k": "sample among the k likeliest tokens (0: all)",
    "repetition_penalty": "above 1 discourages repeating tokens",
    "seed": "sampling seed",
}


def _optional(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """``field`` with the same constraints, but None (= the profile's value) by default."""
    kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return kind | None, Field(None, description=_GENERATION_HELP.get(name, field.description))


class Overrides(Section):
    """Settings that replace a profile's where given (None: keep the profile's)."""

    def given(self) -> dict[str, Any]:
        """The fields that were set: overrides of the profile's generation section."""
        return self.model_dump(exclude_none=True)


#: :class:`GenerationOptions` with every field optional: what the user gave overrides the
#: bot profile's ``generation`` section, the rest stays the profile's.
GenerationOverrides = create_model(
    "GenerationOverrides",
    __base__=Overrides,
    __doc__="Generation settings over the bot profile's (None: the profile's value).",
    **{n: _optional(n, f) for n, f in GenerationOptions.model_fields.items()},
)

BOT_FLAGS = {"--profile": "bot.profile", "--system": "bot.system"}
#: The flags of the ``backend`` section (:class:`BackendSettings`); the rest are
#: ``backend.KEY=VALUE`` overrides.
BACKEND_FLAGS = {
    "--backend": "backend.name",
    "--backend-url": "backend.url",
    "--backend-model": "backend.remote_model",
    "--slots": "backend.slots",
}


def backend_field() -> Any:
    """The ``backend`` section of a talking command."""
    return Field(default_factory=BackendSettings)


GENERATION_FLAGS = {
    "--" + name.replace("_", "-"): f"generation.{name}" for name in GenerationOptions.model_fields
}


def load_bot(bot: BotSection, generation: Overrides | None = None) -> BotProfile:
    """The profile from ``bot.profile`` with ``bot.system`` and the generation overrides."""
    from chattune.chat.profile import load_profile

    profile = load_profile(bot.profile)
    update: dict[str, Any] = {}
    if bot.system is not None:
        update["system_prompt"] = bot.system
    if generation is not None and (given := generation.given()):
        merged = {**profile.generation.model_dump(), **given}
        update["generation"] = type(profile.generation).model_validate(merged)
    return profile.model_copy(update=update) if update else profile


def knowledge(folder: str | None, profile: BotProfile) -> Knowledge | None:
    """The profile's knowledge settings on ``--kb``'s retriever (opened before the model
    loads, so a broken knowledge base fails in a second, not after a minute)."""
    if folder is None:
        return None
    from chattune.knowledge.grounding import Knowledge
    from chattune.knowledge.retrieve import Retriever
    from chattune.knowledge.store import KnowledgeBase

    return Knowledge(Retriever(KnowledgeBase(folder)), profile.knowledge)


def engine_for(
    spec: str,
    profile: BotProfile,
    kb: Knowledge | None = None,
    backend: BackendSettings | None = None,
) -> Any:
    """A chat engine on model ``spec``, generating with ``backend`` (loads the model:
    seconds to minutes)."""
    from chattune.backends.registry import open_backend
    from chattune.chat.engine import ChatEngine, check_routes, nlu_for

    check_routes(profile, kb)  # a bad profile fails in a second, before the model loads
    nlu = nlu_for(profile)
    return ChatEngine(open_backend(spec, backend), profile, kb, nlu)
