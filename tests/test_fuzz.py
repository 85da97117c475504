"""Fuzzing: schemathesis against the served ``/openapi.json``, with a stub backend.

Every operation in the schema gets schema-valid (positive) and, where it takes a body,
schema-breaking (negative) requests; most carry the API key, the rest none or a generated
wrong one; the conversation routes also get real ids, the caller's own and another
owner's. The invariants, checked on each of 1,000+ responses:

* no server error: no status >= 500, no exception out of the app, and every 200 event
  stream ends in ``[DONE]`` with no ``error`` event (a crash after the 200 shows only there);
* every 4xx is OpenAI's error object, whatever was wrong with the request;
* 2xx bodies match the schema where it describes them (``response_schema_conformance``);
* another owner's conversation is never answered with a 2xx;
* and each operation answered a 2xx at least once, so the fuzzing got past the checks.

The app runs in-process through schemathesis's ASGI client, which reads event streams, so
no port or server thread is needed. A problem is recorded with the request that showed it
and the fuzzing goes on; the test fails at the end with the smallest request for each
problem. Hypothesis is derandomized and keeps no example database, so every run sends the
same requests, bounded by ``max_examples``, not by a clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from chattune.chat.engine import ChatEngine
from chattune.serve.app import build_app
from chattune.serve.protocol import MAX_STOP, MAX_STOP_CHARS, ServeOptions
from chattune.serve.schema import owner_of
from chattune.serve.store import Handoff, Store
from tests.conftest import FakeBackend

KEY = "sk-fuzz"
VALID = {"Authorization": f"Bearer {KEY}"}
AGENT_KEY = "sk-fuzz-agent"
AGENT = {"Authorization": f"Bearer {AGENT_KEY}"}
#: A header value requests will send: latin-1, no control characters, no leading space.
JUNK = st.from_regex(r"[!-~\xa1-\xff][ -~\xa0-\xff]{0,40}", fullmatch=True)
AUTH_KINDS = {
    "key": st.just(VALID),
    "none": st.just({}),
    "other bearer": JUNK.map(lambda v: {"Authorization": f"Bearer {v}"}),
    "other scheme": JUNK.map(lambda v: {"Authorization": v}),
}
#: Six in nine requests carry the key, so most get past authentication.
AUTH_DRAW = st.sampled_from(["key"] * 6 + ["none", "other bearer", "other scheme"]).flatmap(
    AUTH_KINDS.__getitem__
)
#: Whose ids fill the path (and a completion's ``conversation_id``): generated ones, a
#: fresh conversation of the caller's, or one of another owner's.
TARGET_DRAW = st.sampled_from(["own", "generated", "foreign", "own"])
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 150, schemathesis.GenerationMode.NEGATIVE: 100}
MIN_CASES = 1000
MAX_TOKENS = ServeOptions().max_tokens_limit
TEXT_PART = {
    "type": "object",
    "properties": {"type": {"enum": ["text", "image_url"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
    "additionalProperties": False,
}
ERROR_FIELDS = {"message": (str,), "type": (str,), "param": (str, type(None)),
                "code": (str, type(None))}  # fmt: skip
BORING_HEADERS = {"user-agent", "accept", "accept-encoding", "connection", "content-length",
                  "x-schemathesis-testcaseid"}  # fmt: skip


def openai_error_problem(body: bytes) -> str | None:
    """What keeps ``body`` from being OpenAI's error object, or None if it is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return "4xx body is not JSON"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or set(data) != {"error"}:
        return "4xx body is not {'error': {...}}"
    if set(error) != set(ERROR_FIELDS):
        return f"4xx error fields are {sorted(error)}, not {sorted(ERROR_FIELDS)}"
    wrong = [k for k, types in ERROR_FIELDS.items() if not isinstance(error[k], types)]
    return f"4xx error fields of the wrong type: {wrong}" if wrong else None


