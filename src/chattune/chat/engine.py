"""The chat engine: one prompt builder and one generation path behind every reply.

The engine turns (profile, conversation so far) into the model's prompt through the chat
template, keeping the newest turns that fit the context window, and gets the reply from a
swappable :class:`~chattune.backends.base.Backend`: streamed for the terminal chat, the HTTP
API and the web page; batched for ``generate``, ``eval``, ``rate`` and evaluation during
training. So every reply, served or evaluated, sees the same bot profile (system prompt,
persona, few-shot examples, stop strings, generation defaults) and the same history budget.

Every reply starts with :meth:`ChatEngine.decide` (see :mod:`chattune.chat.routing`): the
NLU's analysis and the profile's routes pick a fixed reply (template, handoff message, FAQ
answer, "I don't know") or what the model is given (retrieved passages, or nothing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from chattune.backends.base import Backend
from chattune.chat.profile import BotProfile
from chattune.chat.routing import Decision, decide
from chattune.data.render import generation_prompt_ids, keep_newest, neutralise_messages
from chattune.data.types import Message
from chattune.errors import ChattuneError, ConfigError, ModelError
from chattune.knowledge.grounding import Grounding, Knowledge
from chattune.model.generation import Generated, GenerationOptions
from chattune.nlu.pipeline import NLU

log = logging.getLogger(__name__)


class PromptTooLong(ChattuneError):
    """The newest user message alone does not fit the model's context."""

    def __init__(self, message: str, prompt_tokens: int, budget: int) -> None:
        super().__init__(message)
        self.prompt_tokens, self.budget = prompt_tokens, budget


def check_routes(profile: BotProfile, knowledge: Knowledge | None) -> None:
    """ConfigError if a route needs what the bot lacks (a knowledge base)."""
    if knowledge is None and any(r.action_name == "knowledge" for r in profile.routes):
        raise ConfigError("--profile: a route has action 'knowledge' but there is no "
                          "knowledge base; pass --kb DIR")  # fmt: skip


def nlu_for(profile: BotProfile) -> NLU | None:
    """The NLU a profile asks for: with routes or an intent model; None without either."""
    if not (profile.routes or profile.nlu.model):
        return None
    try:
        return NLU(profile.nlu)
    except ModelError as e:
        raise ConfigError(f"--profile nlu.model: {e}; train one with `chattune nlu train "
                          f"--output {profile.nlu.model}` (make demo does)") from None  # fmt: skip


def split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """(the system text, or None; the other turns). A caller's system turns replace the
    profile's system prompt, as in OpenAI's API.

    Example:
        >>> split_system([Message("system", "Be brief."), Message("user", "hi")])[0]
        'Be brief.'
    """
    system = "\n".join(m.content for m in messages if m.role == "system") or None
    return system, [m for m in messages if m.role != "system"]


