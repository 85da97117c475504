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

import secrets
import time
from typing import Any

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chattune.serve.admission import Ticket
from chattune.serve.protocol import error_body, is_loopback


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
    """Bound what reading a request body can cost, before authentication or parsing.

    - 413 for a body over ``limit`` bytes: by its ``Content-Length`` before reading a byte,
      or, for a chunked body, as soon as the bytes read pass the limit;
    - 400 for a ``Content-Length`` that is no number (or has more than 19 digits);
    - 408 when the body has not arrived within ``read_timeout`` seconds (a client that
      trickles its body would otherwise hold a connection and its buffer for ever).

    A chunked body sent one byte per chunk still costs the HTTP parser (h11) CPU before any
    of this sees it (uvicorn hands the app the chunks already joined): ``RequireKey`` makes
    that cost a header check for callers without a key; SECURITY.md asks for a reverse proxy.
    """

    def __init__(self, app: ASGIApp, limit: int, read_timeout: float = 30.0) -> None:
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not (declared.isdigit() and len(declared) <= 19):
            error = error_body("Content-Length must be a number of bytes", code="invalid_header")
            return await _send_error(send, 400, error)
        if declared is not None and int(declared) > self.limit:
            return await _send_error(send, 413, self._error(f"larger than {self.limit} bytes"))
        seen = 0
        deadline = time.monotonic() + self.read_timeout
        body_done = False

        async def limited() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: only the disconnect, whenever it comes
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"request body not received within {self.read_timeout:g} s"
                ) from None
            seen += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            # FastAPI turns its own HTTPException into our handler's OpenAI-shaped error
            if seen > self.limit:
                raise HTTPException(
                    413, self._error(f"larger than {self.limit} bytes")["error"]["message"]
                )
            return message

        await self.app(scope, limited, send)

    def _error(self, why: str) -> dict[str, Any]:
        return error_body(f"request body {why}", code="request_too_large")


class RequireKey:
    """With API keys, refuse an ``/v1/`` request without an accepted key *before* its body is
    read: an attacker without a key costs a header check, not a 1 MiB body and a JSON parse.
    (The routes' dependencies check again and derive the owner or the agent.)

    Two roles, never mixed (:func:`key_refusal`): customer keys (``keys``) on every ``/v1/``
    route but the agents' ``/v1/handoffs*``, agent keys (``agent_keys``) there only.
    """

    def __init__(self, app: ASGIApp, keys: list[bytes], agent_keys: list[bytes] | None = None):
        self.app, self.keys, self.agent_keys = app, keys, agent_keys or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            refused = key_refusal(header, scope["path"], self.keys, self.agent_keys)
            if refused is not None:
                return await _send_error(send, *refused)
        await self.app(scope, receive, send)


INVALID_KEY = error_body(
    "missing or invalid API key: send 'Authorization: Bearer KEY'",
    "authentication_error",
    code="invalid_api_key",
)
AGENT_API_OFF = error_body(
    "this server has no agent API: start it with --agent-key KEY (or CHATTUNE_AGENT_KEY) "
    "to let people answer handed-off conversations",
    "permission_error",
    code="agent_api_disabled",
)
NOT_AN_AGENT_KEY = error_body(
    "this is a customer key: /v1/handoffs takes an agent key (chattune serve --agent-key)",
    "permission_error",
    code="agent_key_required",
)


def is_agent_path(path: str) -> bool:
    """True for the agents' routes, ``/v1/handoffs`` and below (not ``/v1/handoffsX``)."""
    return path == "/v1/handoffs" or path.startswith("/v1/handoffs/")


def key_refusal(
    header: bytes, path: str, keys: list[bytes], agent_keys: list[bytes]
) -> tuple[int, dict[str, Any]] | None:
    """Why the ``Authorization`` header may not call ``path``, as (status, error body);
    ``None`` when it may.

    On the agents' routes: 403 if the server has no agent keys or the key is a customer's,
    401 for any other key. Elsewhere: 401 for anything but a customer key (an agent key
    too), unless the server has no customer keys (an open server).

    Example:
        >>> key_refusal(b"Bearer cust", "/v1/handoffs", [b"cust"], [b"agent"])[0]
        403
    """
    if is_agent_path(path):
        if not agent_keys:
            return 403, AGENT_API_OFF
        if accepted_key(header, agent_keys) is not None:
            return None
        if keys and accepted_key(header, keys) is not None:
            return 403, NOT_AN_AGENT_KEY
        return 401, INVALID_KEY
    if keys and accepted_key(header, keys) is None:
        return 401, INVALID_KEY
    return None


def accepted_key(header: bytes, keys: list[bytes]) -> bytes | None:
    """The key in an ``Authorization: Bearer KEY`` header if it is one of ``keys``.

    Compared in constant time on bytes: header values are bytes on the wire, and a
    non-ASCII token is just a wrong key (``compare_digest`` refuses non-ASCII ``str``).
    """
    given = header[7:].strip() if header.startswith(b"Bearer ") else b""
    return given if any(secrets.compare_digest(given, k) for k in keys) and given else None


class LoopbackHostOnly:
    """On an open (keyless) server, refuse requests whose ``Host`` is not a loopback name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if not is_loopback(name):
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
    """Releases the request's slot when the response ends, however it ends, and ends it at
    the request's deadline.

    Starlette does not run an event generator's ``finally`` if the client left before the
    first event, and a leaked slot would shrink the server for good. And a client that
    stops reading (a full TCP window) blocks ``send`` for ever, holding its slot past any
    timeout checked between pieces: so the whole response runs under the deadline.
    """

    def __init__(self, content: Any, ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self.ticket.remaining() + 5.0):  # + the final events
                await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()
