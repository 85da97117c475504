"""The FastAPI application: thin routes over :class:`ChatService` and :class:`Store`.

``build_app`` is a factory (no module-level app), so tests build one with a fake engine and
an in-memory store, and ``chattune serve`` builds one with the real model. Routes are plain
module-level functions; what they need (service, store, keys) is on ``app.state``.

Before any route runs, pure-ASGI guards answer the cheapest refusals: a body over
``max_body_bytes`` (413, before authentication or JSON parsing), a key that may not call
the route (``RequireKey``: customer keys everywhere but ``/v1/handoffs*``, agent keys only
there) and, on an open server, a ``Host`` header that is not loopback (DNS rebinding: a web
page on another site resolving its own name to 127.0.0.1 to reach an open local server
from the user's browser).

The agents' routes (human handoff) live in :mod:`chattune.serve.agents`.

A server that serves a bot of a model registry gets a :class:`~chattune.serve.follow.Follower`:
it starts with the app's lifespan and stops with it, and swaps each newly promoted (or
rolled back) version in between requests (see :mod:`chattune.serve.live`). ``/health`` and
``/v1/models`` then show the version served (``"version": "pine-v3"``); the model's id stays
the bot's name, so clients never have to change it.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chattune.chat.engine import ChatEngine
from chattune.serve import agents
from chattune.serve.admission import ApiError, Ticket
from chattune.serve.guards import (
    INVALID_KEY,
    BodyLimit,
    GuardedStreamingResponse,
    LoopbackHostOnly,
    NoSniff,
    RequireKey,
    accepted_key,
)
from chattune.serve.handoff import Webhook
from chattune.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Feedback,
    HandoffRequest,
    Id,
    NewConversation,
    ServeOptions,
    error_body,
)
from chattune.serve.schema import owner_of
from chattune.serve.service import ChatService
from chattune.serve.store import Handoff, Store

if TYPE_CHECKING:
    from chattune.serve.follow import Follower

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"

#: The page loads only its own script and style, talks only to this server, and can't be
#: framed; a reply rendered as HTML by mistake could run no script of its own.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def build_app(
    engine: ChatEngine,
    store: Store,
    model_name: str,
    api_keys: list[str] | None = None,
    agent_keys: list[str] | None = None,
    handoff_webhook: str | None = None,
    version: str | None = None,
    follower: Follower | None = None,
    **options: Any,
) -> FastAPI:
    """The HTTP API and web page for one model.

    Args:
        api_keys: accepted bearer keys; none means an open server (everything belongs to
            one anonymous owner, and only loopback ``Host`` names are accepted unless
            ``insecure_no_auth``). Each key owns the conversations it creates.
        agent_keys: keys of the people who answer handed-off conversations, accepted on
            ``/v1/handoffs*`` only (and only there); none means no agent API.
        handoff_webhook: an http(s) URL POSTed an event on each handoff (ValueError if it
            is not one).
        version: the registry version ``engine`` serves (``"pine-v3"``), if any: shown by
            ``/health`` and ``/v1/models`` and stored with every reply.
        follower: swaps newer versions in while the app runs (started and stopped with
            its lifespan).
        options: :class:`ServeOptions` fields (``max_concurrency=2``, ...), plus
            ``insecure_no_auth`` (bool).

    Example:
        >>> app = build_app(engine, Store("chat.db"), "mybot", ["sk-customer"],
        ...                 agent_keys=["sk-agent"])  # doctest: +SKIP
    """
    insecure = bool(options.pop("insecure_no_auth", False))
    settings = ServeOptions(**options)
    keys = [k.strip().encode() for k in api_keys or [] if k.strip()]
    agent_key_bytes = [k.strip().encode() for k in agent_keys or [] if k.strip()]
    if set(keys) & set(agent_key_bytes):
        raise ValueError("a key cannot be both a customer key and an agent key")
    webhook = Webhook(handoff_webhook) if handoff_webhook else None
    docs = settings.docs

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if follower is not None:
            follower.start(app.state.service.swap)
        yield
        if follower is not None:  # a load in progress is dropped when it ends
            follower.stop()
        if webhook is not None:  # queued deliveries are dropped, not waited for at exit
            webhook.close()

    app = FastAPI(
        lifespan=lifespan,
        title="chattune",
        version="0.1.0",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = ChatService(engine, store, model_name, settings, webhook, version)
    app.state.store = store
    app.state.follower = follower
    app.state.model_name = model_name
    app.state.keys, app.state.agent_keys = keys, agent_key_bytes
    for handler in (_api_error, _invalid, _http, _crash):
        app.add_exception_handler(handler.handles, handler)  # type: ignore[attr-defined]
    app.include_router(router)
    app.include_router(agents.router)
    # Added last = outermost: these run before routing, authentication and parsing.
    if keys or agent_key_bytes:
        app.add_middleware(RequireKey, keys=keys, agent_keys=agent_key_bytes)
    # Without customer keys the customer routes are open: only a loopback Host may reach
    # them (DNS rebinding), agent keys or not.
    if not keys and not insecure:
        app.add_middleware(LoopbackHostOnly)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, read_timeout=settings.body_timeout)
    app.add_middleware(NoSniff)
    return app


# ----- errors: OpenAI's shape, real status codes, never a traceback to the client -------


#: Names pydantic puts in an error's location for the branch of a union it tried.
_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """The request field an error is about: ``messages.0.content``, not pydantic's
    ``body.messages.0.content.str`` (the union branch it tried last)."""
    parts = [
        str(p)
        for p in loc
        if p not in ("body", "query", "path") and str(p).split("[")[0] not in _BRANCHES
    ]
    return ".".join(parts) or None


async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), e.status, e.headers)


async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    if first.get("type") == "json_invalid":  # its location is a byte offset, not a field
        return JSONResponse(error_body(f"invalid JSON: {first['msg']}"), 400)
    param = _param(tuple(first.get("loc", ())))
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return JSONResponse(error_body(message, param=param), 400)


async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
    code = "request_too_large" if e.status_code == 413 else str(e.status_code)
    return JSONResponse(error_body(str(e.detail), code=code), e.status_code, e.headers)


async def _crash(_: Request, e: Exception) -> JSONResponse:
    log.exception("internal error")
    return JSONResponse(error_body("internal server error", "server_error"), 500)


_api_error.handles = ApiError  # type: ignore[attr-defined]
_invalid.handles = RequestValidationError  # type: ignore[attr-defined]
_http.handles = StarletteHTTPException  # type: ignore[attr-defined]
_crash.handles = Exception  # type: ignore[attr-defined]


# ----- routes ---------------------------------------------------------------------------

router = APIRouter()


def owner(request: Request) -> str:
    """The caller's owner hash from ``Authorization: Bearer KEY`` (401 if not accepted)."""
    keys: list[bytes] = request.app.state.keys
    if not keys:
        return owner_of(None)
    # Header values arrive as latin-1 text: encoding back gives the bytes on the wire.
    given = accepted_key(request.headers.get("authorization", "").encode("latin-1"), keys)
    if given is None:
        raise ApiError(401, INVALID_KEY["error"]["message"], code="invalid_api_key",
                       type_="authentication_error")  # fmt: skip
    return owner_of(given.decode("utf-8", "replace"))


