"""The HTTP API in-process: OpenAI shapes, streaming, auth and isolation, every error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from chattune.chat.engine import ChatEngine
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import FakeBackend, GateBackend, live_server, wait_until

KEYS = ["key-alice", "key-bob"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_client(tokenizer, tmp_path):
    def make(backend=None, keys=KEYS, **kw) -> TestClient:
        engine = ChatEngine(backend or FakeBackend(tokenizer, ["Hello", " there", "!"]))
        store = Store(str(tmp_path / "chat.db"))
        # An open server answers loopback names only (DNS rebinding), so talk to 127.0.0.1.
        return TestClient(build_app(engine, store, "tiny", keys, **kw), "http://127.0.0.1")

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

    backend = GateBackend(tokenizer)
    app = build_app(
        ChatEngine(backend),
        Store(str(tmp_path / "c.db")),
        "tiny",
        KEYS,
        max_concurrency=1,
        max_queue=0,
    )
    slots = app.state.service.slots
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice"), timeout=30) as http,
    ):
        with http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # generating: the only slot is taken
            assert backend.started.wait(10)
            r = http.post("/v1/chat/completions", json=ask())
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
        # the client left mid-stream: generation is cancelled and its place given back
        assert backend.cancelled.wait(10)
        assert wait_until(lambda: slots.admitted == 0), "the slot was not freed"
        backend.release.set()
        assert http.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 200


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
    from chattune.serve.admission import Slots

    async def scenario() -> list[int]:
        slots, order = Slots(1, 10), []

        async def job(i: int) -> None:
            async with slots.hold():
                order.append(i)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(job(i) for i in range(5)))
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


# ----- hostile input, overload and faults (issue 13) ------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * 65}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"repetition_penalty": 11}, "repetition_penalty"),
        ({"max_tokens": 1025}, "max_tokens"),  # the server's --max-tokens-limit
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"conversation_id": "c" * 65}, "conversation_id"),
        ({"top_k": 10**9}, "top_k"),
    ],
)
def test_every_option_is_bounded(client, extra, param) -> None:
    r = client.post("/v1/chat/completions", json=ask(**extra), headers=auth("key-alice"))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_sizes_and_counts_are_bounded(client) -> None:
    alice = auth("key-alice")
    many = {"messages": [{"role": "user", "content": "hi"}] * 257}
    r = client.post("/v1/chat/completions", json=many, headers=alice)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/chat/completions", json=ask("x" * 32_001), headers=alice)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    total = {"messages": [{"role": "user", "content": "y" * 30_000}] * 7}
    r = client.post("/v1/chat/completions", json=total, headers=alice)
    assert r.status_code == 400 and "per request" in r.json()["error"]["message"]
    conv = client.post("/v1/conversations", json={}, headers=alice).json()
    mid = client.post(
        "/v1/chat/completions", json=ask(conversation_id=conv["id"]), headers=alice
    ).json()["message_id"]
    url = f"/v1/conversations/{conv['id']}/messages/{mid}/feedback"
    r = client.post(url, json={"rating": "down", "correction": "z" * 8001}, headers=alice)
    assert r.status_code == 400 and r.json()["error"]["param"] == "correction"


def test_oversized_body_is_413_before_authentication(client) -> None:
    body = b'{"messages": [{"role": "user", "content": "' + b"a" * (1 << 20) + b'"}]}'
    r = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )  # no key: the size is refused first, before any auth or parsing work
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted while read
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunked(), headers=auth("key-alice"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_lone_surrogates_are_400_not_500(client) -> None:
    raw = b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'
    headers = {**auth("key-alice"), "Content-Type": "application/json"}
    r = client.post("/v1/chat/completions", content=raw, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    r = client.post("/v1/conversations", content=b'{"title": "\\udfff"}', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "title"


def test_non_ascii_bearer_token_is_401(client) -> None:
    for token in ("Bearer clé".encode(), b"Bearer \xff\xfe", "Bearer key-alicé".encode()):
        r = client.get("/v1/models", headers={"Authorization": token})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_keys_are_stripped_and_an_open_server_refuses_foreign_hosts(make_client) -> None:
    keyed = make_client(keys=[" key-alice ", ""])
    assert keyed.get("/v1/models", headers=auth("key-alice")).status_code == 200
    assert keyed.get("/v1/models", headers={**auth("key-alice"), "Host": "evil.test"}).is_success
    open_ = make_client(keys=[])
    for host in ("127.0.0.1:8000", "localhost", "[::1]:80"):
        assert open_.get("/v1/models", headers={"Host": host}).status_code == 200, host
    for host in ("evil.test", "127.0.0.1.evil.test:8000", "localhost.attacker"):
        r = open_.get("/v1/models", headers={"Host": host})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
    anyone = make_client(keys=[], insecure_no_auth=True)
    assert anyone.get("/v1/models", headers={"Host": "chat.example"}).status_code == 200


def test_serve_refuses_a_public_host_without_keys() -> None:
    from tests.conftest import run_cli

    r = run_cli("serve", "--host", "0.0.0.0", env={"CHATTUNE_API_KEY": ""})
    assert r.returncode == 2 and "--insecure-no-auth" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", "--max-tokens-limit", "0")
    assert r.returncode == 2 and "--max-tokens-limit" in r.stderr


def test_queue_is_checked_before_any_expensive_work(tokenizer, tmp_path, monkeypatch) -> None:
    import httpx

    backend = GateBackend(tokenizer)
    engine = ChatEngine(backend)
    prepared = []
    real = engine.build_prompt
    monkeypatch.setattr(engine, "build_prompt", lambda *a, **k: prepared.append(1) or real(*a, **k))
    app = build_app(engine, Store(str(tmp_path / "q.db")), "tiny", KEYS, max_queue=0)
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice"), timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as first,
    ):
        assert backend.started.wait(10)
        for _ in range(5):
            r = http.post("/v1/chat/completions", json=ask("word " * 3000))
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert len(prepared) == 1  # only the admitted request built a prompt
        backend.release.set()
        assert first.read().decode().endswith("data: [DONE]\n\n")


def test_admission_is_race_free_under_a_burst(tokenizer, tmp_path) -> None:
    """Every streamed request gets 429 up front or a complete stream: never a 200 that is
    then cut off because the queue filled between the check and the wait."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    backend = GateBackend(tokenizer)
    app = build_app(ChatEngine(backend), Store(str(tmp_path / "b.db")), "tiny", KEYS, max_queue=2)

    def one(http: httpx.Client) -> str:
        with http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as r:
            if r.status_code != 200:
                return str(r.status_code)
            body = r.read().decode()
            return "complete" if body.endswith("data: [DONE]\n\n") else "cut: " + body[-80:]

    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice"), timeout=30) as http,
        ThreadPoolExecutor(12) as pool,
    ):
        futures = [pool.submit(one, http) for _ in range(12)]
        assert backend.started.wait(10)
        backend.release.set()
        outcomes = sorted(f.result() for f in futures)
    assert set(outcomes) <= {"429", "complete"}, outcomes
    assert outcomes.count("complete") >= 3  # one generating + two queued were admitted