def stream_problem(body: bytes) -> str | None:
    """What is wrong with a 200 event stream: an ``error`` event, or no ``[DONE]`` at the end."""
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    for event in events:
        error = None if event == "[DONE]" else json.loads(event).get("error")
        if error is not None:
            return f"stream ended in an error event of type {error.get('type')!r}"
    return None if events and events[-1] == "[DONE]" else "stream did not end in [DONE]"


@dataclass
class Repro:
    """One request as it went on the wire, and what came back."""

    request: requests.PreparedRequest
    status: int | str
    response: str

    def __str__(self) -> str:
        headers = {k: v for k, v in self.request.headers.items() if k.lower() not in BORING_HEADERS}
        body = self.request.body
        body = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return (
            f"{self.request.method} {self.request.path_url}  headers={headers}"
            + (f"\n    body: {body[:600]}" if body else "")
            + f"\n    -> {self.status} {self.response[:400]}"
        )


def wire_request(case: schemathesis.Case, headers: dict[str, str]) -> requests.PreparedRequest:
    """The request ``case.call(headers=headers)`` sends, rebuilt for the report."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    keep = ("method", "url", "headers", "params", "data", "json", "cookies")
    return requests.Request(**{k: v for k, v in kwargs.items() if k in keep}).prepare()


@dataclass
class Fuzz:
    """Sends generated cases to the app and keeps the smallest request for each problem."""

    store: Store
    cases: int = 0
    problems: dict[str, Repro] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)  # operations that answered a 2xx

    def run(self, operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> None:
        """Up to ``EXAMPLES[mode]`` cases of ``operation``; fewer if Hypothesis runs out."""
        completions = operation.path == "/v1/chat/completions"
        aimable = completions or any(operation.path_parameters)

        @given(
            case=operation.as_strategy(generation_mode=mode),
            auth=AUTH_DRAW,
            target=TARGET_DRAW if aimable else st.just("generated"),
            # Random messages rarely end in a user turn with text, so most would stop at
            # validation: two in three valid completions are made to reach the engine.
            usable=st.sampled_from(["reply", "stream", "as generated"])
            if completions and mode.is_positive else st.just("as generated"),
        )  # fmt: skip
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: schemathesis.Case, auth: dict[str, str], target: str, usable: str) -> None:
            agents = operation.path.startswith("/v1/handoffs")
            if usable != "as generated":
                make_usable(case.body, stream=usable == "stream")
            if target != "generated":
                self.aim(case, owner_of(KEY) if target == "own" else owner_of("sk-someone-else"),
                         hand_off=agents)  # fmt: skip
            if agents and auth == VALID:  # the agents' routes take the agent key
                auth = AGENT
            # agents see every owner's handed-off conversations: a 2xx is right there
            self.send(case, auth, foreign=target == "foreign" and auth == VALID and not agents)

        one()

    def send(self, case: schemathesis.Case, headers: dict[str, str], foreign: bool) -> None:
        """One request, and every problem with its response."""
        try:
            response = case.call(headers=headers)
        except Exception as e:  # the app raised instead of answering: a 500 on a real server
            self.note(f"unhandled {type(e).__name__}", case, headers, "exception", repr(e))
            return
        self.cases += 1
        status, content = response.status_code, response.content
        if 200 <= status < 300:
            self.answered.add(case.operation.label)
        found = []
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance], headers=headers
            )
        except FailureGroup as group:
            found += [failure.title for failure in group.exceptions]
        if 400 <= status < 500 and (problem := openai_error_problem(content)):
            found.append(problem)
        stream = "event-stream" in response.headers.get("content-type", [""])[0]
        if stream and (problem := stream_problem(content)):
            found.append(problem)
        if foreign and 200 <= status < 300:
            found.append("another owner's conversation answered with a 2xx")
        for problem in found:
            self.note(f"{status} {problem}", case, headers, status, content.decode())

    def aim(self, case: schemathesis.Case, owner: str, hand_off: bool = False) -> None:
        """Point the case at a fresh conversation of ``owner``, with one exchange in it
        (handed off to a person for the agents' routes)."""
        conversation = self.store.create_conversation(owner, "fuzz")["id"]
        message = self.store.append_exchange(owner, conversation, "Hi", "Hello there")
        if hand_off:
            self.store.hand_off(owner, conversation, Handoff("fuzz"))
        params = case.path_parameters or {}
        if "conversation_id" in params:
            params["conversation_id"] = conversation
        if "message_id" in params:
            params["message_id"] = message
        if isinstance(case.body, dict) and "messages" in case.body:
            case.body["conversation_id"] = conversation

    def note(
        self, problem: str, case: schemathesis.Case, headers: dict[str, str], status: Any, text: str
    ) -> None:
        key = f"{case.operation.label}: {problem}"
        repro = Repro(wire_request(case, headers), status, text)
        kept = self.problems.get(key)
        if kept is None or len(str(repro)) < len(str(kept)):
            self.problems[key] = repro


def make_usable(body: Any, stream: bool) -> None:
    """Make a generated completion request one the engine will answer: every message has
    text, the last is the user's, and the rules the schema doesn't state (the server's
    ``max_tokens`` ceiling, at most 4 stop strings of 1 to 64 characters) hold. The other fields,
    sampling parameters and unknown ones included, stay as generated."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return
    for message in messages:
        if isinstance(message, dict) and not has_text(message.get("content")):
            message["content"] = "Hi"
    if isinstance(messages[-1], dict):
        messages[-1]["role"] = "user"
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int | float):
            body[name] = min(body[name], MAX_TOKENS)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > MAX_STOP or not all(1 <= len(s) <= MAX_STOP_CHARS for s in stops):
        body["stop"] = None
    body["stream"] = stream


def has_text(content: Any) -> bool:
    """Whether ``content`` (a string or OpenAI's text parts) holds text that isn't blank."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            return False
        content = "".join(str(p.get("text", "")) for p in content)
    return isinstance(content, str) and bool(content.strip())


def served_schema(app: Any) -> schemathesis.BaseSchema:
    """The app's own ``/openapi.json``, with one narrowing: a message's content parts are
    generated as ``{"type": ..., "text": ...}`` objects. The served schema says "any object",
    which schemathesis fills with deep random JSON at ~0.3 s a case, and which the server
    turns away with one and the same 400."""
    response = TestClient(app).get("/openapi.json")
    assert response.status_code == 200, response.text
    raw = response.json()
    content = raw["components"]["schemas"]["ChatMessage"]["properties"]["content"]
    for option in content["anyOf"]:
        if option.get("type") == "array" and option["items"].get("additionalProperties"):
            option["items"] = TEXT_PART
    schema = schemathesis.openapi.from_dict(raw, config=schemathesis.Config())
    schema.app = app  # requests go to the app in-process, through schemathesis's ASGI client
    return schema


def test_fuzz_openapi(tokenizer, tmp_path: Path) -> None:
    engine = ChatEngine(FakeBackend(tokenizer, ["Hello", " there"]))
    store = Store(str(tmp_path / "fuzz.db"))
    app = build_app(engine, store, "tiny", [KEY], [AGENT_KEY], docs=True)
    schema = served_schema(app)
    fuzz = Fuzz(store)
    labels = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            labels.append(operation.label)
            # Any string is a valid id, so only a body gives negative mode something to break.
            modes = EXAMPLES if operation.body else [schemathesis.GenerationMode.POSITIVE]
            for mode in modes:
                fuzz.run(operation, mode)
    finally:
        asgi.shutdown_lifespans()  # schemathesis keeps each app it served alive until then
        store.close()
    print(f"fuzzed {fuzz.cases} cases over {len(labels)} operations, {len(fuzz.problems)} problems")
    report = "\n".join(f"- {key}\n  {repro}" for key, repro in sorted(fuzz.problems.items()))
    assert not fuzz.problems, f"{len(fuzz.problems)} problems in {fuzz.cases} cases:\n{report}"
    assert fuzz.cases >= MIN_CASES
    assert fuzz.answered == set(labels), f"never a 2xx: {set(labels) - fuzz.answered}"
