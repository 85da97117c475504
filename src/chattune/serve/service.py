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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from chattune.chat.engine import ChatEngine, PromptTooLong, split_system
from chattune.data.types import Message
from chattune.knowledge.grounding import Grounding
from chattune.model.generation import GenerationOptions
from chattune.serve.admission import ApiError, Slots, Ticket
from chattune.serve.protocol import (
    MIN_TEMPERATURE,
    ChatCompletionRequest,
    ServeOptions,
    chunk,
    completion,
    error_body,
    new_id,
)
from chattune.serve.store import Store

log = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request turned into what generation needs."""

    history: list[Message]
    system: str | None
    options: GenerationOptions
    prompt_ids: list[int]
    stop: list[str]
    grounding: Grounding | None = None

    def sources(self, text: str = "") -> dict[str, Any]:
        """The response's ``sources`` field; absent when the server has no knowledge base."""
        return {"sources": self.grounding.sources(text)} if self.grounding else {}


class ChatService:
    def __init__(
        self,
        engine: ChatEngine,
        store: Store,
        model_name: str,
        options: ServeOptions | None = None,
    ) -> None:
        self.engine, self.store, self.model_name = engine, store, model_name
        self.settings = options or ServeOptions()
        self.slots = Slots(self.settings.max_concurrency, self.settings.max_queue)

    # ----- 2. cheap checks, 3. prepare -------------------------------------------------

    def _max_tokens(self, req: ChatCompletionRequest) -> int:
        asked = req.max_completion_tokens or req.max_tokens
        limit = self.settings.max_tokens_limit
        if asked is not None and asked > limit:
            raise ApiError(
                400, f"max_tokens {asked} is over this server's limit of {limit}", "max_tokens"
            )
        return asked or min(self.engine.profile.generation.max_new_tokens, limit)

    def _check_conversation(self, owner: str, conversation_id: str | None) -> None:
        if conversation_id and self.store.get_conversation(owner, conversation_id) is None:
            raise ApiError(
                404,
                f"conversation {conversation_id!r} not found",
                param="conversation_id",
                code="not_found",
            )

    async def _prepare(self, req: ChatCompletionRequest, owner: str) -> PreparedRequest:
        max_tokens = self._max_tokens(req)
        await asyncio.to_thread(self._check_conversation, owner, req.conversation_id)
        return await asyncio.to_thread(self.prepare, req, max_tokens)

    def prepare(self, req: ChatCompletionRequest, max_tokens: int) -> PreparedRequest:
        """Turn a request into a prompt, or raise the 400 that names the bad field.

        Blocking (retrieval embeds the question): the routes run it in a worker thread.
        """
        system, history = split_system([Message(m.role, m.content) for m in req.messages])
        sampled = req.temperature is not None and req.temperature >= MIN_TEMPERATURE
        options = self.engine.options(
            max_new_tokens=max_tokens,
            temperature=req.temperature if sampled else None,
            # OpenAI: temperature 0 means greedy (and under MIN_TEMPERATURE is as good as 0)
            do_sample=sampled if req.temperature is not None else None,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
        )
        context = self.engine.backend.context_window
        if options.max_new_tokens >= context:
            raise ApiError(
                400,
                f"max_tokens {options.max_new_tokens} leaves no room for the "
                f"prompt in the model's {context}-token context",
                param="max_tokens",
            )
        grounding = self.engine.ground(history)
        from jinja2 import TemplateError

        try:
            ids, _ = self.engine.build_prompt(history, options, system, grounding)
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
        return PreparedRequest(history, system, options, ids, req.stop_list, grounding)

    # ----- 4. generate ------------------------------------------------------------------

    async def _pieces(self, p: PreparedRequest, ticket: Ticket) -> AsyncIterator[str]:
        """The engine's reply pieces, pumped from a worker thread, within the deadline."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        cancel = ticket.cancel

        def work() -> None:
            try:
                for piece in self.engine.stream(
                    p.history, p.options, p.system, cancel, p.stop, p.prompt_ids, p.grounding
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), ticket.remaining())
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

    async def complete(
        self,
        req: ChatCompletionRequest,
        owner: str,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any]:
        """A whole reply. A client that goes away, queued or generating, gives up its place
        and cancels its generation (nothing stored)."""
        ticket = self.slots.admit(self.settings.request_timeout)
        watcher = asyncio.create_task(_watch(disconnected, ticket.cancel)) if disconnected else None
        try:
            p = await self._prepare(req, owner)
            await _acquire_unless_gone(ticket, watcher)
            text = "".join([piece async for piece in self._pieces(p, ticket)]).strip()
        finally:
            ticket.release()
            if watcher:
                watcher.cancel()
        if watcher and watcher.done() and not watcher.cancelled() and watcher.result():
            raise _client_gone()
        finish, usage, extra = await self._conclude(owner, req.conversation_id, p, text)
        return completion(self.model_name, text, finish, usage, extra)

    async def stream(
        self, req: ChatCompletionRequest, owner: str
    ) -> tuple[AsyncIterator[str], Ticket]:
        """Server-sent events (role chunk, content chunks, final chunk, ``[DONE]``) and the
        request's ticket, which the caller must release when the response ends, also if the
        events are never iterated (see ``guards.GuardedStreamingResponse``).

        Everything that can fail with a status fails here, before the first byte. A failure
        after it becomes an OpenAI-style ``error`` event that ends the stream. With a
        knowledge base the role chunk and the final chunk carry ``sources``.
        """
        ticket = self.slots.admit(self.settings.request_timeout)
        try:
            p = await self._prepare(req, owner)
        except BaseException:
            ticket.release()
            raise
        return self._events(req, owner, p, ticket), ticket

    async def _events(
        self, req: ChatCompletionRequest, owner: str, p: PreparedRequest, ticket: Ticket
    ) -> AsyncIterator[str]:
        cid, name = new_id("chatcmpl"), self.model_name
        try:
            await ticket.acquire()
            # Sources come first (the page shows them while the reply streams); the final
            # chunk repeats them with ``cited`` set from the finished reply.
            yield _sse(chunk(cid, name, {"role": "assistant", "content": ""}, None, p.sources()))
            pieces: list[str] = []
            async for piece in self._pieces(p, ticket):
                pieces.append(piece)
                yield _sse(chunk(cid, name, {"content": piece}))
            text = "".join(pieces).strip()
            finish, usage, extra = await self._conclude(owner, req.conversation_id, p, text)
            yield _sse(chunk(cid, name, {}, finish, {"usage": usage, **extra}))
            yield "data: [DONE]\n\n"
        except ApiError as e:
            yield _sse(e.body())
        except Exception:
            log.exception("generation failed after the stream began")
            yield _sse(error_body("internal error while generating the reply", "server_error"))
        finally:
            ticket.release()

    # ----- 5. conclude: count, store ------------------------------------------------------

    async def _conclude(
        self, owner: str, conversation_id: str | None, p: PreparedRequest, text: str
    ) -> tuple[str, dict[str, int], dict[str, Any]]:
        """(finish reason, usage, the response's extra fields) for a finished reply, stored
        first when it belongs to a conversation: both messages in one transaction, so a crash
        never stores a question without its reply."""
        finish, usage = self._finish(p, text)
        sources = p.sources(text)
        extra: dict[str, Any] = {}
        if conversation_id:
            meta = {"finish_reason": finish, **sources}
            message_id = await asyncio.to_thread(
                self.store.append_exchange,
                owner,
                conversation_id,
                p.history[-1].content,
                text,
                meta,
            )
            if message_id is None:  # deleted while the reply was generated
                raise ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")
            extra = {"conversation_id": conversation_id, "message_id": message_id}
        return finish, usage, {**extra, **sources}

    def _finish(self, p: PreparedRequest, text: str) -> tuple[str, dict[str, int]]:
        if p.grounding and p.grounding.reply is not None:  # FAQ answer or "don't know"
            return "stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        n = len(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        finish = "length" if n >= p.options.max_new_tokens else "stop"
        usage = {
            "prompt_tokens": len(p.prompt_ids),
            "completion_tokens": n,
            "total_tokens": len(p.prompt_ids) + n,
        }
        return finish, usage


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
