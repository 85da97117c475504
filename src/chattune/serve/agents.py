"""The agents' API: people who answer conversations the bot handed off.

Every route here takes an *agent key* (``chattune serve --agent-key KEY``), never a
customer key, and sees handed-off conversations of every owner (``waiting`` for a person or
answered by one), and nothing else:

- ``GET /v1/handoffs?state=waiting|agent|all&limit=N``: the queue, the longest waiting first;
- ``GET /v1/handoffs/{id}``: one conversation with its messages;
- ``POST /v1/handoffs/{id}/messages`` ``{"content", "agent"?}``: a reply, stored as an
  assistant message with ``author: agent``; the conversation is then the agent's;
- ``POST /v1/handoffs/{id}/release``: back to the bot.

A conversation the bot answers is a 409 for the last three (``not_handed_off``), one that
does not exist a 404.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from chattune.serve.admission import ApiError
from chattune.serve.guards import key_refusal
from chattune.serve.protocol import MAX_HANDOFF_LIST, AgentMessage, HandoffFilter, Id
from chattune.serve.schema import HANDED_OFF, HandoffState
from chattune.serve.store import NotHandedOff, Store

router = APIRouter(prefix="/v1/handoffs")


def agent(request: Request) -> str:
    """Let an agent key through, and only one (401/403 otherwise, as ``RequireKey``
    answers before the body is read); a short hash naming the key in logs."""
    header = request.headers.get("authorization", "").encode("latin-1")
    refused = key_refusal(header, request.url.path, request.app.state.keys,
                          request.app.state.agent_keys)  # fmt: skip
    if refused is not None:
        status, body = refused
        error = body["error"]
        raise ApiError(status, error["message"], code=error["code"], type_=error["type"])
    return hashlib.sha256(header).hexdigest()[:12]


def _store(request: Request) -> Store:
    return request.app.state.store


Agent = Annotated[str, Depends(agent)]
Db = Annotated[Store, Depends(_store)]

#: ``state=`` of the list and the conversation states it means.
STATES: dict[str, tuple[HandoffState, ...]] = {"waiting": ("waiting",), "agent": ("agent",),
                                                "all": HANDED_OFF}  # fmt: skip


def _not_found(conversation_id: str) -> ApiError:
    return ApiError(404, f"conversation {conversation_id!r} not found", code="not_found")


def _conflict(e: NotHandedOff) -> ApiError:
    return ApiError(409, str(e), code="not_handed_off")


@router.get("")
def list_handoffs(
    _: Agent,
    store: Db,
    state: Annotated[HandoffFilter, Query()] = "waiting",
    limit: Annotated[int, Query(ge=1, le=MAX_HANDOFF_LIST)] = 50,
) -> dict[str, Any]:
    """Handed-off conversations of every customer, the longest waiting first: each with its
    state, reason, since, title, last message and the decision that handed it off."""
    return {"object": "list", "data": store.list_handoffs(STATES[state], limit)}


def _handed_off(call: Callable[[str], dict[str, Any] | None], conversation_id: str) -> Any:
    """``call(conversation_id)`` on a handed-off conversation: 409 if the bot answers it,
    404 if there is none."""
    try:
        found = call(conversation_id)
    except NotHandedOff as e:
        raise _conflict(e) from None
    if found is None:
        raise _not_found(conversation_id)
    return found


@router.get("/{conversation_id}")
def get_handoff(conversation_id: Id, _: Agent, store: Db) -> dict[str, Any]:
    return _handed_off(store.get_handoff, conversation_id)


@router.post("/{conversation_id}/messages", status_code=201)
def reply(conversation_id: Id, body: AgentMessage, _: Agent, store: Db) -> dict[str, Any]:
    """A person's reply to the customer; the conversation is then answered by the agent."""
    return _handed_off(lambda c: store.agent_reply(c, body.content, body.agent), conversation_id)


@router.post("/{conversation_id}/release")
def release(conversation_id: Id, _: Agent, store: Db) -> dict[str, Any]:
    """Give the conversation back to the bot: its next customer turn is answered again."""
    return _handed_off(store.release, conversation_id)
