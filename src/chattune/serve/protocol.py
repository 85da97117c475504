"""Request and response shapes of the HTTP API: OpenAI's chat completions and (legacy) text
completions, plus chattune's conversations and feedback. Unknown OpenAI fields are accepted
and ignored, so the official ``openai`` client works unchanged.

Every field is bounded here, before any work is done on it: sizes, counts and ranges. The
server-wide limits that an operator may change (body size, ``max_tokens`` ceiling, request
deadline) live in :class:`ServeOptions`; the rest are fixed, following OpenAI where OpenAI
has a limit (4 stop strings) and otherwise generous for a chat and cheap to check.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: Fixed bounds of one request (see docs/reliability.md).
MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 32_000
MAX_REQUEST_CHARS = 200_000
MAX_CONTENT_PARTS = 64
MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 64  # a longer stop string makes transformers build a huge lookup table
MAX_CORRECTION_CHARS = 8_000
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes
MAX_STOP_TOKEN_IDS = 64
MAX_REASON_CHARS = 200  # a handoff's reason
MAX_AGENT_NAME_CHARS = 64
MAX_HANDOFF_LIST = 200  # conversations one GET /v1/handoffs returns
#: OpenAI's default ``max_tokens`` for a text completion.
COMPLETION_MAX_TOKENS = 16
#: Below this a temperature is greedy decoding: dividing logits by 1e-40 overflows them.
MIN_TEMPERATURE = 0.01


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.1``, ``::1``, ``[::1]``, ``127.0.0.2``...: names
    only this machine reaches. Used for ``--host`` and for an open server's ``Host`` check.

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("127.0.0.1.evil.test")
        (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def valid_unicode(value: str) -> str:
    """Reject lone surrogates (JSON allows ``"\\ud800"``; UTF-8 cannot encode it) and NUL
    (PostgreSQL cannot store it in text: it would be a 500 at write time)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode at character {e.start} (a lone surrogate)") from None
    if "\x00" in value:
        raise ValueError(f"NUL character at position {value.index(chr(0))}")
    return value


Text = Annotated[str, AfterValidator(valid_unicode)]
Id = Annotated[str, StringConstraints(max_length=64), AfterValidator(valid_unicode)]


class ServeOptions(BaseModel):
    """Server-wide settings of ``chattune serve`` (each has a flag of the same name)."""

    model_config = ConfigDict(extra="forbid")

    max_concurrency: int = Field(
        1, ge=1, le=256, description="replies generated at once (llama.cpp: its --slots)"
    )
    max_queue: int = Field(8, ge=0, le=10_000, description="admitted requests waiting for a slot")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_tokens_limit: int = Field(1024, ge=1, description="server ceiling on max_tokens")
    request_timeout: float = Field(
        300.0, gt=0, description="seconds one request may take, queueing included"
    )
    body_timeout: float = Field(30.0, gt=0, description="seconds a client may take to send a body")
    docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_CONTENT_PARTS)]

    @field_validator("content")
    @classmethod
    def _text(cls, value: str | list[dict[str, Any]], info: ValidationInfo) -> str:
        """Accept OpenAI's list-of-parts form for text; reject oversized content, and empty
        content from the user or system (an assistant turn may be empty: a model can
        reply with nothing, and a client resends the history as it was)."""
        if isinstance(value, list):
            if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in value):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...})")
            value = "".join(p["text"] for p in value)
        valid_unicode(value)
        if len(value) > MAX_MESSAGE_CHARS:
            raise ValueError(f"at most {MAX_MESSAGE_CHARS} characters per message")
        if not value.strip() and info.data.get("role") != "assistant":
            raise ValueError("content must not be empty")
        return value


