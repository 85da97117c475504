"""A real server on 127.0.0.1: the official openai client, a browser, SIGTERM, kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chattune.backends.transformers import TransformersBackend
from chattune.chat.engine import ChatEngine
from chattune.knowledge.grounding import Knowledge, KnowledgeSettings
from chattune.knowledge.retrieve import Retriever
from chattune.knowledge.store import KnowledgeBase
from chattune.model.loading import load_model
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import FakeBackend, free_port, live_server


@pytest.fixture(scope="module")
def tiny_app(tiny_model_dir, tmp_path_factory):
    engine = ChatEngine(TransformersBackend(*load_model(str(tiny_model_dir))))
    store = Store(str(tmp_path_factory.mktemp("db") / "chat.db"))
    return build_app(engine, store, "tiny", ["sk-test"], max_concurrency=2)


def test_openai_client_plain_and_streaming(tiny_app) -> None:
    from openai import OpenAI

    with live_server(tiny_app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
        )
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens <= 8
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello!"}],
            max_tokens=8,
            stream=True,
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        import openai

        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="tiny", temperature=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert e.value.body["param"] == "temperature"


def test_openai_client_receives_sources_with_a_knowledge_base(tiny_model_dir, tmp_path) -> None:
    from openai import OpenAI

    doc = tmp_path / "shipping.md"
    doc.write_text("# Shipping\n\n## Canada\n\nDelivery to Canada costs $12.99.\n")
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([doc])
    settings = KnowledgeSettings(min_similarity=0.0, min_topic_similarity=0.0)
    backend = TransformersBackend(*load_model(str(tiny_model_dir)))
    engine = ChatEngine(backend, knowledge=Knowledge(Retriever(kb), settings))
    app = build_app(engine, Store(str(tmp_path / "chat.db")), "tiny", [])
    with live_server(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        ask = {"model": "tiny", "messages": [{"role": "user", "content": "Canada delivery?"}]}
        reply = client.chat.completions.create(**ask, max_tokens=4)
        (source,) = reply.model_extra["sources"]
        assert source["location"].startswith("Shipping > Canada") and "$12.99" in source["text"]
        first = next(iter(client.chat.completions.create(**ask, max_tokens=4, stream=True)))
        assert first.model_extra["sources"][0]["location"] == source["location"]


def test_web_page_in_a_real_browser(tokenizer, tmp_path) -> None:
    """Type, watch the reply stream in, give feedback, reload, find the conversation."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run must install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    class Streaming(FakeBackend):
        def stream(self, prompt_ids, options, stop, cancel):
            for word in ["Our ", "return ", "window ", "is ", "45 ", "days."]:
                time.sleep(0.15)  # slow enough to see several partial states
                yield word

    docs = tmp_path / "returns.md"
    docs.write_text("# Returns\n\n## Window\n\nReturn items within 45 days of delivery.\n")
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([docs])
    # The hashing embedder's similarities are low; let every passage count.
    settings = KnowledgeSettings(min_similarity=0.0, min_topic_similarity=0.0)
    knowledge = Knowledge(Retriever(kb), settings)
    store = Store(str(tmp_path / "chat.db"))
    engine = ChatEngine(Streaming(tokenizer, []), knowledge=knowledge)
    app = build_app(engine, store, "tiny", ["web-key"])
    with live_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(url)
        page.fill("#api-key", "web-key")
        page.click("#save-key")
        page.click("#new-chat")
        page.fill("#input", "How long do I have to return an item?")
        page.keyboard.press("Enter")
        reply = page.locator(".msg.assistant").last
        page.wait_for_function(
            "() => { const m = document.querySelectorAll('.msg.assistant');"
            " const t = m.length ? m[m.length - 1].textContent : '';"
            " return t.length > 0 && !t.includes('45 days.'); }",
            timeout=10_000,
        )  # partial
        page.wait_for_selector(".msg.assistant .feedback", timeout=10_000)
        assert reply.inner_text().startswith("Our return window is 45 days.")
        source = page.locator("#source-list details summary").first
        assert source.inner_text().startswith("[1] ") and "Returns > Window" in source.inner_text()
        reply.get_by_role("button", name="thumbs up").click()
        page.wait_for_selector(".feedback button.chosen", timeout=5_000)
        page.reload()
        item = page.locator("#conversations li").first
        item.wait_for(timeout=5_000)
        assert item.inner_text() == "How long do I have to return an item?"
        item.click()
        page.wait_for_selector(".msg.assistant", timeout=5_000)
        assert "45 days." in page.locator(".msg.assistant").last.inner_text()
        browser.close()
    rows = sqlite3.connect(tmp_path / "chat.db").execute("select rating from feedback").fetchall()
    assert rows == [(1,)]


def _start(tiny_model_dir: Path, db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chattune.cli",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--db",
            str(db),
            "--port",
            str(port),
            "--api-key",
            "k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    import httpx

    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


def test_kill_9_during_writes_keeps_every_acknowledged_message(tiny_model_dir, db_url):
    """On SQLite and on PostgreSQL: every reply the server acknowledged before it was killed
    is stored, and the database is intact and consistent (seqs 0..n-1, question, reply)."""
    import httpx
    from sqlalchemy import create_engine, make_url, text

    port = free_port()
    proc = _start(tiny_model_dir, db_url, port)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            conv = http.post("/v1/conversations", json={}).json()["id"]
            for i in range(200):  # bounded: the kill comes long before the end
                if stop.is_set():
                    return
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={
                            "messages": [{"role": "user", "content": f"message {i}"}],
                            "max_tokens": 2,
                            "conversation_id": conv,
                        },
                    )
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    acknowledged.append(r.json()["message_id"])

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 15
    if db_url.startswith("sqlite"):
        con = sqlite3.connect(make_url(db_url).database)
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
        con.close()
    engine = create_engine(db_url)
    with engine.connect() as con:
        rows = con.execute(
            text(
                "select conversation_id, seq, role, id from messages order by conversation_id, seq"
            )
        ).all()
    engine.dispose()
    assert set(acknowledged) <= {id_ for _, _, role, id_ in rows if role == "assistant"}
    by_conversation: dict[str, list[str]] = {}
    for conversation_id, seq, role, _ in rows:
        assert seq == len(by_conversation.setdefault(conversation_id, []))  # 0..n-1
        by_conversation[conversation_id].append(role)
    for roles in by_conversation.values():  # question, reply, question, reply, ...
        assert roles[::2] == ["user"] * len(roles[::2]) and set(roles[1::2]) <= {"assistant"}


def test_sigterm_finishes_in_flight_reply_and_exits_0(tiny_model_dir, tmp_path) -> None:
    import httpx

    db, port = tmp_path / "chat.db", free_port()
    proc = _start(tiny_model_dir, db, port)
    result: dict = {}
    in_flight = threading.Event()

    def request() -> None:
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=60,
            headers={"Authorization": "Bearer k"},
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                  "stream": True},
        ) as r:  # fmt: skip
            lines = r.iter_lines()
            result["first"] = next(lines)  # the slot is held: the reply is being generated
            in_flight.set()
            result["last"] = [x for x in lines if x][-1]
            result["status"] = r.status_code

    t = threading.Thread(target=request)
    t.start()
    assert in_flight.wait(60), "the request never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    t.join()
    assert result["last"] == "data: [DONE]"  # the in-flight reply was finished, not cut off
    assert result.get("status") == 200  # the in-flight reply was finished, not cut off
