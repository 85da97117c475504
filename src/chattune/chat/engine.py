"""The chat engine: one prompt builder and one generation path behind every front end.

The engine turns (profile, conversation so far) into the model's prompt through the chat
template, keeping the newest turns that fit the context window, and streams the reply from
a swappable :class:`Backend`. With a knowledge base, :meth:`ChatEngine.ground` first decides
how the turn is grounded (passages in a quoted context block, a stored FAQ answer, or "I don't
know"); the CLI chat, the HTTP API and the web page all go through here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from chattune.chat.profile import BotProfile
from chattune.data.render import generation_prompt_ids
from chattune.data.types import Message
from chattune.errors import ChattuneError
from chattune.knowledge.grounding import Grounding, Knowledge
from chattune.model.generation import GenerationOptions

log = logging.getLogger(__name__)


class PromptTooLong(ChattuneError):
    """The newest user message alone does not fit the model's context."""

    def __init__(self, message: str, prompt_tokens: int, budget: int) -> None:
        super().__init__(message)
        self.prompt_tokens, self.budget = prompt_tokens, budget


class Backend(Protocol):
    """Generates text for token ids. transformers now; llama.cpp or a vLLM server later."""

    tokenizer: Any
    context_window: int

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]: ...


class TransformersBackend:
    """Generate with ``model.generate`` in a worker thread, streaming decoded text."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = getattr(model, "config", None)
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids = torch.tensor([prompt_ids])
        sampling = (
            {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
            if options.do_sample
            else {}
        )
        kwargs = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            **sampling,
        )
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        errors: list[BaseException] = []

        def work() -> None:
            torch.manual_seed(options.seed)
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancel.set()  # a consumer that stops early frees the worker at the next token
            thread.join()
        if errors:
            raise errors[0]


class ChatEngine:
    """Prompt building, history budget and streaming for one model and one profile."""

    def __init__(
        self,
        backend: Backend,
        profile: BotProfile | None = None,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.backend = backend
        self.profile = profile or BotProfile()
        self.knowledge = knowledge

    def ground(self, history: list[Message]) -> Grounding | None:
        """Retrieve for this turn (the conversation so far); None without a knowledge base."""
        return self.knowledge.ground(history) if self.knowledge else None

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

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
        """
        sys_msg = self.profile.system_message(system)
        if grounding and grounding.context:
            text = f"{sys_msg.content}\n\n{grounding.context}" if sys_msg else grounding.context
            sys_msg = Message("system", text)
        head = ([sys_msg] if sys_msg else []) + self.profile.example_messages()
        budget = self.backend.context_window - options.max_new_tokens
        turns = list(history)
        dropped = 0
        while True:
            ids = generation_prompt_ids(self.tokenizer, head + turns)
            if len(ids) <= budget:
                if dropped:
                    log.info("history budget: dropped the %d oldest turns", dropped)
                return ids, dropped
            later = next((i for i, m in enumerate(turns) if i > 0 and m.role == "user"), None)
            if later is None:
                raise PromptTooLong(
                    f"the message needs {len(ids)} prompt tokens but only {budget} fit "
                    f"(context {self.backend.context_window} - max_tokens "
                    f"{options.max_new_tokens}); shorten it or lower max_tokens",
                    len(ids),
                    budget,
                )
            dropped += later
            turns = turns[later:]

    def options(self, **overrides: Any) -> GenerationOptions:
        """The profile's generation defaults with per-request overrides."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return self.profile.generation.model_copy(update=given)

    def stream(
        self,
        history: list[Message],
        options: GenerationOptions | None = None,
        system: str | None = None,
        cancel: threading.Event | None = None,
        stop: list[str] | None = None,
        prompt_ids: list[int] | None = None,
        grounding: Grounding | None = None,
    ) -> Iterator[str]:
        """Yield the reply in pieces; stops at a stop string, EOS, max tokens or ``cancel``.

        ``stop`` adds to the profile's stop strings; ``prompt_ids`` skips rebuilding a
        prompt the caller already built with :meth:`build_prompt`; a ``grounding`` from
        :meth:`ground` adds its context, or is the whole reply (FAQ answer, "don't know").
        """
        if grounding and grounding.reply is not None:
            yield grounding.reply
            return
        options = options or self.profile.generation
        prompt = prompt_ids or self.build_prompt(history, options, system, grounding)[0]
        stops = [*self.profile.stop, *(stop or [])]
        # Hold back as many characters as a stop string could have begun with, so a stop
        # string split across pieces is never shown.
        hold = max((len(s) for s in stops), default=1) - 1
        text, sent = "", 0
        for piece in self.backend.stream(prompt, options, stops, cancel or threading.Event()):
            text += piece
            cut = min((text.find(s) for s in stops if s in text), default=-1)
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
