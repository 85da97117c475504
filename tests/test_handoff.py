"""Human handoff: routes and customers hand conversations to people, agents answer them.

What must hold: a ``handoff`` decision stores its notice and makes the conversation
``waiting`` in one step; while a person has it, the bot is silent (no NLU, no generation,
no slot) but the customer's messages are kept; agents (their own keys, their own routes)
list, read, answer and release handed-off conversations of every owner, and nothing else;
the webhook is told without ever delaying the customer; the decision travels with every
reply (``nlu``); agents' answers come back as valid training data; and migration 0003
upgrades a database that already holds conversations.
"""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile
from chattune.chat.routing import HANDOFF_MESSAGE
from chattune.nlu.router import Route
from chattune.serve.app import build_app
from chattune.serve.handoff import Webhook
from chattune.serve.schema import migrate, now, owner_of
from chattune.serve.store import Handoff, Store
from tests.conftest import FakeBackend, GateBackend

CUSTOMERS, AGENTS = ["key-alice", "key-bob"], ["key-agent"]
ANGRY = "This is useless, I am furious!"
#: Hands off on a furious turn, without any trained model (entities + VADER sentiment).
ROUTING = BotProfile(routes=[Route(sentiment_below=-0.5, action="handoff"), Route(default="llm")])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ALICE, BOB, AGENT = auth("key-alice"), auth("key-bob"), auth("key-agent")


def ask(text: str, conversation_id: str | None = None, **extra) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}
    return {**body, "conversation_id": conversation_id} if conversation_id else body


@pytest.fixture
def backend(tokenizer) -> FakeBackend:
    return FakeBackend(tokenizer, ["Hello", " there", "!"])


@pytest.fixture
def make_client(tokenizer, tmp_path, backend):
    def make(keys=CUSTOMERS, agent_keys=AGENTS, engine=None, **kw) -> TestClient:
        engine = engine or ChatEngine(backend, ROUTING)
        store = Store(str(tmp_path / "chat.db"))
        app = build_app(engine, store, "tiny", keys, agent_keys, **kw)
        return TestClient(app, "http://127.0.0.1")

    return make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def new_conversation(client: TestClient, headers=ALICE) -> str:
    return client.post("/v1/conversations", json={}, headers=headers).json()["id"]


def sse(client: TestClient, body: dict, headers=ALICE) -> list[dict]:
    """The events of a streamed completion, checked to end with ``[DONE]``."""
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def content(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def handed_off(client: TestClient, headers=ALICE) -> str:
    """A conversation of Alice that a route handed off."""
    conv = new_conversation(client, headers)
    r = client.post("/v1/chat/completions", json=ask(ANGRY, conv), headers=headers)
    assert r.json()["handoff"]["state"] == "waiting"
    return conv


# ----- the decision travels with every reply ---------------------------------------------


def test_a_plain_reply_carries_its_decision_whole_streamed_and_stored(client, backend) -> None:
    conv = new_conversation(client)
    body = client.post("/v1/chat/completions", json=ask("Thanks, lovely!", conv),
                       headers=ALICE).json()  # fmt: skip
    assert body["choices"][0]["message"]["content"] == "Hello there!"
    nlu = body["nlu"]
    assert nlu["route"] == "llm" and nlu["reason"] == "default" and nlu["sentiment"] > 0.5
    assert "handoff" not in body
    chunks = sse(client, ask("Thanks, lovely!", stream=True))
    assert chunks[0]["nlu"]["route"] == chunks[-1]["nlu"]["route"] == "llm"
    stored = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()
    assert stored["messages"][1]["nlu"] == nlu and "nlu" not in stored["messages"][0]
    assert stored["handoff"] == {"state": "bot"}


def test_a_bot_without_routes_has_no_nlu_field(make_client, backend) -> None:
    client = make_client(engine=ChatEngine(backend))
    assert "nlu" not in client.post("/v1/chat/completions", json=ask("Hi"), headers=ALICE).json()


# ----- handoff by a route ----------------------------------------------------------------


def test_a_route_hands_off_and_stores_the_notice_with_its_decision(client, backend) -> None:
    conv = new_conversation(client)
    body = client.post("/v1/chat/completions", json=ask(ANGRY, conv), headers=ALICE).json()
    assert body["choices"][0]["message"]["content"] == HANDOFF_MESSAGE
    assert body["nlu"]["route"] == "handoff" and body["nlu"]["sentiment"] < -0.5
    assert body["handoff"]["state"] == "waiting"
    assert body["handoff"]["reason"] == body["nlu"]["reason"] != ""
    assert body["usage"]["total_tokens"] == 0 and backend.prompts == []  # nothing generated
    stored = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", ANGRY),
        ("assistant", HANDOFF_MESSAGE),
    ]
    assert stored["messages"][1]["nlu"] == body["nlu"]
    assert stored["messages"][1]["id"] == body["message_id"]
    assert stored["handoff"]["state"] == "waiting" and stored["handoff"]["since"]


