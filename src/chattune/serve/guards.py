"""Pure-ASGI guards that answer before FastAPI parses anything, and a streaming response
that always gives its slot back.

- :class:`BodyLimit`: 413 for a body over the limit, by ``Content-Length`` before a byte is
  read, or as soon as a chunked body passes it; 400 for a ``Content-Length`` that is no number.
- :class:`LoopbackHostOnly`: on an open (keyless) server, only requests addressed to a
  loopback name (DNS rebinding: a web page on another site resolving its own name to
  127.0.0.1 to reach an open local server from the user's browser).
- :class:`NoSniff`: ``X-Content-Type-Options: nosniff`` on every response.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chattune.serve.admission import Ticket
from chattune.serve.protocol import error_body

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every response: a reply or a stored message
    served as JSON is never guessed to be HTML by a browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, with_header if scope["type"] == "http" else send)


class BodyLimit:
    """413 for a body over ``limit`` bytes: by its ``Content-Length`` before reading a byte,
    or, for a chunked body, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            error = error_body("Content-Length must be a number of bytes", code="invalid_header")
            return await _send_error(send, 400, error)
        if declared is not None and int(declared) > self.limit:
            return await _send_error(send, 413, self._error())
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI turns its own HTTPException into our handler's 413
                raise HTTPException(413, self._error()["error"]["message"])
            return message

        await self.app(scope, limited, send)

    def _error(self) -> dict[str, Any]:
        return error_body(f"request body larger than {self.limit} bytes", code="request_too_large")


class LoopbackHostOnly:
    """On an open (keyless) server, refuse requests whose ``Host`` is not a loopback name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if name not in LOOPBACK_HOSTS:
                return await _send_error(
                    send,
                    400,
                    error_body(
                        f"Host {host!r} refused: this server has no API key, so it answers "
                        "only requests addressed to localhost or 127.0.0.1; start it with "
                        "--api-key to serve other names",
                        code="invalid_host",
                    ),
                )
        await self.app(scope, receive, send)


class GuardedStreamingResponse(StreamingResponse):
    """Releases the request's slot when the response ends, however it ends: Starlette
    does not run an event generator's ``finally`` if the client left before the first
    event, and a leaked slot would shrink the server for good."""

    def __init__(self, content: Any, ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()