class SamplingRequest(BaseModel):
    """The fields both completion endpoints share: how to sample, how much, where to stop."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, StringConstraints(max_length=256)] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1000)
    # Tinier positive values overflow the logits (inf / nan) in the sampler.
    repetition_penalty: float | None = Field(None, ge=0.01, le=10)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1, description="only one choice is generated")
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        """OpenAI's limits: at most 4 stop strings, each 1 to 64 characters."""
        strings = [value] if isinstance(value, str) else value or []
        if len(strings) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        for s in strings:
            if not 1 <= len(s) <= MAX_STOP_CHARS:
                raise ValueError(f"each stop string must be 1 to {MAX_STOP_CHARS} characters")
            valid_unicode(s)
        return value

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    #: chattune extension: store the exchange in this conversation
    conversation_id: Id | None = None

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if value[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return value

    @model_validator(mode="after")
    def _total_size(self) -> ChatCompletionRequest:
        total = sum(len(m.content) for m in self.messages)
        if total > MAX_REQUEST_CHARS:
            raise ValueError(
                f"messages hold {total} characters; at most {MAX_REQUEST_CHARS} per request"
            )
        return self


#: OpenAI completion fields chattune does not implement, and the values that mean "off".
_UNSUPPORTED = {"echo": (False,), "logprobs": (None,), "best_of": (None, 1), "suffix": (None, "")}
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class CompletionRequest(SamplingRequest):
    """OpenAI's legacy ``/v1/completions``: one prompt, continued exactly as given.

    ``prompt`` is a string (tokenized as it is: no BOS or EOS added; control tokens written in the
    text become control ids, as in a raw prompt they must) or one list of token ids, so
    a client that renders its own chat template (another chattune, with
    ``chattune.backends.remote``) sends the very ids its model must see. A list of several
    prompts is refused rather than half-served; so are ``n`` > 1, ``echo``, ``logprobs``,
    ``best_of`` and ``suffix`` (400: a client asking for them would misread the answer).
    The token ids' range and the context window depend on the model: the service checks
    them, before any work.
    """

    prompt: str | list[int]
    #: vLLM's extension, accepted so a vLLM client works; generation here always stops at
    #: the model's own end-of-turn ids.
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        """A string or one list of integer ids (JSON ``true`` or ``"5"`` is no token id),
        neither empty nor longer than ``MAX_REQUEST_CHARS``."""
        if isinstance(value, str):
            valid_unicode(value)
        elif isinstance(value, list):
            if any(isinstance(item, str | list) for item in value):
                raise ValueError(
                    "one prompt per request: a string or one list of token ids "
                    "(send several prompts as several requests)"
                )
            for i, item in enumerate(value):
                if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                    raise ValueError(f"prompt[{i}] is not a token id (an integer from 0)")
        else:
            return value  # neither: the type check refuses it
        if not value:
            raise ValueError("the prompt must not be empty")
        if len(value) > MAX_REQUEST_CHARS:
            raise ValueError(f"at most {MAX_REQUEST_CHARS} characters (or token ids)")
        return value

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in _UNSUPPORTED[str(info.field_name)]:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion(
    model: str, text: str, finish: str, usage: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
        **extra,
    }


def chunk(
    cid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **(extra or {}),
    }


def text_completion(
    cid: str,
    model: str,
    text: str,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A text completion, or one streamed chunk of it: the same object with partial
    ``text``; the last chunk carries ``finish_reason`` and ``usage``."""
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        **({"usage": usage} if usage is not None else {}),
    }


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Annotated[Text, StringConstraints(max_length=200)] = "New chat"

    @field_validator("title")
    @classmethod
    def _visible(cls, value: str) -> str:
        """A title the conversation list can show: not blank."""
        if not value.strip():
            raise ValueError("title must not be blank")
        return value.strip()


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Literal["up", "down"]
    correction: Annotated[Text, StringConstraints(max_length=MAX_CORRECTION_CHARS)] | None = Field(
        None, description="a better reply, used for training"
    )


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


Reason = Annotated[Text, StringConstraints(max_length=MAX_REASON_CHARS), AfterValidator(_not_blank)]


class HandoffRequest(BaseModel):
    """``POST /v1/conversations/{id}/handoff``: the customer (or their app) asks for a person."""

    model_config = ConfigDict(extra="forbid")
    reason: Reason = "the customer asked for a person"


class AgentMessage(BaseModel):
    """``POST /v1/handoffs/{id}/messages``: a person's reply, shown to the customer as theirs."""

    model_config = ConfigDict(extra="forbid")
    content: Annotated[Text, StringConstraints(max_length=MAX_MESSAGE_CHARS),
                       AfterValidator(_not_blank)]  # fmt: skip
    agent: Annotated[
        Text, StringConstraints(max_length=MAX_AGENT_NAME_CHARS), AfterValidator(_not_blank)
    ] = Field("agent", description="the name the customer sees")


HandoffFilter = Literal["waiting", "agent", "all"]
