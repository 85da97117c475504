"""The HTTP API in-process: OpenAI shapes, streaming, auth and isolation, every error."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from chattune.chat.engine import ChatEngine
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import live_server
from tests.test_chat import FakeBackend

KEYS = ["key-alice", "key-bob"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class SlowBackend(FakeBackend):
    """Yields a piece every 50 ms until cancelled (or 200 pieces): a long generation."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, [])
        self.cancelled = threading.Event()

    def stream(self, prompt_ids, options, stop, cancel):
        for _ in range(min(200, options.max_new_tokens)):
            if cancel.is_set():
                self.cancelled.set()
                return
            time.sleep(0.05)
            yield "x"


@pytest.fixture
def make_client(tokenizer, tmp_path):
    def make(backend=None, keys=KEYS, **kw) -> TestClient:
        engine = ChatEngine(backend or FakeBackend(tokenizer, ["Hello", " there", "!"]))
        store = Store(str(tmp_path / "chat.db"))
        return TestClient(build_app(engine, store, "tiny", keys, **kw))

    return make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def ask(text: str = "Hi", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def test_chat_completion_shape(client) -> None:
    r = client.post("/v1/chat/completions", json=ask(), headers=auth("key-alice"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there!"}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_streaming_sse_ends_with_done(client) -> None:
    with client.stream(
        "POST", "/v1/chat/completions", json=ask(stream=True), headers=auth("key-alice")
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there!" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_and_health(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    data = client.get("/v1/models", headers=auth("key-bob")).json()["data"]
    assert [m["id"] for m in data] == ["tiny"]


def test_missing_or_wrong_key_is_401(client) -> None:
    for headers in ({}, auth("nope"), {"Authorization": "key-alice"}):
        r = client.post("/v1/chat/completions", json=ask(), headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_conversations_belong_to_their_key(client) -> None:
    conv = client.post("/v1/conversations", json={}, headers=auth("key-alice")).json()
    r = client.post(
        "/v1/chat/completions",
        json=ask("Where is my order?", conversation_id=conv["id"]),
        headers=auth("key-alice"),
    ).json()
    message_id = r["message_id"]
    stored = client.get(f"/v1/conversations/{conv['id']}", headers=auth("key-alice")).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["title"] == "Where is my order?"
    # Bob can neither list, read, write to, nor rate Alice's conversation.
    bob = auth("key-bob")
    assert client.get("/v1/conversations", headers=bob).json()["data"] == []
    assert client.get(f"/v1/conversations/{conv['id']}", headers=bob).status_code == 404
    r = client.post("/v1/chat/completions", json=ask(conversation_id=conv["id"]), headers=bob)
    assert r.status_code == 404 and r.json()["error"]["param"] == "conversation_id"
    url = f"/v1/conversations/{conv['id']}/messages/{message_id}/feedback"
    assert client.post(url, json={"rating": "up"}, headers=bob).status_code == 404
    assert client.post(url, json={"rating": "up"}, headers=auth("key-alice")).status_code == 201
    bad = client.post(url, json={"rating": "meh"}, headers=auth("key-alice"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        (ask(temperature=3), "temperature"),
        (ask(top_p=0), "top_p"),
        (ask(max_tokens="many"), "max_tokens"),
        (ask(max_tokens=10**6), "max_tokens"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ],
)
def test_bad_requests_get_400_naming_the_field(client, body, param) -> None:
    r = client.post("/v1/chat/completions", json=body, headers=auth("key-alice"))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert client.get("/health").status_code == 200  # the server is still up


def test_malformed_json_and_overlong_prompt(client) -> None:
    r = client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**auth("key-alice"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()
    huge = ask("word " * 5000)  # the fake backend's context is 4096 tokens
    r = client.post("/v1/chat/completions", json=huge, headers=auth("key-alice"))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(tokenizer, tmp_path) -> None:
    import httpx

    backend = SlowBackend(tokenizer)
    app = build_app(
        ChatEngine(backend),
        Store(str(tmp_path / "c.db")),
        "tiny",
        KEYS,
        max_concurrency=1,
        max_queue=0,
    )
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice"), timeout=30) as http,
    ):
        with http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # generating: the only slot is taken
            r = http.post("/v1/chat/completions", json=ask())
            assert r.status_code == 429 and r.headers["Retry-After"] == "2"
            assert r.json()["error"]["type"] == "rate_limit_error"
        # the client left mid-stream: generation is cancelled and the slot freed at once
        assert backend.cancelled.wait(5)
        deadline = time.monotonic() + 2
        while (r := http.post("/v1/chat/completions", json=ask(max_tokens=1))).status_code == 429:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.05)
        assert r.status_code == 200


def test_open_server_without_keys(make_client) -> None:
    client = make_client(keys=[])
    assert client.post("/v1/chat/completions", json=ask()).status_code == 200


def test_web_page_is_served(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "<title>chattune</title>" in r.text


def test_export_feedback_for_training(client, tmp_path) -> None:
    from chattune.cli import main
    from chattune.data.readers import read_conversations

    alice = auth("key-alice")
    conv = client.post("/v1/conversations", json={}, headers=alice).json()
    ids = []
    for text in ("Is shipping free?", "And returns?", "Thanks"):
        r = client.post(
            "/v1/chat/completions",
            headers=alice,
            json={"messages": [{"role": "user", "content": text}], "conversation_id": conv["id"]},
        )
        ids.append(r.json()["message_id"])
    url = f"/v1/conversations/{conv['id']}/messages/{{}}/feedback"
    client.post(url.format(ids[0]), json={"rating": "up"}, headers=alice)
    client.post(
        url.format(ids[1]), json={"rating": "down", "correction": "45 days."}, headers=alice
    )
    client.post(url.format(ids[2]), json={"rating": "down"}, headers=alice)
    out = tmp_path / "feedback.jsonl"
    assert (
        main(["data", "export-feedback", "--db", str(tmp_path / "chat.db"), "--out", str(out)]) == 0
    )
    convs = read_conversations(out)  # valid training data
    assert [len(c.messages) for c in convs] == [2, 4]
    assert convs[1].messages[-1].content == "45 days."


def test_slots_are_fifo() -> None:
    from chattune.serve.service import Slots

    async def scenario() -> list[int]:
        slots, order = Slots(1, 10), []

        async def job(i: int) -> None:
            async with slots.hold():
                order.append(i)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(job(i) for i in range(5)))
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
