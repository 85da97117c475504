"""What the HTTP routes do, without HTTP: admit, validate, generate, store.

A request's life, cheapest check first, so a flood is turned away before it costs anything:

1. **admit** (:class:`Slots`): at most ``max_concurrency + max_queue`` requests are in the
   server at once; one more is refused with 429 and ``Retry-After`` right away. Admission is
   synchronous on the event loop, so it is race-free: an admitted streaming request is never
   refused after its 200 was sent.
2. **cheap checks**: the ``max_tokens`` ceiling, the conversation's owner.
3. **prepare** (worker thread): retrieval and the prompt; 400 if it does not fit.
4. **generate** in a slot (worker thread, at most ``max_concurrency`` at once, FIFO), until
   the reply ends, the client goes away (cancelled at the next token), or the request's
   deadline passes (408, or an ``error`` event once streaming has begun).
5. **store** the user message and the reply in one transaction.

Human handoff changes two steps. At step 2, a conversation that waits for a person or is
answered by one (``handoff_state`` ``waiting``/``agent``) is *silenced*: the user message
is stored alone and the answer is empty, with no NLU, no prompt and no generation slot
(a person answers through ``/v1/handoffs``). At step 5, a turn decided ``handoff`` stores
its notice and marks the conversation ``waiting`` in the same transaction, then calls the
webhook (``serve.handoff``) in the background.

Chat completions and text completions (``/v1/completions``: a prompt continued as given,
nothing stored) differ only in steps 3 and 5 and in how their responses are spelled: both
go through :meth:`ChatService._whole` or :meth:`ChatService._opened` and one pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio

from chattune.backends.base import BackendCrashed, BackendError, BackendTimeout
from chattune.chat.engine import ChatEngine, PromptTooLong, split_system
from chattune.chat.routing import Decision
from chattune.data.types import Message
from chattune.model.generation import GenerationOptions
from chattune.serve.admission import ApiError, Slots, Ticket
from chattune.serve.handoff import Webhook, handoff_event
from chattune.serve.protocol import (
    COMPLETION_MAX_TOKENS,
    MIN_TEMPERATURE,
    ChatCompletionRequest,
    CompletionRequest,
    ServeOptions,
    chunk,
    completion,
    error_body,
    new_id,
    text_completion,
)
from chattune.serve.schema import HANDED_OFF, HandoffState
from chattune.serve.store import Handoff, Store

log = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request turned into what generation needs.

    ``raw``: a text completion, whose prompt is generated from as given, through an engine
    without the profile (no system prompt, examples, stop strings or defaults).
    ``silenced``: the conversation's handoff state when a person answers it; nothing is
    decided or generated (``history`` holds only the user message to store).
    """

    history: list[Message]
    system: str | None
    options: GenerationOptions
    prompt_ids: list[int]
    stop: list[str]
    decision: Decision | None = None
    raw: bool = False
    silenced: HandoffState | None = None

    def sources(self, text: str = "") -> dict[str, Any]:
        """The response's ``sources`` (when the turn was grounded in the knowledge base)
        and ``nlu`` (when the bot routes) fields."""
        d = self.decision
        if d is None:
            return {}
        out: dict[str, Any] = {}
        if (sources := d.sources(text)) is not None:
            out["sources"] = sources
        if d.analysis is not None:
            out["nlu"] = d.as_dict()
        return out


@dataclass
class Spelling:
    """How one endpoint spells its event stream around the shared pump (:meth:`_events`):
    an optional first event, one event per piece, and the last event for the whole text."""

    piece: Callable[[str], dict[str, Any]]
    final: Callable[[str], Awaitable[dict[str, Any]]]
    opening: dict[str, Any] | None = None


