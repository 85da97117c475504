"""Admission: who gets into the server, who waits, who is told to come back and when.

A request is *admitted* (or refused with 429 and ``Retry-After``) synchronously on the event
loop, before any work: at most ``max_concurrency + max_queue`` are inside at once. An
admitted request holds a :class:`Ticket` and waits (FIFO) for one of ``max_concurrency``
generation slots. Admission has no ``await`` between the check and the count, so it is
race-free: an admitted streaming request is never refused after its 200 was sent.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from chattune.serve.protocol import error_body


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

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.type, self.param, self.code)


class Ticket:
    """One admitted request's place: released exactly once, whatever happens to it.

    It carries the request's deadline (``request_timeout`` from admission, queueing
    included) and its ``cancel`` event: releasing the place also stops the request's
    generation at the next token, however the response ended. What else the request holds
    until it ends (the engine it is served by, see :mod:`chattune.serve.live`) is let go
    with it: :meth:`then`.
    """

    def __init__(self, slots: Slots, timeout: float) -> None:
        self.slots, self.holding, self.released = slots, False, False
        self.since = 0.0
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.cancel = threading.Event()
        self._then: list[Callable[[], None]] = []

    def then(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the ticket is released (at once if it already was)."""
        if self.released:
            callback()
        else:
            self._then.append(callback)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def timed_out(self) -> ApiError:
        return ApiError(
            408,
            f"no reply within the server's {self.timeout:g} s request timeout",
            code="request_timeout",
            type_="timeout_error",
        )

    async def acquire(self) -> None:
        """Wait (FIFO) for a generation slot, until the request's deadline (408)."""
        try:
            await asyncio.wait_for(self.slots.semaphore.acquire(), self.remaining())
        except TimeoutError:
            raise self.timed_out() from None
        self.holding, self.since = True, time.monotonic()

    def release(self) -> None:
        self.cancel.set()
        if self.released:
            return
        self.released = True
        self.slots.admitted -= 1
        if self.holding:
            self.slots.semaphore.release()
            self.slots.observe(time.monotonic() - self.since)
        for callback in self._then:
            callback()


class Slots:
    """At most ``size`` generations at once; at most ``max_queue`` admitted requests waiting.

    A refusal's ``Retry-After`` is the expected wait for a place: how many requests are
    ahead, times the recent time a request holds a slot (a moving average), divided by the
    slots. A fixed "2 s" sends well-behaved clients back into a still-full queue when a reply
    takes 8 s, and they starve (seen in bench/serve_load.py: 25% gave up after 8 tries).
    """

    def __init__(self, size: int, max_queue: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.size, self.limit = size, size + max_queue
        self.admitted = 0
        self.hold_seconds = 1.0  # moving average of how long a request holds a slot

    def observe(self, seconds: float) -> None:
        self.hold_seconds = 0.8 * self.hold_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until a place is likely free (1..60)."""
        waves = (self.admitted - self.size + 1) / self.size
        return max(1, min(60, math.ceil(waves * self.hold_seconds)))

    def admit(self, timeout: float = 300.0) -> Ticket:
        """A place in the server, or 429 now: no await, so no other request can interleave.
        ``timeout``: seconds the request may take from now, queueing included."""
        if self.admitted >= self.limit:
            raise ApiError(
                429,
                "all generation slots are busy and the queue is full; retry",
                code="rate_limit_exceeded",
                type_="rate_limit_error",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.admitted += 1
        return Ticket(self, timeout)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Admit, wait for a slot, and release on exit."""
        ticket = self.admit()
        try:
            await ticket.acquire()
            yield
        finally:
            ticket.release()
