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
from chattune.data.render import generation_prompt_ids, neutralise_control_tokens, tokenize
from chattune.data.types import Message
from chattune.errors import ChattuneError
from chattune.knowledge.grounding import Grounding, Knowledge
from chattune.model.generation import GenerationOptions, decoding_kwargs

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


class BackendTimeout(ChattuneError):
    """The backend produced no token for ``token_timeout`` seconds: generation is abandoned."""


class TransformersBackend:
    """Generate with ``model.generate`` in a worker thread, streaming decoded text.

    Every failure in the worker (a bad option, out of memory, a broken model) ends the
    stream and is re-raised in the consumer's thread; and the consumer waits at most
    ``token_timeout`` seconds for each piece, so no failure can leave a caller waiting.
    """

    def __init__(self, model: Any, tokenizer: Any, token_timeout: float = 120.0) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.token_timeout = token_timeout
        config = getattr(model, "config", None)
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        import queue

        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.token_timeout
        )
        errors: list[BaseException] = []

        def work() -> None:
            try:  # everything, seeding included: a worker that dies must still end the stream
                self._generate(prompt_ids, options, stop, cancel, streamer)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        except queue.Empty:
            raise BackendTimeout(
                f"no token for {self.token_timeout:g} s; generation abandoned"
            ) from None
        finally:
            cancel.set()  # a consumer that stops early frees the worker at the next token
            thread.join(self.token_timeout)
            if thread.is_alive():
                log.error("generation worker still running %gs after cancel", self.token_timeout)
        if errors:
            raise errors[0]

    def _generate(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
        streamer: Any,
    ) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        ids = torch.tensor([prompt_ids])
        kwargs: dict[str, Any] = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            max_new_tokens=options.max_new_tokens,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            **decoding_kwargs(options),
        )
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        with torch.no_grad():
            self.model.generate(**kwargs)


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
        Content from the caller and from documents cannot produce control tokens
        (:func:`~chattune.data.render.neutralise_control_tokens`).
        """
        sys_msg = self.profile.system_message(system)
        if grounding and grounding.context:
            text = f"{sys_msg.content}\n\n{grounding.context}" if sys_msg else grounding.context
            sys_msg = Message("system", text)
        head = ([sys_msg] if sys_msg else []) + self.profile.example_messages()
        head = [self._safe(m) for m in head]
        turns = [self._safe(m) for m in history]
        budget = self.backend.context_window - options.max_new_tokens
        ids = generation_prompt_ids(self.tokenizer, head + turns)
        if len(ids) <= budget:
            return ids, 0
        for cut in self._cuts(head, turns, len(ids), budget):
            ids = generation_prompt_ids(self.tokenizer, head + turns[cut:])
            if len(ids) <= budget:
                log.info("history budget: dropped the %d oldest turns", cut)
                return ids, cut
        raise PromptTooLong(
            f"the message needs {len(ids)} prompt tokens but only {budget} fit "
            f"(context {self.backend.context_window} - max_tokens "
            f"{options.max_new_tokens}); shorten it or lower max_tokens",
            len(ids),
            budget,
        )

    def _safe(self, message: Message) -> Message:
        return Message(message.role, neutralise_control_tokens(self.tokenizer, message.content))

    def _cuts(
        self, head: list[Message], turns: list[Message], rendered: int, budget: int
    ) -> list[int]:
        """Where the kept history may start (a user turn), the first likely to fit first.

        Each message is tokenized once and the template's overhead spread evenly over the
        messages, so one pass from the newest turn estimates every cut; the caller renders
        the estimate to check it and tries the next cut only if the estimate was short.
        Re-rendering the whole history once per dropped exchange was quadratic.
        """
        lengths = [len(tokenize(self.tokenizer, m.content)) for m in head + turns]
        overhead = max(0.0, (rendered - sum(lengths)) / len(lengths))
        cost = [n + overhead for n in lengths]
        fixed, tail = sum(cost[: len(head)]), cost[len(head) :]
        starts = [i for i, m in enumerate(turns) if i > 0 and m.role == "user"]
        kept, fits = 0.0, len(starts) - 1
        suffix = {}
        for i in range(len(tail) - 1, -1, -1):
            kept += tail[i]
            suffix[i] = kept
        for j, start in enumerate(starts):
            if fixed + suffix[start] <= budget:
                fits = j
                break
        return starts[fits:] if starts else []

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