def _service(request: Request) -> ChatService:
    return request.app.state.service


def _store(request: Request) -> Store:
    return request.app.state.store


Owner = Annotated[str, Depends(owner)]
Service = Annotated[ChatService, Depends(_service)]
Db = Annotated[Store, Depends(_store)]


def _version(service: ChatService) -> dict[str, str]:
    """``{"version": "pine-v3"}`` when serving a registry version, else nothing."""
    return {} if service.version is None else {"version": service.version}


@router.get("/health")
async def health(request: Request) -> dict[str, str]:
    return {"status": "ok", "model": request.app.state.model_name,
            **_version(request.app.state.service)}  # fmt: skip


@router.get("/v1/models")
async def models(request: Request, _: Owner) -> dict[str, Any]:
    service: ChatService = request.app.state.service
    backend = service.engine.backend
    model = {"id": request.app.state.model_name, "object": "model", "owned_by": "chattune",
             "backend": getattr(backend, "name", type(backend).__name__),
             **_version(service)}  # fmt: skip
    return {"object": "list", "data": [model]}


def _events(opened: tuple[AsyncIterator[str], Ticket]) -> GuardedStreamingResponse:
    """Server-sent events that give the request's slot back however the response ends."""
    return GuardedStreamingResponse(
        *opened,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    req: ChatCompletionRequest,
    request: Request,
    who: Owner,
    service: Service,
) -> Any:
    if req.stream:
        return _events(await service.stream(req, who))
    return await service.complete(req, who, request.is_disconnected)