class ChatService:
    """Chat and text completions, both through one admission, one pump and one stream."""

    def __init__(
        self,
        engine: ChatEngine,
        store: Store,
        model_name: str,
        options: ServeOptions | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self.engine, self.store, self.model_name = engine, store, model_name
        self.webhook = webhook
        self.settings = options or ServeOptions()
        self.slots = Slots(self.settings.max_concurrency, self.settings.max_queue)
        # Generation threads of their own: asyncio's default pool has cpu_count + 4 threads
        # (6 on two cores), fewer than the 8 streams a batching backend decodes at once,
        # and retrieval and the store share it. Twice the slots: a generation that ignores
        # cancel may outlive its slot by up to 30 s without starving the next one.
        self.generators = ThreadPoolExecutor(
            2 * self.settings.max_concurrency, thread_name_prefix="generate"
        )

    @property
    def raw(self) -> ChatEngine:
        """The same backend without the profile: what ``/v1/completions`` generates with,
        keeping the engine's stop handling (a stop string is never shown)."""
        return ChatEngine(self.engine.backend)

    # ----- 2. cheap checks, 3. prepare -------------------------------------------------

    def _max_tokens(self, asked: int | None, default: int) -> int:
        limit = self.settings.max_tokens_limit
        if asked is not None and asked > limit:
            raise ApiError(
                400, f"max_tokens {asked} is over this server's limit of {limit}", "max_tokens"
            )
        return asked or min(default, limit)

    def _handoff_state(self, owner: str, conversation_id: str | None) -> HandoffState | None:
        """Who answers the named conversation (one indexed read); 404 if it is not the
        owner's; ``None`` without a conversation."""
        if not conversation_id:
            return None
        state = self.store.handoff_state(owner, conversation_id)
        if state is None:
            raise ApiError(
                404,
                f"conversation {conversation_id!r} not found",
                param="conversation_id",
                code="not_found",
            )
        return state

    async def _prepare(self, req: ChatCompletionRequest, owner: str) -> PreparedRequest:
        default = self.engine.profile.generation.max_new_tokens
        max_tokens = self._max_tokens(req.max_completion_tokens or req.max_tokens, default)
        state = await asyncio.to_thread(self._handoff_state, owner, req.conversation_id)
        if state in HANDED_OFF:  # a person answers: no NLU, no prompt, no slot
            question = [Message("user", req.messages[-1].content)]
            generation = self.engine.profile.generation
            return PreparedRequest(question, None, generation, [], [], silenced=state)
        return await asyncio.to_thread(self.prepare, req, max_tokens)

    def prepare(self, req: ChatCompletionRequest, max_tokens: int) -> PreparedRequest:
        """Turn a request into a prompt, or raise the 400 that names the bad field.

        Blocking (retrieval embeds the question): the routes run it in a worker thread.
        """
        system, history = split_system([Message(m.role, m.content) for m in req.messages])
        options = _options(self.engine, req, max_tokens)
        context = self.engine.backend.context_window
        if options.max_new_tokens >= context:
            raise ApiError(
                400,
                f"max_tokens {options.max_new_tokens} leaves no room for the "
                f"prompt in the model's {context}-token context",
                param="max_tokens",
            )
        decision = self.engine.decide(history)
        if decision.reply is not None:  # a template, handoff, FAQ answer: no prompt needed
            return PreparedRequest(history, system, options, [], req.stop_list, decision)
        from jinja2 import TemplateError

        try:
            ids, _ = self.engine.build_prompt(history, options, system, decision.grounding)
        except TemplateError as e:  # the model's chat template refuses this conversation
            raise ApiError(400, f"the model's chat template: {e}", param="messages") from None
        except PromptTooLong as e:
            if e.prompt_tokens < context:
                raise ApiError(
                    400,
                    f"max_tokens {options.max_new_tokens} is more than the "
                    f"{context - e.prompt_tokens} tokens left after the prompt",
                    param="max_tokens",
                ) from None
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        return PreparedRequest(history, system, options, ids, req.stop_list, decision)

    async def _prepare_text(self, req: CompletionRequest) -> PreparedRequest:
        max_tokens = self._max_tokens(req.max_tokens, COMPLETION_MAX_TOKENS)
        if isinstance(req.prompt, list):  # cheap: checked on the loop, before a thread
            return self.prepare_text(req, max_tokens)
        return await asyncio.to_thread(self.prepare_text, req, max_tokens)

    def prepare_text(self, req: CompletionRequest, max_tokens: int) -> PreparedRequest:
        """A text completion's prompt: the client's ids (each checked against the
        vocabulary) or its text tokenized as written (no BOS/EOS added); 400 naming ``prompt`` or
        ``max_tokens`` if they do not fit the context."""
        tokenizer, context = self.engine.tokenizer, self.engine.backend.context_window
        if isinstance(req.prompt, str):
            ids = list(tokenizer(req.prompt, add_special_tokens=False)["input_ids"])
        else:  # a list longer than the context is refused below, without this scan
            ids, vocab = req.prompt, len(tokenizer)
            bad = next((i for i, t in enumerate(ids[: context + 1]) if t >= vocab), None)
            if bad is not None:
                why = f"token id {ids[bad]} is not in this model's vocabulary (0 to {vocab - 1})"
                raise ApiError(400, f"prompt[{bad}]: {why}", param="prompt")
        if not ids:
            raise ApiError(400, "the prompt has no tokens", param="prompt")
        if len(ids) > context:
            why = f"the prompt is {len(ids)} tokens; the model's context is {context}"
            raise ApiError(400, why, param="prompt", code="context_length_exceeded")
        if len(ids) + max_tokens > context:
            left = context - len(ids)
            why = f"max_tokens {max_tokens} is more than the {left} tokens left after the prompt"
            raise ApiError(400, why, param="max_tokens")
        options = _options(self.raw, req, max_tokens)
        return PreparedRequest([], None, options, ids, req.stop_list, raw=True)

    # ----- 4. generate: one pump, one whole-reply path, one stream path -----------------

    async def _pieces(self, p: PreparedRequest, ticket: Ticket) -> AsyncIterator[str]:
        """The engine's reply pieces, pumped from a worker thread, within the deadline."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        if p.silenced:
            return
        cancel = ticket.cancel
        engine = self.raw if p.raw else self.engine

        def work() -> None:
            try:
                for piece in engine.stream(
                    p.history, p.options, p.system, cancel, p.stop, p.prompt_ids, p.decision
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, _status(e))

        worker = loop.run_in_executor(self.generators, work)
        try:
            while True:
                try:  # no timer when a piece is already waiting (8 streams: most times)
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for makes a task
                    # per call, a cost paid for every token of every stream
                    try:
                        async with asyncio.timeout(ticket.remaining()):
                            item = await queue.get()
                    except TimeoutError:
                        raise ticket.timed_out() from None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item.replace("\x00", "")  # a model's NUL cannot be stored (PostgreSQL)
        finally:
            cancel.set()  # done, failed, timed out or abandoned: stop at the next token
            # The slot is freed only once the model is idle again (shielded: a client that
            # left cancels this task, and more generations than slots would then run), but
            # a backend that ignores cancel must not hold it for ever.
            with anyio.CancelScope(shield=True):
                await asyncio.wait({worker}, timeout=30)

    async def _whole(
        self,
        prepare: Callable[[], Awaitable[PreparedRequest]],
        disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[PreparedRequest, str]:
        """Admit, prepare, wait for a slot and generate the whole text: every non-streamed
        request's life. A client that goes away, queued or generating, gives up its place
        and cancels its generation (499, nothing stored)."""
        ticket = self.slots.admit(self.settings.request_timeout)
        watcher = asyncio.create_task(_watch(disconnected, ticket.cancel)) if disconnected else None
        try:
            p = await prepare()
            if p.silenced:  # nothing to generate: no slot
                return p, ""
            await _acquire_unless_gone(ticket, watcher)
            text = "".join([piece async for piece in self._pieces(p, ticket)])
        finally:
            ticket.release()
            if watcher:
                watcher.cancel()
        if watcher and watcher.done() and not watcher.cancelled() and watcher.result():
            raise _client_gone()
        return p, text

    async def _opened(
        self,
        prepare: Callable[[], Awaitable[PreparedRequest]],
        spell: Callable[[PreparedRequest], Spelling],
    ) -> tuple[AsyncIterator[str], Ticket]:
        """Admit and prepare a streamed request: everything that can fail with a status
        fails here, before the first byte. Returns the events and the ticket, which the
        caller must release when the response ends, also if the events are never iterated
        (see ``guards.GuardedStreamingResponse``)."""
        ticket = self.slots.admit(self.settings.request_timeout)
        try:
            p = await prepare()
        except BaseException:
            ticket.release()
            raise
        return self._events(p, ticket, spell(p)), ticket

    async def _events(
        self, p: PreparedRequest, ticket: Ticket, spell: Spelling
    ) -> AsyncIterator[str]:
        """Server-sent events: wait for a slot, then the opening event, one per piece, the
        final one and ``[DONE]``. A failure after the 200 becomes an OpenAI-style ``error``
        event that ends the stream (the ``openai`` client raises it)."""
        try:
            if not p.silenced:  # nothing to generate: no slot
                await ticket.acquire()
            if spell.opening is not None:
                yield _sse(spell.opening)
            pieces: list[str] = []
            async for piece in self._pieces(p, ticket):
                pieces.append(piece)
                yield _sse(spell.piece(piece))
            yield _sse(await spell.final("".join(pieces)))
            yield "data: [DONE]\n\n"
        except ApiError as e:
            yield _sse(e.body())
        except Exception:
            log.exception("generation failed after the stream began")
            yield _sse(error_body("internal error while generating the reply", "server_error"))
        finally:
            ticket.release()

    # ----- the two endpoints over that path ---------------------------------------------

    async def complete(
        self,
        req: ChatCompletionRequest,
        owner: str,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any]:
        """A whole chat reply, stored when the request names a conversation."""
        p, text = await self._whole(lambda: self._prepare(req, owner), disconnected)
        text = text.strip()
        finish, usage, extra = await self._conclude(owner, req.conversation_id, p, text)
        if "handoff" in extra and "message_id" not in extra:  # a person took over meanwhile
            text = ""
        return completion(self.model_name, text, finish, usage, extra)

    async def stream(
        self, req: ChatCompletionRequest, owner: str
    ) -> tuple[AsyncIterator[str], Ticket]:
        """A chat reply as events (role chunk, content chunks, final chunk, ``[DONE]``) and
        its ticket (see :meth:`_opened`). With a knowledge base the role chunk and the final
        chunk carry ``sources``."""
        return await self._opened(
            lambda: self._prepare(req, owner), lambda p: self._chat_spelling(req, owner, p)
        )

    def _chat_spelling(
        self, req: ChatCompletionRequest, owner: str, p: PreparedRequest
    ) -> Spelling:
        cid, name = new_id("chatcmpl"), self.model_name

        async def final(text: str) -> dict[str, Any]:
            finish, usage, extra = await self._conclude(owner, req.conversation_id, p, text.strip())
            return chunk(cid, name, {}, finish, {"usage": usage, **extra})

        # Sources come first (the page shows them while the reply streams); the final chunk
        # repeats them with ``cited`` set from the finished reply.
        first = p.sources() if not p.silenced else {"handoff": {"state": p.silenced}}
        opening = chunk(cid, name, {"role": "assistant", "content": ""}, None, first)
        return Spelling(lambda piece: chunk(cid, name, {"content": piece}), final, opening)

    async def complete_text(
        self,
        req: CompletionRequest,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any]:
        """A whole text completion: the prompt continued as given, the text not stripped
        (a leading space is part of a continuation), nothing stored."""
        p, text = await self._whole(lambda: self._prepare_text(req), disconnected)
        finish, usage = self._finish(p, text)
        return text_completion(new_id("cmpl"), self.model_name, text, finish, usage)

    async def stream_text(self, req: CompletionRequest) -> tuple[AsyncIterator[str], Ticket]:
        """A text completion as events: chunks of partial ``text``, a last chunk with
        ``finish_reason`` and ``usage``, ``[DONE]``."""
        return await self._opened(lambda: self._prepare_text(req), self._text_spelling)

    def _text_spelling(self, p: PreparedRequest) -> Spelling:
        cid, name = new_id("cmpl"), self.model_name

        async def final(text: str) -> dict[str, Any]:
            return text_completion(cid, name, "", *self._finish(p, text))

        return Spelling(lambda piece: text_completion(cid, name, piece), final)

    # ----- 5. conclude: count, store ------------------------------------------------------

    async def _conclude(
        self, owner: str, conversation_id: str | None, p: PreparedRequest, text: str
    ) -> tuple[str, dict[str, int], dict[str, Any]]:
        """(finish reason, usage, the response's extra fields) for a finished reply, stored
        first when it belongs to a conversation: both messages in one transaction, so a crash
        never stores a question without its reply.

        A silenced turn stores the question alone. A ``handoff`` turn also marks the
        conversation ``waiting`` (same transaction) and adds the ``handoff`` field. Without
        a conversation nothing is stored, so nothing is handed off: the reply is the
        handoff notice, and ``nlu`` says the route was ``handoff``.
        """
        finish, usage = self._finish(p, text)
        if not conversation_id:
            return finish, usage, p.sources(text)
        if p.silenced:
            stored = await asyncio.to_thread(
                self.store.append, owner, conversation_id, "user", p.history[-1].content
            )
            if stored is None:  # deleted meanwhile
                raise _gone(conversation_id)
            return finish, usage, {"conversation_id": conversation_id,
                                   "handoff": {"state": p.silenced}}  # fmt: skip
        sources = p.sources(text)
        meta = {"finish_reason": finish, **sources}
        exchange = (owner, conversation_id, p.history[-1].content, text, meta)
        extra: dict[str, Any] = {"conversation_id": conversation_id}
        d = p.decision
        if d is not None and d.handoff:
            handoff = Handoff(d.reason, d.as_dict())
            done = await asyncio.to_thread(self.store.append_handoff, *exchange, handoff)
            if done is None:
                raise _gone(conversation_id)
            extra["message_id"], extra["handoff"], changed = done
            if changed:
                self.notify(conversation_id, handoff)
        else:
            stored = await asyncio.to_thread(self.store.append_bot_reply, *exchange)
            if stored is None:  # deleted while the reply was generated
                raise _gone(conversation_id)
            message_id, handed_off = stored
            if handed_off is not None:  # a person took over meanwhile: the reply is dropped
                return finish, usage, {**extra, "handoff": handed_off}
            extra["message_id"] = message_id
        return finish, usage, {**extra, **sources}

    def notify(self, conversation_id: str, handoff: Handoff) -> None:
        """Tell the webhook (if any) that a conversation now waits for a person; returns at
        once (delivery runs in the background)."""
        if self.webhook is not None:
            event = handoff_event(conversation_id, "waiting", handoff.reason, handoff.nlu)
            self.webhook.send(event)

    def _finish(self, p: PreparedRequest, text: str) -> tuple[str, dict[str, int]]:
        """(finish reason, usage). The backend streams text, not tokens, so the reply is
        counted by tokenizing it again: "length" when that reaches ``max_tokens``."""
        if p.silenced or (p.decision and p.decision.reply is not None):  # nothing generated
            return "stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        n = len(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        k = len(p.prompt_ids)
        usage = {"prompt_tokens": k, "completion_tokens": n, "total_tokens": k + n}
        return "length" if n >= p.options.max_new_tokens else "stop", usage


def _status(e: BaseException) -> BaseException:
    """A backend's failure as the HTTP error it is (the rest stay 500s): its worker died
    (503, retry), its remote server failed (502) or went silent (504)."""
    if isinstance(e, BackendCrashed):
        return ApiError(503, str(e), code="backend_crashed", type_="server_error",
                        headers={"Retry-After": "1"})  # fmt: skip
    if isinstance(e, BackendTimeout):
        return ApiError(504, str(e), code="backend_timeout", type_="server_error")
    if isinstance(e, BackendError):
        return ApiError(502, str(e), code="backend_error", type_="server_error")
    return e


def _options(
    engine: ChatEngine, req: ChatCompletionRequest | CompletionRequest, max_tokens: int
) -> GenerationOptions:
    """The engine's defaults with the request's sampling fields. OpenAI's temperature 0
    means greedy, and so does one under MIN_TEMPERATURE (dividing logits by 1e-40
    overflows them); a request without a temperature keeps the engine's default."""
    sampled = req.temperature is not None and req.temperature >= MIN_TEMPERATURE
    return engine.options(
        max_new_tokens=max_tokens,
        temperature=req.temperature if sampled else None,
        do_sample=sampled if req.temperature is not None else None,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
    )


async def _acquire_unless_gone(ticket: Ticket, watcher: asyncio.Task[bool] | None) -> None:
    """Wait for a slot, unless the client leaves first (then 499: its place is given up)."""
    if watcher is None:
        return await ticket.acquire()
    acquire = asyncio.ensure_future(ticket.acquire())
    done, _ = await asyncio.wait({acquire, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if acquire not in done:
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
        raise _client_gone()
    acquire.result()  # a 408 if the deadline passed while queued


def _gone(conversation_id: str) -> ApiError:
    return ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")


def _client_gone() -> ApiError:
    return ApiError(499, "the client closed the request", code="client_closed_request")


async def _watch(disconnected: Callable[[], Awaitable[bool]], cancel: threading.Event) -> bool:
    """Poll for a client that went away; cancel its generation if so."""
    while not cancel.is_set():
        if await disconnected():
            cancel.set()
            return True
        await asyncio.sleep(0.1)
    return False


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
