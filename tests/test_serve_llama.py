"""``chattune serve`` on the llama.cpp backend: concurrent streams share one batch, and a
worker that dies fails only its requests (503 or an ``error`` event), never the server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from chattune.backends.registry import BackendSettings, open_backend
from chattune.chat.engine import ChatEngine
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import SCRIPT, live_server

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make setup")
httpx = pytest.importorskip("httpx")

HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def served(scripted_gguf, tmp_path_factory):
    backend = open_backend(str(scripted_gguf), BackendSettings(slots=8, context=512))
    store = Store(str(tmp_path_factory.mktemp("db") / "chat.db"))
    app = build_app(ChatEngine(backend), store, "scripted", max_concurrency=8)
    with live_server(app) as url:
        yield url, backend
    backend.close()


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: {")]  # fmt: skip


def test_eight_streams_are_decoded_together(served) -> None:
    url, backend = served
    start, texts = threading.Barrier(8), []
    body = {"messages": HELLO, "stream": True, "max_tokens": 200, "temperature": 1.0,
            "top_k": 0, "seed": 3}  # fmt: skip

    def client() -> None:
        start.wait(30)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            chunks = events(r)
        texts.append("".join(c["choices"][0]["delta"].get("content", "") for c in chunks))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(texts) == 8 and len(set(texts)) == 1  # one seed: the same reply eight times
    assert backend._worker.max_batch == 8
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert models[0]["backend"] == "llama.cpp"


def test_a_crash_mid_stream_is_an_error_event_and_the_server_goes_on(served) -> None:
    url, backend = served
    body = {"messages": HELLO, "stream": True, "max_tokens": 300, "temperature": 1.0,
            "top_k": 0}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        os.kill(backend.worker_pid, signal.SIGKILL)
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert rest[-1]["error"]["code"] == "backend_crashed"
    reply = httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO}, timeout=60)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == SCRIPT


def test_a_crash_during_a_plain_request_is_a_503_to_retry(served) -> None:
    url, backend = served
    pid = backend.worker_pid
    os.kill(pid, signal.SIGSTOP)  # the request waits in the worker, then the worker dies
    result: list[httpx.Response] = []
    request = threading.Thread(target=lambda: result.append(httpx.post(
        f"{url}/v1/chat/completions", json={"messages": HELLO}, timeout=60)))  # fmt: skip
    request.start()
    deadline = time.monotonic() + 30
    while not backend._worker.queues:  # the request reached the backend
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    request.join(60)
    assert result[0].status_code == 503 and result[0].headers["retry-after"] == "1"
    assert result[0].json()["error"]["code"] == "backend_crashed"
    again = httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO}, timeout=60)
    assert again.json()["choices"][0]["message"]["content"] == SCRIPT