def test_a_streamed_handoff_carries_nlu_then_the_handoff(client) -> None:
    conv = new_conversation(client)
    chunks = sse(client, ask(ANGRY, conv, stream=True))
    assert content(chunks) == HANDOFF_MESSAGE
    assert chunks[0]["nlu"]["route"] == "handoff" and "handoff" not in chunks[0]
    final = chunks[-1]
    assert final["handoff"]["state"] == "waiting" and final["nlu"]["route"] == "handoff"
    assert final["message_id"] and final["choices"][0]["finish_reason"] == "stop"


def test_without_a_conversation_nothing_is_handed_off(client) -> None:
    body = client.post("/v1/chat/completions", json=ask(ANGRY), headers=ALICE).json()
    assert body["choices"][0]["message"]["content"] == HANDOFF_MESSAGE
    assert body["nlu"]["route"] == "handoff" and "handoff" not in body
    assert client.get("/v1/handoffs?state=all", headers=AGENT).json()["data"] == []


# ----- the bot is silent while a person has the conversation -----------------------------


def test_while_handed_off_the_bot_is_silent_and_the_message_is_kept(client, backend) -> None:
    conv = handed_off(client)
    engine = client.app.state.service.engine
    engine.decide = None  # type: ignore[method-assign]  # any NLU would now be a 500
    body = client.post("/v1/chat/completions", json=ask("Hello? Anyone?", conv),
                       headers=ALICE).json()  # fmt: skip
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["handoff"] == {"state": "waiting"} and "message_id" not in body
    assert body["usage"]["total_tokens"] == 0
    chunks = sse(client, ask("Still there?", conv, stream=True))
    assert len(chunks) == 2 and content(chunks) == ""  # the role chunk, the final chunk
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["handoff"] == {"state": "waiting"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    stored = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()["messages"]
    assert [(m["role"], m["content"]) for m in stored[2:]] == [
        ("user", "Hello? Anyone?"),
        ("user", "Still there?"),
    ]
    assert backend.prompts == []


def test_a_silenced_turn_takes_no_generation_slot(make_client, tokenizer) -> None:
    gate = GateBackend(tokenizer)
    client = make_client(engine=ChatEngine(gate, ROUTING), max_concurrency=1, max_queue=2)
    conv = new_conversation(client)
    assert client.post(f"/v1/conversations/{conv}/handoff", headers=ALICE).status_code == 200
    holder = threading.Thread(
        target=lambda: client.post("/v1/chat/completions", json=ask("Hi"), headers=BOB)
    )
    holder.start()
    try:
        assert gate.started.wait(10)  # the only slot generates for Bob
        start = time.monotonic()
        r = client.post("/v1/chat/completions", json=ask("Hello?", conv), headers=ALICE)
        assert r.status_code == 200 and r.json()["handoff"] == {"state": "waiting"}
        assert time.monotonic() - start < 5 and not gate.release.is_set()
    finally:
        gate.release.set()
        holder.join(30)
    assert gate.calls == 1


# ----- handoff asked through the API -----------------------------------------------------


def test_the_owner_asks_for_a_person_through_the_api(client) -> None:
    conv = new_conversation(client)
    url = f"/v1/conversations/{conv}/handoff"
    assert client.post(url, headers=BOB).status_code == 404
    assert (
        client.post(url, json={"reason": "x" * 201}, headers=ALICE).json()["error"]["param"]
        == "reason"
    )
    assert client.post(url, json={"reason": " "}, headers=ALICE).status_code == 400
    assert client.post(url, json={"why": "?"}, headers=ALICE).status_code == 400
    r = client.post(url, json={"reason": "wants a refund"}, headers=ALICE)
    assert r.status_code == 200
    assert r.json()["handoff"]["state"] == "waiting"
    assert r.json()["handoff"]["reason"] == "wants a refund"
    again = client.post(url, headers=ALICE).json()  # already waiting: unchanged
    assert again["handoff"]["reason"] == "wants a refund"
    (item,) = client.get("/v1/handoffs", headers=AGENT).json()["data"]
    assert item["id"] == conv and item["nlu"] is None and item["last_message"] is None
    assert (
        client.post("/v1/conversations/" + "c" * 65 + "/handoff", headers=ALICE).status_code == 400
    )


# ----- the agents' API -------------------------------------------------------------------


def test_agents_list_read_answer_and_release(client, backend) -> None:
    conv = handed_off(client)
    bobs = new_conversation(client, BOB)
    client.post(f"/v1/conversations/{bobs}/handoff", json={"reason": "asked"}, headers=BOB)
    waiting = client.get("/v1/handoffs", headers=AGENT).json()["data"]
    assert [c["id"] for c in waiting] == [conv, bobs]  # every owner's, longest waiting first
    alices = waiting[0]
    assert alices["title"] == ANGRY and alices["handoff"]["state"] == "waiting"
    assert alices["handoff"]["reason"] and alices["handoff"]["since"]
    assert alices["nlu"]["route"] == "handoff"
    assert alices["last_message"]["content"] == HANDOFF_MESSAGE
    assert len(client.get("/v1/handoffs?limit=1", headers=AGENT).json()["data"]) == 1

    read = client.get(f"/v1/handoffs/{conv}", headers=AGENT).json()
    assert [m["role"] for m in read["messages"]] == ["user", "assistant"]
    r = client.post(f"/v1/handoffs/{conv}/messages",
                    json={"content": "Hi, I'm Sam. Sorry! Let me fix it.", "agent": "Sam"},
                    headers=AGENT)  # fmt: skip
    assert r.status_code == 201
    reply = r.json()
    assert reply["author"] == "agent" and reply["agent"] == "Sam"
    assert reply["conversation"]["handoff"]["state"] == "agent"
    assert [
        c["id"] for c in client.get("/v1/handoffs?state=agent", headers=AGENT).json()["data"]
    ] == [conv]
    assert [c["id"] for c in client.get("/v1/handoffs", headers=AGENT).json()["data"]] == [bobs]
    assert len(client.get("/v1/handoffs?state=all", headers=AGENT).json()["data"]) == 2
    seen = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()
    assert seen["handoff"] == {"state": "agent", "reason": alices["handoff"]["reason"],
                               "since": alices["handoff"]["since"], "agent": "Sam"}  # fmt: skip
    assert seen["messages"][-1]["id"] == reply["id"] and seen["messages"][-1]["agent"] == "Sam"

    released = client.post(f"/v1/handoffs/{conv}/release", headers=AGENT)
    assert released.status_code == 200 and released.json()["handoff"] == {"state": "bot"}
    body = client.post("/v1/chat/completions", json=ask("Thanks!", conv), headers=ALICE).json()
    assert body["choices"][0]["message"]["content"] == "Hello there!"  # the bot again
    for method, path, payload in [
        ("POST", f"/v1/handoffs/{conv}/messages", {"content": "late"}),
        ("POST", f"/v1/handoffs/{conv}/release", None),
        ("GET", f"/v1/handoffs/{conv}", None),
    ]:
        r = client.request(method, path, json=payload, headers=AGENT)
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_handed_off", path
    missing = client.post("/v1/handoffs/conv-missing/messages", json={"content": "hi"},
                          headers=AGENT)  # fmt: skip
    assert missing.status_code == 404
    assert client.post("/v1/handoffs/conv-missing/release", headers=AGENT).status_code == 404
    assert client.get("/v1/handoffs/conv-missing", headers=AGENT).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/handoffs?limit=0", None, "limit"),
        ("/v1/handoffs?limit=201", None, "limit"),
        ("/v1/handoffs?limit=many", None, "limit"),
        ("/v1/handoffs?state=bot", None, "state"),
        ("/v1/handoffs/" + "c" * 65, None, "conversation_id"),
        ("CONV/messages", {"content": "  "}, "content"),
        ("CONV/messages", {"content": "x" * 32_001}, "content"),
        ("CONV/messages", {"content": "a\x00b"}, "content"),
        ("CONV/messages", {"content": "hi", "agent": "x" * 65}, "agent"),
        ("CONV/messages", {"content": "hi", "role": "system"}, "role"),
        ("CONV/messages", {}, "content"),
    ],
)
def test_agent_inputs_are_bounded(client, path, body, param) -> None:
    conv = new_conversation(client)
    client.post(f"/v1/conversations/{conv}/handoff", headers=ALICE)
    path = path.replace("CONV", f"/v1/handoffs/{conv}")
    r = (
        client.post(path, json=body, headers=AGENT)
        if body is not None
        else client.get(path, headers=AGENT)
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_agent_and_customer_keys_never_mix(client, make_client) -> None:
    conv = handed_off(client)
    for path in ("/v1/handoffs", f"/v1/handoffs/{conv}"):
        r = client.get(path, headers=ALICE)
        assert r.status_code == 403 and r.json()["error"]["code"] == "agent_key_required"
        for headers in ({}, auth("nope"), {"Authorization": "key-agent"}):
            assert client.get(path, headers=headers).status_code == 401
    for method, path in [("GET", "/v1/conversations"), ("GET", f"/v1/conversations/{conv}"),
                         ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]:  # fmt: skip
        r = client.request(method, path, json=ask("hi"), headers=AGENT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    assert client.get("/v1/handoffsX", headers=AGENT).status_code == 401  # not an agent route
    # Refused on its headers, before a body is read (as customers' routes are).
    r = client.post(f"/v1/handoffs/{conv}/messages", content=b"{" * 10_000, headers=ALICE)
    assert r.status_code == 403


def test_a_server_without_agent_keys_has_no_agent_api(make_client) -> None:
    for client in (make_client(agent_keys=None), make_client(keys=[], agent_keys=None)):
        r = client.get("/v1/handoffs", headers=ALICE)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "agent_api_disabled" and "--agent-key" in error["message"]


def test_an_open_server_still_guards_the_agent_api(make_client) -> None:
    client = make_client(keys=[])
    conv = client.post("/v1/conversations", json={}).json()["id"]
    client.post(f"/v1/conversations/{conv}/handoff")
    assert client.get("/v1/handoffs").status_code == 401
    assert [c["id"] for c in client.get("/v1/handoffs", headers=AGENT).json()["data"]] == [conv]


def test_a_key_cannot_have_both_roles(tokenizer, tmp_path) -> None:
    from chattune.cli.serve import HttpSection
    from chattune.config import ConfigError

    engine, store = ChatEngine(FakeBackend(tokenizer, [])), Store(str(tmp_path / "c.db"))
    with pytest.raises(ValueError, match="both"):
        build_app(engine, store, "tiny", ["same"], ["same"])
    assert HttpSection(agent_key=["a,b", " c "]).agent_keys == ["a", "b", "c"]
    with pytest.raises((ValueError, ConfigError)):
        HttpSection(api_key="k1,same", agent_key=["same"])


def test_agent_keys_come_from_flags_or_the_environment(monkeypatch) -> None:
    from chattune.cli.serve import HttpSection

    monkeypatch.setenv("CHATTUNE_AGENT_KEY", "env-1,env-2")
    assert HttpSection().agent_keys == ["env-1", "env-2"]
    monkeypatch.delenv("CHATTUNE_AGENT_KEY")
    assert HttpSection().agent_keys == []


# ----- the webhook -----------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[tuple[str, queue.Queue]]:
    """A webhook receiver on 127.0.0.1: (its URL, the (content type, JSON body) of each
    request it received). It stops when the test ends, or after 30 s by itself."""
    received: queue.Queue = queue.Queue()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.put((self.headers["Content-Type"], json.loads(self.rfile.read(length))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    server.timeout = 0.1  # handle_request returns at least this often
    stop, deadline = threading.Event(), time.monotonic() + 30

    def serve() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?token=secret", received
    stop.set()
    thread.join(5)
    server.server_close()


def test_the_webhook_is_told_of_each_handoff(make_client, hook) -> None:
    url, received = hook
    client = make_client(handoff_webhook=url)
    conv = handed_off(client)
    kind, event = received.get(timeout=10)
    assert kind == "application/json"
    assert event["event"] == "handoff" and event["conversation_id"] == conv
    assert event["state"] == "waiting" and event["nlu"]["route"] == "handoff"
    assert event["reason"] == event["nlu"]["reason"] and event["at"]
    other = new_conversation(client)
    client.post(f"/v1/conversations/{other}/handoff", json={"reason": "refund"}, headers=ALICE)
    _, event = received.get(timeout=10)
    assert (event["conversation_id"], event["reason"], event["nlu"]) == (other, "refund", None)
    client.post(f"/v1/conversations/{other}/handoff", headers=ALICE)  # no change: no event
    client.post("/v1/chat/completions", json=ask("Still?", conv), headers=ALICE)  # silenced
    time.sleep(0.5)  # a bound on what did not happen: nothing more arrives
    assert received.empty()


def test_a_dead_webhook_neither_delays_nor_fails_the_customer(make_client, caplog) -> None:
    from tests.conftest import free_port

    client = make_client(handoff_webhook=f"http://127.0.0.1:{free_port()}/hook?token=secret")
    start = time.monotonic()
    conv = handed_off(client)
    assert time.monotonic() - start < 5
    assert client.get(f"/v1/conversations/{conv}", headers=ALICE).json()["handoff"]["state"] == (
        "waiting"
    )
    webhook = client.app.state.service.webhook
    webhook.close(wait=True)
    assert "handoff webhook http://127.0.0.1" in caplog.text and "secret" not in caplog.text


def test_deliveries_are_bounded(monkeypatch) -> None:
    from chattune.serve import handoff

    blocked = threading.Event()
    webhook = Webhook("http://127.0.0.1:9/never")
    monkeypatch.setattr(webhook, "_deliver", lambda event: blocked.wait(10))
    bound = handoff.MAX_IN_FLIGHT + handoff.MAX_BACKLOG
    assert all(webhook.send({"conversation_id": str(i)}) for i in range(bound))
    assert webhook.send({"conversation_id": "one too many"}) is False
    blocked.set()
    webhook.close(wait=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http://", "hooks"])
def test_a_webhook_must_be_http(tokenizer, tmp_path, url) -> None:
    from chattune.cli.serve import HandoffSection
    from chattune.config import ConfigError

    engine, store = ChatEngine(FakeBackend(tokenizer, [])), Store(str(tmp_path / "c.db"))
    with pytest.raises(ValueError, match="webhook"):
        build_app(engine, store, "tiny", ["k"], handoff_webhook=url)
    with pytest.raises((ValueError, ConfigError)):
        HandoffSection(webhook=url)


# ----- the store: migration 0003, learning from agents -----------------------------------


def test_migration_0003_upgrades_a_database_with_conversations(db_url: str) -> None:
    migrate(db_url, "0002")
    engine = create_engine(db_url)
    with engine.begin() as con:
        con.execute(text("INSERT INTO conversations (id, owner, title, created_at, updated_at)"
                         " VALUES ('conv-old', :o, 'Old chat', :t, :t)"),
                    {"o": owner_of("sk-alice"), "t": now()})  # fmt: skip
        for seq, role in enumerate(["user", "assistant"]):
            con.execute(text("INSERT INTO messages (id, conversation_id, seq, role, content,"
                             " created_at, meta) VALUES (:id, 'conv-old', :seq, :role, 'hi',"
                             " :t, '{}')"), {"id": f"msg-{seq}", "seq": seq, "role": role,
                                             "t": now()})  # fmt: skip
    engine.dispose()
    store = Store(db_url)  # migrates to head
    try:
        alice = owner_of("sk-alice")
        old = store.get_conversation(alice, "conv-old")
        assert old["handoff"] == {"state": "bot"} and len(old["messages"]) == 2
        assert store.handoff_state(alice, "conv-old") == "bot"
        assert store.hand_off(alice, "conv-old", Handoff("asked"))[1] is True
        assert [c["id"] for c in store.list_handoffs(("waiting",), 10)] == ["conv-old"]
        assert store.agent_reply("conv-old", "A person here.", "Sam")["agent"] == "Sam"
        assert store.release("conv-old")["handoff"] == {"state": "bot"}
    finally:
        store.close()


def test_agent_replies_are_exported_as_valid_training_conversations(db_url, tmp_path) -> None:
    from chattune.cli import main
    from chattune.data.readers import read_conversations

    store = Store(db_url)
    alice = owner_of("sk-alice")
    conv = store.create_conversation(alice)["id"]
    store.append_exchange(alice, conv, "Where is my order?", "It ships soon.")
    notice = {"nlu": {"route": "handoff", "reason": "sentiment"}}
    store.append_handoff(alice, conv, ANGRY, HANDOFF_MESSAGE, notice, Handoff("sentiment"))
    store.append(alice, conv, "user", "Hello??")  # sent while waiting: no reply
    store.agent_reply(conv, "Sorry! I'm Sam.", "Sam")
    store.agent_reply(conv, "Your order PC-104233 left today.", "Sam")  # one answer, 2 messages
    store.append(alice, conv, "user", "Thanks Sam")
    store.agent_reply(conv, "You're welcome!", "Sam")
    other = store.create_conversation(owner_of("sk-bob"))["id"]
    store.hand_off(owner_of("sk-bob"), other, Handoff("asked"))
    store.agent_reply(other, "Hello, how can I help?", "Kim")  # nothing to answer: skipped
    examples = list(store.feedback_conversations())
    store.close()
    assert [e["owner"] for e in examples] == [alice, alice]
    assert examples[0]["messages"] == [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It ships soon."},
        {"role": "user", "content": f"{ANGRY}\n\nHello??"},
        {"role": "assistant", "content": "Sorry! I'm Sam.\n\nYour order PC-104233 left today."},
    ]
    assert examples[1]["messages"][-2:] == [
        {"role": "user", "content": "Thanks Sam"},
        {"role": "assistant", "content": "You're welcome!"},
    ]
    assert HANDOFF_MESSAGE not in json.dumps(examples)
    out = tmp_path / "feedback.jsonl"
    assert main(["data", "export-feedback", "--db", db_url, "--out", str(out)]) == 0
    assert [len(c.messages) for c in read_conversations(out)] == [4, 6]  # valid training data
    assert main(["data", "check", str(out)]) == 0


def test_feedback_after_a_handoff_is_valid_training_data(tmp_path: Path) -> None:
    """Messages sent while waiting stay in the history of later thumbs-up replies."""
    store = Store(str(tmp_path / "c.db"))
    alice = owner_of("sk-alice")
    conv = store.create_conversation(alice)["id"]
    store.hand_off(alice, conv, Handoff("asked"))
    store.append(alice, conv, "user", "Is anyone there?")
    store.append(alice, conv, "user", "Hello?")
    store.release(conv)
    reply = store.append_exchange(alice, conv, "Never mind: is shipping free?", "Over $60.")
    assert store.add_feedback(alice, conv, reply, "up", None)
    (example,) = store.feedback_conversations()
    assert example["messages"] == [
        {"role": "user", "content": "Is anyone there?\n\nHello?\n\nNever mind: is shipping free?"},
        {"role": "assistant", "content": "Over $60."},
    ]
    store.close()


# ----- found by review: each a test of the fix ------------------------------------------------


def test_agent_keys_alone_keep_the_open_servers_loopback_guard(make_client) -> None:
    client = make_client(keys=[], agent_keys=AGENTS)
    rebound = TestClient(client.app, "http://attacker.example")
    assert rebound.get("/v1/conversations").status_code == 400  # DNS rebinding refused
    assert client.get("/v1/conversations").status_code == 200  # loopback: open, as before


def test_a_reply_generated_while_a_person_took_over_is_dropped(make_client, tokenizer) -> None:
    import concurrent.futures

    gate = GateBackend(tokenizer)
    client = make_client(engine=ChatEngine(gate, ROUTING))
    conv = new_conversation(client)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/chat/completions",
                              json=ask("Hi there", conv), headers=ALICE)  # fmt: skip
        assert gate.started.wait(10)
        client.post(f"/v1/conversations/{conv}/handoff", json={}, headers=ALICE)
        client.post(f"/v1/handoffs/{conv}/messages", json={"content": "Hi, Sam here"},
                    headers=AGENT)  # fmt: skip
        gate.release.set()
        body = pending.result(10).json()
    assert body["choices"][0]["message"]["content"] == "" and body["handoff"]["state"] == "agent"
    stored = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [
        ("assistant", "Hi, Sam here"), ("user", "Hi there"),
    ]  # fmt: skip
    # the bot never spoke after the person took over; the question waits for the person


def test_a_handoff_needs_no_prompt_so_a_long_message_still_reaches_a_person(client) -> None:
    conv = new_conversation(client)
    long_angry = ANGRY + " " + "I have waited for weeks and nothing arrived. " * 700
    r = client.post("/v1/chat/completions", json=ask(long_angry, conv), headers=ALICE)
    assert r.status_code == 200 and r.json()["handoff"]["state"] == "waiting"
    assert len(json.dumps(r.json()["nlu"])) < 5000  # bounded, however long the message


def test_liking_the_handoff_notice_teaches_nothing(client) -> None:
    conv = handed_off(client)
    notice = client.get(f"/v1/conversations/{conv}", headers=ALICE).json()["messages"][-1]
    r = client.post(f"/v1/conversations/{conv}/messages/{notice['id']}/feedback",
                    json={"rating": "up"}, headers=ALICE)  # fmt: skip
    assert r.status_code == 201
    assert list(client.app.state.store.feedback_conversations()) == []