def test_non_streaming_client_that_leaves_cancels_its_generation(tokenizer, tmp_path) -> None:
    import httpx

    backend = GateBackend(tokenizer)
    app = build_app(ChatEngine(backend), Store(str(tmp_path / "d.db")), "tiny", KEYS)
    with live_server(app) as url:
        with (
            httpx.Client(base_url=url, headers=auth("key-alice"), timeout=0.5) as http,
            pytest.raises(httpx.ReadTimeout),
        ):
            http.post("/v1/chat/completions", json=ask())
        assert backend.cancelled.wait(10), "generation went on for a client that left"
        with httpx.Client(base_url=url, headers=auth("key-alice"), timeout=30) as http:
            backend.release.set()  # the slot is free again
            assert http.post("/v1/chat/completions", json=ask()).status_code == 200


def test_request_deadline(make_client, tokenizer) -> None:
    backend = GateBackend(tokenizer)
    client = make_client(backend, request_timeout=0.3)
    r = client.post("/v1/chat/completions", json=ask(), headers=auth("key-alice"))
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
    assert backend.cancelled.wait(5)
    with client.stream(
        "POST", "/v1/chat/completions", json=ask(stream=True), headers=auth("key-alice")
    ) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    assert events[-1]["error"]["code"] == "request_timeout"


def test_a_failure_mid_stream_is_an_error_event_and_frees_the_slot(make_client, tokenizer):
    client = make_client(GateBackend(tokenizer, fail_after_first=True))
    for _ in range(2):  # the second request gets the slot back
        with client.stream(
            "POST", "/v1/chat/completions", json=ask(stream=True), headers=auth("key-alice")
        ) as r:
            assert r.status_code == 200
            lines = [x for x in r.iter_lines() if x]
        last = json.loads(lines[-1].removeprefix("data: "))
        assert last["error"]["type"] == "server_error" and "[DONE]" not in lines[-1]
        assert "the model broke" not in lines[-1]  # no internals leak to the client


