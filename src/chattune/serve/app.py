"""The FastAPI application: thin routes over :class:`ChatService` and :class:`Store`.

``build_app`` is a factory (no module-level app), so tests build one with a fake engine and
an in-memory store, and ``chattune serve`` builds one with the real model.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chattune.chat.engine import ChatEngine
from chattune.serve.protocol import ChatCompletionRequest, Feedback, NewConversation, error_body
from chattune.serve.service import ApiError, ChatService
from chattune.serve.store import Store, owner_of

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def build_app(
    engine: ChatEngine,
    store: Store,
    model_name: str,
    api_keys: list[str] | None = None,
    max_concurrency: int = 1,
    max_queue: int = 8,
) -> FastAPI:
    """The HTTP API and web page for one model.

    Args:
        api_keys: accepted bearer keys; none means an open server (everything belongs to
            one anonymous owner). Each key owns the conversations it creates.
    """
    app = FastAPI(title="chattune", version="0.1.0")
    service = ChatService(engine, store, model_name, max_concurrency, max_queue)
    keys = [k for k in (api_keys or []) if k]

    def owner(request: Request) -> str:
        if not keys:
            return owner_of(None)
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not any(secrets.compare_digest(given, k) for k in keys):
            raise ApiError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                type_="authentication_error",
            )
        return owner_of(given)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(str(e), e.type, e.param, e.code), e.status, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        param = _param(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), code=str(e.status_code)), e.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body("internal server error", "server_error"), 500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models(_: str = Depends(owner)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "owned_by": "chattune"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, who: str = Depends(owner)):
        if req.stream:
            events = await service.stream(req, who)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await service.complete(req, who)

    @app.post("/v1/conversations", status_code=201)
    async def new_conversation(
        body: NewConversation | None = None, who: str = Depends(owner)
    ) -> dict[str, Any]:
        return store.create_conversation(who, (body or NewConversation()).title)

    @app.get("/v1/conversations")
    async def list_conversations(who: str = Depends(owner)) -> dict[str, Any]:
        return {"object": "list", "data": store.list_conversations(who)}

    @app.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, who: str = Depends(owner)):
        found = store.get_conversation(who, conversation_id)
        if found is None:
            raise ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")
        return found

    @app.post("/v1/conversations/{conversation_id}/messages/{message_id}/feedback", status_code=201)
    async def feedback(
        conversation_id: str, message_id: str, body: Feedback, who: str = Depends(owner)
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

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
