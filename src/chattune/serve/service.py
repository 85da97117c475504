"""What the HTTP routes do, without HTTP: validate against the model, generate, store.

Generation runs in worker threads (PyTorch releases the GIL), at most ``max_concurrency`` at
a time; further requests wait in a FIFO queue of at most ``max_queue``, and beyond that are
refused with 429 so a burst cannot pile up unbounded work.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from chattune.chat.engine import ChatEngine, PromptTooLong
from chattune.data.types import Message
from chattune.knowledge.grounding import Grounding
from chattune.model.generation import GenerationOptions
from chattune.serve.protocol import ChatCompletionRequest, chunk, completion, new_id
from chattune.serve.store import Store


class ApiError(Exception):
    """An error with an HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_
        self.headers = headers or {}


class Slots:
    """At most ``size`` generations at once, FIFO waiting, bounded queue."""

    def __init__(self, size: int, max_queue: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.max_queue = max_queue
        self.waiting = 0

    def check(self) -> None:
        """Refuse now (429) if this request would have to wait in a full queue."""
        if self.semaphore.locked() and self.waiting >= self.max_queue:
            raise ApiError(
                429,
                "all generation slots are busy and the queue is full; retry",
                code="rate_limit_exceeded",
                type_="rate_limit_error",
                headers={"Retry-After": "2"},
            )

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self.check()
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.semaphore.release()


@dataclass
class Prepared:
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
        max_concurrency: int = 1,
        max_queue: int = 8,
    ) -> None:
        self.engine, self.store, self.model_name = engine, store, model_name
        self.slots = Slots(max_concurrency, max_queue)

    def prepare(self, req: ChatCompletionRequest) -> Prepared:
        """Turn a request into a prompt, or raise the 400 that names the bad field.

        Blocking (retrieval embeds the question): the routes run it in a worker thread.
        """
        system = "\n".join(m.content for m in req.messages if m.role == "system") or None
        history = [Message(m.role, m.content) for m in req.messages if m.role != "system"]
        options = self.engine.options(
            max_new_tokens=req.max_completion_tokens or req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
        )
        if req.temperature is not None:  # OpenAI: temperature 0 means greedy
            options = options.model_copy(
                update={"do_sample": req.temperature > 0, "temperature": max(req.temperature, 1e-3)}
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
        try:
            ids, _ = self.engine.build_prompt(history, options, system, grounding)
        except PromptTooLong as e:
            if e.prompt_tokens < context:
                raise ApiError(
                    400,
                    f"max_tokens {options.max_new_tokens} is more than the "
                    f"{context - e.prompt_tokens} tokens left after the prompt",
                    param="max_tokens",
                ) from None
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Prepared(history, system, options, ids, stop, grounding)

    def _check_conversation(self, owner: str, conversation_id: str | None) -> None:
        if conversation_id and self.store.get_conversation(owner, conversation_id) is None:
            raise ApiError(
                404,
                f"conversation {conversation_id!r} not found",
                param="conversation_id",
                code="not_found",
            )

    def _finish(self, p: Prepared, text: str) -> tuple[str, dict[str, int]]:
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

    def _store_exchange(
        self, owner: str, conversation_id: str | None, p: Prepared, text: str, finish: str
    ) -> dict[str, Any]:
        if not conversation_id:
            return {}
        self.store.append(owner, conversation_id, "user", p.history[-1].content)
        meta = {"finish_reason": finish, **p.sources(text)}
        message_id = self.store.append(owner, conversation_id, "assistant", text, meta)
        return {"conversation_id": conversation_id, "message_id": message_id}

    async def complete(self, req: ChatCompletionRequest, owner: str) -> dict[str, Any]:
        p = await asyncio.to_thread(self.prepare, req)
        self._check_conversation(owner, req.conversation_id)
        async with self.slots.hold():
            text = await asyncio.to_thread(
                lambda: "".join(
                    self.engine.stream(
                        p.history,
                        p.options,
                        p.system,
                        stop=p.stop,
                        prompt_ids=p.prompt_ids,
                        grounding=p.grounding,
                    )
                )
            )
        text = text.strip()
        finish, usage = self._finish(p, text)
        extra = self._store_exchange(owner, req.conversation_id, p, text, finish)
        return completion(self.model_name, text, finish, usage, {**extra, **p.sources(text)})

    async def stream(self, req: ChatCompletionRequest, owner: str) -> AsyncIterator[str]:
        """Server-sent events: role chunk, content chunks, final chunk, ``[DONE]``.

        With a knowledge base the role chunk and the final chunk carry ``sources``.

        Validation happens before the first byte, so errors still get a proper status.
        If the client goes away, the generator is closed and generation stops at the next
        token, freeing the slot.
        """
        p = await asyncio.to_thread(self.prepare, req)
        self._check_conversation(owner, req.conversation_id)
        self.slots.check()  # a full queue is refused with a status, before any byte is sent
        return self._events(req, owner, p)

    async def _events(self, req: ChatCompletionRequest, owner: str, p: Prepared):
        async with self.slots.hold():
            async for event in self._generate_events(req, owner, p):
                yield event

    async def _generate_events(self, req: ChatCompletionRequest, owner: str, p: Prepared):
        cid, name = new_id("chatcmpl"), self.model_name
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

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
        pieces: list[str] = []
        try:
            # Sources come first (the page shows them while the reply streams); the final
            # chunk repeats them with ``cited`` set from the finished reply.
            yield _sse(chunk(cid, name, {"role": "assistant", "content": ""}, None, p.sources()))
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                pieces.append(item)
                yield _sse(chunk(cid, name, {"content": item}))
            text = "".join(pieces).strip()
            finish, usage = self._finish(p, text)
            extra = self._store_exchange(owner, req.conversation_id, p, text, finish)
            yield _sse(chunk(cid, name, {}, finish, {"usage": usage, **extra, **p.sources(text)}))
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # the client went away or we are done: stop at the next token
            await worker


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