@router.post("/v1/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request, _: Owner, service: Service) -> Any:
    """OpenAI's legacy text completions: the prompt (text or token ids) continued as given,
    without the profile, knowledge or store; what a remote chattune backend calls."""
    if req.stream:
        return _events(await service.stream_text(req))
    return await service.complete_text(req, request.is_disconnected)


@router.post("/v1/conversations", status_code=201)
def new_conversation(
    who: Owner,
    store: Db,
    body: NewConversation | None = None,
) -> dict[str, Any]:
    return store.create_conversation(who, (body or NewConversation()).title)


@router.get("/v1/conversations")
def list_conversations(who: Owner, store: Db) -> Any:
    return {"object": "list", "data": store.list_conversations(who)}


@router.get("/v1/conversations/{conversation_id}")
def get_conversation(conversation_id: Id, who: Owner, store: Db) -> Any:
    found = store.get_conversation(who, conversation_id)
    if found is None:
        raise ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")
    return found


@router.delete("/v1/conversations/{conversation_id}")
def delete_conversation(conversation_id: Id, who: Owner, store: Db) -> dict[str, Any]:
    """Delete one of the caller's conversations, its messages and their feedback."""
    if not store.delete_conversation(who, conversation_id):
        raise ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.post("/v1/conversations/{conversation_id}/handoff")
def hand_off(
    conversation_id: Id,
    who: Owner,
    request: Request,
    body: HandoffRequest | None = None,
) -> dict[str, Any]:
    """Ask for a person: the conversation waits for an agent and the bot stops answering
    it. Asking again while it waits (or a person answers) changes nothing."""
    handoff = Handoff((body or HandoffRequest()).reason)
    found = _store(request).hand_off(who, conversation_id, handoff)
    if found is None:
        raise ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")
    summary, changed = found
    if changed:
        _service(request).notify(conversation_id, handoff)
    return summary


@router.post("/v1/conversations/{conversation_id}/messages/{message_id}/feedback", status_code=201)
def feedback(
    conversation_id: Id,
    message_id: Id,
    body: Feedback,
    who: Owner,
    store: Db,
) -> dict[str, str]:
    try:
        ok = store.add_feedback(who, conversation_id, message_id, body.rating, body.correction)
    except ValueError as e:
        raise ApiError(400, str(e), param="message_id") from None
    if not ok:
        raise ApiError(
            404, f"message {message_id!r} not found in {conversation_id!r}", code="not_found"
        )
    return {"status": "recorded"}


def _static(name: str) -> Response:
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response((STATIC / name).read_bytes(), media_type=media, headers=PAGE_HEADERS)


_STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())


@router.get("/", include_in_schema=False)
def page() -> Response:
    return _static("index.html")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in _STATIC_FILES:  # a fixed list: no path ever reaches the file system
        raise ApiError(404, f"no static file {name!r}", code="not_found")
    return _static(name)