def test_delete_conversation_is_the_owners_only(client) -> None:
    alice, bob = auth("key-alice"), auth("key-bob")
    conv = client.post("/v1/conversations", json={}, headers=alice).json()
    mid = client.post(
        "/v1/chat/completions", json=ask(conversation_id=conv["id"]), headers=alice
    ).json()["message_id"]
    url = f"/v1/conversations/{conv['id']}"
    client.post(f"{url}/messages/{mid}/feedback", json={"rating": "up"}, headers=alice)
    assert client.delete(url, headers=bob).status_code == 404
    r = client.delete(url, headers=alice)
    assert r.status_code == 200 and r.json() == {
        "id": conv["id"],
        "object": "conversation.deleted",
        "deleted": True,
    }
    assert client.get(url, headers=alice).status_code == 404
    assert client.delete(url, headers=alice).status_code == 404


def test_page_headers_and_docs_off_by_default(make_client) -> None:
    client = make_client()
    page = client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404
    assert client.get("/static/../store.py").status_code == 404
    assert make_client(docs=True).get("/openapi.json").status_code == 200


def test_temperature_zero_is_greedy_and_error_params_name_fields(client) -> None:
    """Found by the fuzzer: ``temperature: 0`` was a 500; params carried pydantic's branch
    names (``messages.0.content.str``) or a byte offset for broken JSON."""
    alice = auth("key-alice")
    for stream in (False, True):
        r = client.post(
            "/v1/chat/completions", json=ask(temperature=0, stream=stream), headers=alice
        )
        assert r.status_code == 200, r.text
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]},
                    headers=alice)  # fmt: skip
    assert r.json()["error"]["param"] == "messages.0.content"
    r = client.post("/v1/chat/completions", json=ask(stop=5), headers=alice)
    assert r.json()["error"]["param"] == "stop"
    headers = {**alice, "Content-Type": "application/json"}
    r = client.post("/v1/chat/completions", content=b"{", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] is None
    r = client.post(
        "/v1/chat/completions", content=b"{}", headers={**headers, "Content-Length": "x"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"


def test_retry_after_is_the_expected_wait() -> None:
    from chattune.serve.admission import ApiError, Slots

    slots = Slots(2, 4)
    tickets = [slots.admit() for _ in range(6)]
    for _ in range(20):
        slots.observe(8.0)  # replies have been taking 8 s
    with pytest.raises(ApiError) as e:
        slots.admit()
    # 4 waiting + this one ahead of a place on 2 slots: 2.5 waves of ~8 s
    assert 15 <= int(e.value.headers["Retry-After"]) <= 21
    for t in tickets:
        t.release()
    assert slots.admitted == 0 and slots.admit()


# ----- found by an attacker's review (each reproduced first) ----------------------------


class FloodBackend(FakeBackend):
    """Streams 64 KiB pieces until cancelled: a reply far larger than any socket buffer."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, [])

    def stream(self, prompt_ids, options, stop, cancel):
        for _ in range(100_000):
            if cancel.is_set():
                return
            yield "x" * 65536


def _raw_request(url: str, body: bytes, headers: str = "") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer key-alice"
        f"\r\nContent-Type: application/json\r\n{headers}"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_client_that_stops_reading_cannot_hold_a_slot_past_the_deadline(tokenizer, tmp_path):
    app = build_app(ChatEngine(FloodBackend(tokenizer)), Store(str(tmp_path / "r.db")),
                    "tiny", KEYS, max_queue=0, request_timeout=1)  # fmt: skip
    slots = app.state.service.slots
    body = json.dumps(ask(stream=True)).encode()
    with live_server(app) as url:
        sock = _raw_request(url, body, f"Content-Length: {len(body)}\r\n\r\n")
        try:  # it never reads: the server's writes block on a full TCP window
            assert wait_until(lambda: slots.admitted == 1, 10)
            assert wait_until(lambda: slots.admitted == 0, 20), "the slot outlived the deadline"
        finally:
            sock.close()


def test_a_trickled_body_is_408_and_keyless_bodies_are_never_read(tokenizer, tmp_path):
    app = build_app(ChatEngine(FakeBackend(tokenizer, ["x"])), Store(str(tmp_path / "t.db")),
                    "tiny", KEYS, body_timeout=1)  # fmt: skip
    with live_server(app) as url:
        sock = _raw_request(url, b'{"messages": [', "Content-Length: 100\r\n\r\n")
        sock.settimeout(15)
        reply = sock.recv(4096).decode()
        sock.close()
        assert reply.startswith("HTTP/1.1 408")
    client = TestClient(app, "http://127.0.0.1")
    read = []

    def body():
        for _ in range(64):
            read.append(1)
            yield b"a" * 65536

    r = client.post("/v1/chat/completions", content=body())  # no key, 4 MiB
    assert r.status_code == 401 and len(read) <= 1  # refused on its headers alone


def test_an_absurd_content_length_is_400(client) -> None:
    r = client.post(
        "/v1/chat/completions",
        content=b"{}",
        headers={**auth("key-alice"), "Content-Length": "9" * 5000},  # int() refuses it
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"


def test_a_disconnect_frees_the_slot_only_once_the_model_is_idle(tokenizer, tmp_path):
    """The slot was released while a backend that checks ``cancel`` only between steps was
    still generating: with one slot, four abandoned streams ran four generations at once."""
    import httpx

    running, peak, lock = [0], [0], threading.Lock()

    class Prefill(FakeBackend):
        def stream(self, prompt_ids, options, stop, cancel):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                yield "x"
                time.sleep(0.5)  # a long step that does not look at cancel
            finally:
                with lock:
                    running[0] -= 1

    app = build_app(ChatEngine(Prefill(tokenizer, [])), Store(str(tmp_path / "p.db")), "tiny",
                    KEYS, max_queue=8)  # fmt: skip
    with live_server(app) as url, httpx.Client(base_url=url, headers=auth("key-alice")) as http:
        for _ in range(4):
            with http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as r:
                next(r.iter_lines())
    assert wait_until(lambda: app.state.service.slots.admitted == 0)
    assert peak[0] == 1


def test_queueing_counts_towards_the_deadline(tokenizer, tmp_path) -> None:
    """A queued request used to get a fresh ``request_timeout`` once it reached a slot."""
    import httpx

    app = build_app(ChatEngine(GateBackend(tokenizer)), Store(str(tmp_path / "q.db")), "tiny",
                    KEYS, max_queue=4, request_timeout=2)  # fmt: skip
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice")) as http,
        http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as first,
    ):
        lines = first.iter_lines()  # kept: a dropped iterator closes the stream when collected
        next(lines)  # holds the only slot until its own deadline
        start = time.monotonic()
        queued = http.post("/v1/chat/completions", json=ask(), timeout=30)
        assert queued.status_code == 408
        assert time.monotonic() - start < 3.5  # 2 s from admission, not 2 s after a slot


def test_a_plain_request_that_leaves_the_queue_gives_up_its_place(tokenizer, tmp_path) -> None:
    import httpx

    backend = GateBackend(tokenizer)
    app = build_app(ChatEngine(backend), Store(str(tmp_path / "l.db")), "tiny", KEYS,
                    max_queue=4)  # fmt: skip
    slots = app.state.service.slots
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=auth("key-alice")) as http,
        http.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as first,
    ):
        lines = first.iter_lines()  # kept: a dropped iterator closes the stream when collected
        next(lines)
        assert backend.started.wait(10)
        with pytest.raises(httpx.ReadTimeout):  # queued behind it, then gone
            http.post("/v1/chat/completions", json=ask(), timeout=0.5)
        assert wait_until(lambda: slots.admitted == 1, 10)  # only the generating one is left
        backend.release.set()
    assert backend.calls == 1  # the one that left never reached the model


def test_inputs_that_used_to_crash_generation_or_storage(client, make_client, tokenizer):
    alice = auth("key-alice")
    for extra in ({"temperature": 1e-40}, {"temperature": 1e-300, "stream": True}):
        r = client.post("/v1/chat/completions", json=ask(**extra), headers=alice)
        assert r.status_code == 200, r.text  # below 0.01 a temperature is greedy
    r = client.post("/v1/chat/completions", json=ask(repetition_penalty=1e-300), headers=alice)
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty"
    r = client.post("/v1/conversations", json={"title": "a\u0000b"}, headers=alice)
    assert r.status_code == 400 and r.json()["error"]["param"] == "title"  # PostgreSQL: 500
    assert client.get("/v1/conversations/a%00b", headers=alice).status_code in (400, 404)
    assert client.post("/v1/conversations", json={"title": "  "}, headers=alice).status_code == 400
    strict = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    strict.chat_template = "{{ raise_exception('roles must alternate user/assistant') }}"
    r = make_client(FakeBackend(strict, ["x"])).post(
        "/v1/chat/completions", json=ask(), headers=alice
    )
    assert r.status_code == 400 and "alternate" in r.json()["error"]["message"]


def test_an_empty_reply_does_not_break_the_conversation(make_client, tokenizer) -> None:
    client = make_client(FakeBackend(tokenizer, ["   "]))
    alice = auth("key-alice")
    conv = client.post("/v1/conversations", json={}, headers=alice).json()["id"]
    first = client.post("/v1/chat/completions", json=ask(conversation_id=conv), headers=alice)
    assert first.json()["choices"][0]["message"]["content"] == ""
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
               {"role": "user", "content": "Hello?"}]  # fmt: skip
    r = client.post("/v1/chat/completions", json={"messages": history}, headers=alice)
    assert r.status_code == 200  # the page resends the history as it was