class ChatEngine:
    """Routing, prompt building, history budget, streaming and batched replies for one
    model and one profile.

    ``nlu`` defaults to one built from the profile's ``nlu`` section when the profile has
    routes or an intent model (loading the model: about a second).
    """

    def __init__(
        self,
        backend: Backend,
        profile: BotProfile | None = None,
        knowledge: Knowledge | None = None,
        nlu: NLU | None = None,
    ) -> None:
        self.backend = backend
        self.profile = p = profile or BotProfile()
        self.knowledge = knowledge
        check_routes(p, knowledge)
        self.nlu = nlu if nlu is not None else nlu_for(p)

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def decide(self, history: list[Message]) -> Decision:
        """Where this turn goes (the conversation so far, ending with a user turn)."""
        p = self.profile
        return decide(history, p.routes, self.nlu, self.knowledge, p.handoff)

    def options(self, **overrides: Any) -> GenerationOptions:
        """The profile's generation defaults with per-request overrides (``None`` = default)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return GenerationOptions.model_validate({**self.profile.generation.model_dump(), **given})

    def build_prompt(
        self,
        history: list[Message],
        options: GenerationOptions,
        system: str | None = None,
        grounding: Grounding | None = None,
    ) -> tuple[list[int], int]:
        """Prompt ids for ``history`` (ending with a user turn) and how many turns were cut.

        The system turn (with the grounding's context block) and few-shot examples always
        stay; the oldest exchanges go first until the prompt plus ``max_new_tokens`` fits.
        Content from the caller and from documents cannot produce control tokens
        (:func:`~chattune.data.render.neutralise_control_tokens`).
        """
        head = self.profile.prompt_head(system, grounding.context if grounding else None)
        head = neutralise_messages(self.tokenizer, head)
        turns = neutralise_messages(self.tokenizer, history)
        budget = self.backend.context_window - options.max_new_tokens

        def build(kept: list[Message]) -> tuple[float, list[int]]:
            ids = generation_prompt_ids(self.tokenizer, kept)
            return len(ids), ids

        found = keep_newest(self.tokenizer, head, turns, budget, build)
        if found is not None:
            if found[0]:
                log.info("history budget: dropped the %d oldest turns", found[0])
            return found[1], found[0]
        last = max((i for i, m in enumerate(turns) if m.role == "user"), default=0)
        ids = generation_prompt_ids(self.tokenizer, head + turns[last:])
        raise PromptTooLong(
            f"the message needs {len(ids)} prompt tokens but only {budget} fit "
            f"(context {self.backend.context_window} - max_tokens "
            f"{options.max_new_tokens}); shorten it or lower max_tokens",
            len(ids),
            budget,
        )

    def stream(
        self,
        history: list[Message],
        options: GenerationOptions | None = None,
        system: str | None = None,
        cancel: threading.Event | None = None,
        stop: list[str] | None = None,
        prompt_ids: list[int] | None = None,
        decision: Decision | None = None,
    ) -> Iterator[str]:
        """Yield the reply in pieces; stops at a stop string, an end id, max tokens or
        ``cancel``.

        ``stop`` adds to the profile's stop strings; ``prompt_ids`` skips rebuilding a
        prompt the caller already built with :meth:`build_prompt`; a ``decision`` from
        :meth:`decide` (made here if not given) is the whole reply if it has a fixed one,
        else its grounding's context goes into the prompt.
        """
        decision = decision or self.decide(history)
        if decision.reply is not None:
            yield decision.reply
            return
        options = options or self.profile.generation
        grounding = decision.grounding
        prompt = prompt_ids or self.build_prompt(history, options, system, grounding)[0]
        stops = [*self.profile.stop, *(stop or [])]
        # Hold back as many characters as a stop string could have begun with, so a stop
        # string split across pieces is never shown.
        hold = max((len(s) for s in stops), default=1) - 1
        text, sent = "", 0
        for piece in self.backend.stream(prompt, options, stops, cancel or threading.Event()):
            text += piece
            cut = _first_stop(text, stops)
            if cut >= 0:
                if cut > sent:
                    yield text[sent:cut]
                return
            if len(text) - hold > sent:
                yield text[sent : len(text) - hold]
                sent = len(text) - hold
        if sent < len(text):
            yield text[sent:]

    def reply(self, history: list[Message], **kwargs: Any) -> str:
        return "".join(self.stream(history, **kwargs)).strip()

    def generate(
        self, conversations: list[list[Message]], options: GenerationOptions | None = None
    ) -> list[Generated]:
        """Replies to several conversations (each ending with a user turn) in one batch.

        The batched twin of :meth:`stream`: same profile, routing, grounding, budget and
        stop strings. A conversation's own system turns replace the profile's system prompt.
        """
        options = options or self.profile.generation
        stops = list(self.profile.stop)
        results: list[Generated | None] = [None] * len(conversations)
        prompts: dict[int, list[int]] = {}
        for i, messages in enumerate(conversations):
            system, history = split_system(messages)
            decision = self.decide(history)
            if decision.reply is not None:  # template, handoff, FAQ answer, "don't know"
                results[i] = Generated(decision.reply, True, 0)
            else:
                prompts[i] = self.build_prompt(history, options, system, decision.grounding)[0]
        if prompts:
            replies = self.backend.generate(list(prompts.values()), options, stops)
            for i, reply in zip(prompts, replies, strict=True):
                cut = _first_stop(reply.text, stops)
                stopped = reply.stopped or cut >= 0
                text = reply.text[:cut] if cut >= 0 else reply.text
                results[i] = Generated(text.strip(), stopped, reply.n_tokens)
        return [r for r in results if r is not None]


def _first_stop(text: str, stops: list[str]) -> int:
    """Where the first stop string begins in ``text``, or -1."""
    return min((text.find(s) for s in stops if s in text), default=-1)
