"""``/v1/completions``, and the remote backend that calls it on another server.

The first half drives ``/v1/completions`` in-process (shapes, bounds, auth, overload). The
second runs a second chattune app on 127.0.0.1 with the transformers backend on a tiny
random model, and points :class:`OpenAIBackend` at it: a chat engine on the remote backend
must give the very replies the local backend gives (same prompt ids, same options), while
the profile, the stop strings and the budget stay on the client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chattune.backends.base import BackendError, BackendTimeout
from chattune.backends.remote import OpenAIBackend, completion_arguments
from chattune.backends.transformers import TransformersBackend
from chattune.chat.engine import ChatEngine, split_system
from chattune.chat.profile import BotProfile, Example
from chattune.data.types import Message
from chattune.model.generation import GenerationOptions
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import ROOT, FakeBackend, GateBackend, free_port, live_server, wait_until

KEY = "sk-remote"
BEARER = {"Authorization": f"Bearer {KEY}"}


class Recording(FakeBackend):
    """Fixed pieces, recording each request's options and stop strings."""

    def __init__(self, tokenizer, pieces, context_window: int = 4096) -> None:
        super().__init__(tokenizer, pieces, context_window)
        self.calls: list[tuple[list[int], GenerationOptions, list[str]]] = []

    def stream(self, prompt_ids, options, stop, cancel):
        self.calls.append((list(prompt_ids), options, list(stop)))
        yield from super().stream(prompt_ids, options, stop, cancel)


def make_app(backend, tmp_path: Path, keys=(KEY,), profile: BotProfile | None = None, **kw):
    store = Store(str(tmp_path / f"{id(backend)}.db"))
    return build_app(ChatEngine(backend, profile), store, "tiny", list(keys), **kw)


@pytest.fixture
def fake(tokenizer):
    return Recording(tokenizer, ["Hello", " there", "!"], context_window=64)


@pytest.fixture
def client(fake, tmp_path) -> TestClient:
    # A profile whose system prompt and stop string the raw endpoint must not use.
    profile = BotProfile(system_prompt="You are Pine.", stop=["there"])
    return TestClient(make_app(fake, tmp_path, profile=profile), "http://127.0.0.1")


def events(response) -> list[dict]:
    lines = [x.removeprefix("data: ") for x in response.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-1]
    return [json.loads(x) for x in lines[:-1]]


# ----- /v1/completions in-process ---------------------------------------------------------


def test_text_prompt_is_continued_as_given_without_the_profile(client, fake, tokenizer):
    r = client.post("/v1/completions", json={"prompt": "Once upon a time"}, headers=BEARER)
    assert r.status_code == 200, r.text
    body = r.json()
    ids = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert fake.calls[-1][0] == ids  # no chat template, no system prompt
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    # the profile's stop string "there" is not applied: the raw model is driven
    assert body["choices"] == [
        {"index": 0, "text": "Hello there!", "finish_reason": "stop", "logprobs": None}
    ]
    n = len(tokenizer("Hello there!", add_special_tokens=False)["input_ids"])
    assert body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": n,
        "total_tokens": len(ids) + n,
    }
    chat = client.post(
        "/v1/chat/completions",
        headers=BEARER,
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    )
    assert chat.json()["choices"][0]["message"]["content"] == "Hello"  # the profile's stop


def test_token_ids_are_sent_exactly_and_options_mapped(client, fake):
    ids = [1, 5, 300, 2, 383, 0]
    r = client.post("/v1/completions", json={"prompt": ids}, headers=BEARER)
    assert r.status_code == 200 and fake.calls[-1][0] == ids
    options = fake.calls[-1][1]
    assert options.max_new_tokens == 16 and not options.do_sample  # OpenAI's default 16; greedy
    sampled = {
        "prompt": ids,
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 7,
        "seed": 3,
        "repetition_penalty": 1.2,
        "max_tokens": 9,
        "stop_token_ids": [2],
    }
    assert client.post("/v1/completions", json=sampled, headers=BEARER).status_code == 200
    assert fake.calls[-1][1] == GenerationOptions(
        max_new_tokens=9,
        do_sample=True,
        temperature=0.5,
        top_p=0.8,
        top_k=7,
        seed=3,
        repetition_penalty=1.2,
    )
    for temperature in (0, 0.001):  # 0, and anything under MIN_TEMPERATURE, is greedy
        r = client.post(
            "/v1/completions", headers=BEARER, json={"prompt": ids, "temperature": temperature}
        )
        assert r.status_code == 200 and not fake.calls[-1][1].do_sample


def test_stop_strings_are_never_shown_and_length_is_reported(client, fake):
    r = client.post("/v1/completions", json={"prompt": "x", "stop": [" th", "zz"]}, headers=BEARER)
    assert r.json()["choices"][0]["text"] == "Hello"
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert fake.calls[-1][2] == [" th", "zz"]  # the request's stops only, not the profile's
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=BEARER)
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_streaming_shape(client):
    with client.stream(
        "POST", "/v1/completions", headers=BEARER, json={"prompt": "x", "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = events(r)
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " there", "!", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert all("usage" not in c for c in chunks[:-1])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [1, 2, 384]}, "prompt"),  # the tiny tokenizer has ids 0..383
        ({"prompt": [1, -1]}, "prompt"),
        ({"prompt": [1, True]}, "prompt"),
        ({"prompt": [1, "2"]}, "prompt"),
        ({"prompt": [1] * 65}, "prompt"),  # the fake model's context is 64 tokens
        ({"prompt": "word " * 80}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),  # several prompts
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 200_001}, "prompt"),
        ({"prompt": "a\u0000b"}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "logprobs": 1}, "logprobs"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "stop": "s" * 65}, "stop"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "max_tokens": 1025}, "max_tokens"),  # the server's limit
        ({"prompt": [1] * 60, "max_tokens": 5}, "max_tokens"),  # 60 + 5 > 64
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "stop_token_ids": list(range(65))}, "stop_token_ids"),
    ],
)
def test_bad_completion_requests_are_400_naming_the_field(client, fake, body, param):
    for stream in (False, True):
        r = client.post("/v1/completions", json={**body, "stream": stream}, headers=BEARER)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert fake.calls == []  # refused before any generation


def test_completions_need_a_key(client):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = client.post("/v1/completions", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_failures_after_the_200_and_deadlines(tokenizer, tmp_path):
    client = TestClient(
        make_app(GateBackend(tokenizer, fail_after_first=True), tmp_path), "http://127.0.0.1"
    )
    with client.stream(
        "POST", "/v1/completions", headers=BEARER, json={"prompt": "x", "stream": True}
    ) as r:
        last = json.loads([x for x in r.iter_lines() if x][-1].removeprefix("data: "))
    assert last["error"]["type"] == "server_error" and "broke" not in last["error"]["message"]
    gate = GateBackend(tokenizer)
    slow = TestClient(make_app(gate, tmp_path, request_timeout=0.3), "http://127.0.0.1")
    r = slow.post("/v1/completions", json={"prompt": "x"}, headers=BEARER)
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
    assert gate.cancelled.wait(5)


def test_a_full_server_answers_429_and_a_disconnect_frees_the_slot(tokenizer, tmp_path):
    import httpx

    gate = GateBackend(tokenizer)
    app = make_app(gate, tmp_path, max_concurrency=1, max_queue=0)
    slots = app.state.service.slots
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=BEARER, timeout=30) as http,
    ):
        body = {"prompt": "x", "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")
            assert gate.started.wait(10)  # generating: the only slot is taken
            r = http.post("/v1/completions", json={"prompt": "x"})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert gate.cancelled.wait(10)  # the client left: its generation stopped
        assert wait_until(lambda: slots.admitted == 0), "the slot was not freed"
        gate.release.set()
        assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 200


# ----- the remote backend against a live chattune ----------------------------------------


class Recorder:
    """The remote server's backend: the local transformers backend, recording requests."""

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.context_window, self.end_ids = inner.context_window, inner.end_ids
        self.calls: list[tuple[list[int], GenerationOptions, list[str]]] = []

    def stream(self, prompt_ids, options, stop, cancel):
        self.calls.append((list(prompt_ids), options, list(stop)))
        yield from self.inner.stream(prompt_ids, options, stop, cancel)

    def generate(self, prompts, options, stop):
        return self.inner.generate(prompts, options, stop)


@pytest.fixture(scope="module")
def local(lively_model_dir) -> TransformersBackend:
    """A tiny random Llama whose greedy reply depends on the prompt (conftest's lively
    model), so a reply that matches is evidence, not a coincidence."""
    from chattune.model.loading import load_model

    return TransformersBackend(*load_model(str(lively_model_dir)))


@pytest.fixture(scope="module")
def served(local, tmp_path_factory):
    """(URL, the server's recording backend): a second chattune with a key and no profile."""
    recorder = Recorder(local)
    app = make_app(recorder, tmp_path_factory.mktemp("remote"), max_concurrency=2)
    with live_server(app) as url:
        yield url, recorder


def remote(local: TransformersBackend, url: str, **kw) -> OpenAIBackend:
    kw.setdefault("api_key", KEY)
    return OpenAIBackend(
        local.tokenizer, url, context_window=local.context_window, end_ids=local.end_ids, **kw
    )


CONVERSATIONS = [
    [Message("user", "Hello!")],
    [Message("system", "You are a support agent."), Message("user", "Is shipping free?")],
    [
        Message("user", "Hello!"),
        Message("assistant", "Hello! How can I help you today?"),
        Message("user", "Where is my order?"),
    ],
]
PROFILE = BotProfile(system_prompt="You are Pine.", examples=[Example(user="hi", assistant="hey")])


def replies(engine: ChatEngine, options: GenerationOptions, **kw) -> list[str]:
    out = []
    for conversation in CONVERSATIONS:
        system, history = split_system(conversation)
        out.append(engine.reply(history, options=options, system=system, **kw))
    return out


def test_greedy_replies_are_the_local_backends(local, served):
    url, recorder = served
    options = GenerationOptions(max_new_tokens=24)
    here, there = ChatEngine(local, PROFILE), ChatEngine(remote(local, url), PROFILE)
    expected = replies(here, options)
    assert len(set(expected)) == len(expected) and all(expected)  # so a mismatch would show
    recorder.calls.clear()
    assert replies(there, options) == expected
    # the server got the client's prompt ids, exactly: the profile was applied here
    system, history = split_system(CONVERSATIONS[1])
    assert recorder.calls[1][0] == here.build_prompt(history, options, system)[0]
    assert not recorder.calls[1][1].do_sample and recorder.calls[1][1].max_new_tokens == 24
    one_by_one = [here.generate([c], options)[0] for c in CONVERSATIONS]
    batch = there.generate(CONVERSATIONS, options)
    assert [g.text for g in batch] == [g.text for g in one_by_one]
    assert [g.stopped for g in batch] == [g.stopped for g in one_by_one]
    assert all(g.n_tokens > 0 for g in batch)  # the server's usage.completion_tokens


def test_stop_strings_cut_and_max_new_tokens_is_respected(local, served):
    url, recorder = served
    options = GenerationOptions(max_new_tokens=24)
    here, there = ChatEngine(local), ChatEngine(remote(local, url))
    full = replies(here, options)[0]
    stop, at = next(
        (full[i : i + 2], i)
        for i in range(4, len(full) - 2)
        if full[i : i + 2].isalnum() and full.find(full[i : i + 2]) == i
    )
    cut = full[:at].strip()
    long_stops = ["never-0", "never-1", "never-2", "never-3"]  # only the first 4 are sent
    for engine in (
        ChatEngine(local, BotProfile(stop=[*long_stops, stop])),
        ChatEngine(remote(local, url), BotProfile(stop=[*long_stops, stop])),
    ):
        assert replies(engine, options)[0] == cut
        assert engine.generate(CONVERSATIONS[:1], options)[0].text == cut
    assert recorder.calls[-1][2] == long_stops  # the engine cut at the fifth on its own
    assert replies(there, options, stop=[stop])[0] == cut  # a request's own stop strings too
    assert stop in recorder.calls[-1][2]
    short = GenerationOptions(max_new_tokens=4)
    assert replies(there, short) == replies(here, short) != replies(here, options)
    assert recorder.calls[-1][1].max_new_tokens == 4


def test_seeded_sampling_is_reproducible_and_the_local_ones(local, served):
    url, recorder = served
    options = GenerationOptions(
        max_new_tokens=16,
        do_sample=True,
        temperature=0.9,
        top_p=0.95,
        top_k=40,
        repetition_penalty=1.1,
        seed=7,
    )
    there = ChatEngine(remote(local, url))
    first = replies(there, options)
    assert recorder.calls[-1][1] == options  # every option arrived as it was set
    assert replies(there, options) == first == replies(ChatEngine(local), options)
    assert replies(there, options.model_copy(update={"seed": 8})) != first


def test_a_text_prompt_gives_the_same_reply(local, served):
    url, recorder = served
    options = GenerationOptions(max_new_tokens=24)
    expected = replies(ChatEngine(local), options)
    assert replies(ChatEngine(remote(local, url, prompt_format="text")), options) == expected
    system, history = split_system(CONVERSATIONS[2])
    # this tokenizer reads its own decoded prompt back to the same ids
    assert recorder.calls[-1][0] == ChatEngine(local).build_prompt(history, options, system)[0]


def test_cancel_stops_the_remote_generation(tokenizer, tmp_path):
    class Endless(FakeBackend):
        """Streams pieces until cancelled (a bounded "forever")."""

        cancelled = threading.Event()

        def stream(self, prompt_ids, options, stop, cancel):
            for _ in range(3000):
                if cancel.wait(0.002):  # pacing, not a guess at timing
                    self.cancelled.set()
                    return
                yield "x"

    server = Endless(tokenizer, [])
    app = make_app(server, tmp_path)
    with live_server(app) as url:
        backend = OpenAIBackend(tokenizer, url, api_key=KEY, context_window=4096, end_ids=[2])
        cancel, got = threading.Event(), 0
        for _ in backend.stream([1, 5, 7], GenerationOptions(max_new_tokens=1024), [], cancel):
            got += 1
            if got == 3:
                cancel.set()
        assert got == 3  # nothing more was yielded once cancelled
        assert server.cancelled.wait(10), "the server went on generating"
        assert wait_until(lambda: app.state.service.slots.admitted == 0)
        # a consumer that just stops reading (the engine at a stop string) closes it too
        server.cancelled.clear()
        pieces = backend.stream(
            [1, 5, 7], GenerationOptions(max_new_tokens=1024), [], threading.Event()
        )
        assert next(pieces) == "x"
        pieces.close()
        assert server.cancelled.wait(10)


def test_a_silent_server_times_out_and_is_told_so(tokenizer, tmp_path):
    gate = GateBackend(tokenizer)
    with live_server(make_app(gate, tmp_path)) as url:
        backend = OpenAIBackend(
            tokenizer,
            url,
            model="tiny",
            api_key=KEY,
            context_window=4096,
            end_ids=[2],
            token_timeout=0.5,
        )
        pieces, start = [], time.monotonic()
        with pytest.raises(BackendTimeout) as e:
            for piece in backend.stream([1, 5], GenerationOptions(), [], threading.Event()):
                pieces.append(piece)
        assert pieces == ["first"] and time.monotonic() - start < 10
        assert isinstance(e.value, BackendError) and url in str(e.value)
        assert gate.cancelled.wait(10)  # the abandoned generation was stopped on the server


def test_failures_are_backend_errors_naming_the_server(
    local, served, tokenizer, tmp_path, monkeypatch
):
    url, _ = served
    backend = remote(local, url)
    assert backend.model_name == "tiny"  # asked /v1/models
    with pytest.raises(BackendError, match=r"HTTP 401.*invalid API key") as e:
        remote(local, url, api_key="wrong")
    assert url in str(e.value)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # never sent in place of a missing key
    with pytest.raises(BackendError, match="HTTP 401"):
        remote(local, url, api_key="")
    with pytest.raises(BackendError, match=r"HTTP 400.*over this server's limit"):
        "".join(
            backend.stream([1, 5], GenerationOptions(max_new_tokens=2000), [], threading.Event())
        )
    with pytest.raises(BackendError, match=r"HTTP 400.*vocabulary"):
        backend.generate([[1, 5], [1, 999]], GenerationOptions(max_new_tokens=2), [])
    with (
        live_server(make_app(GateBackend(tokenizer, fail_after_first=True), tmp_path)) as broken,
        pytest.raises(BackendError, match="internal error while generating"),
    ):
        list(remote(local, broken).stream([1], GenerationOptions(), [], threading.Event()))
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    for make in (
        lambda: remote(local, dead),
        lambda: list(
            remote(local, dead, model="m").stream([1], GenerationOptions(), [], threading.Event())
        ),
    ):
        with pytest.raises(BackendError, match="cannot reach") as e:
            make()
        assert f"{dead}/v1" in str(e.value)
    assert time.monotonic() - start < 5
    with pytest.raises(BackendError, match="http"):
        remote(local, "127.0.0.1:8000")


def test_urls_are_normalised(local, served):
    url, _ = served
    for written in (url, f"{url}/", f"{url}/v1", f"{url}/v1/"):
        assert remote(local, written).url == f"{url}/v1"


def _odd_server(kind: str):
    """A server whose /v1/completions answers 200 with something that is not a good stream."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()
    chunk = {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": "hi"}]}
    bodies = {
        "not json": "data: {not json\n\n",
        "no choices": 'data: {"id": "x"}\n\ndata: [DONE]\n\n',
        "cut off": f"data: {json.dumps(chunk)}\n\n",  # no finish_reason, no [DONE]
    }

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": []}

    @app.post("/v1/completions")
    def completions():
        if kind == "json":
            return JSONResponse({"choices": [{"text": "hi", "finish_reason": "stop"}]})
        return StreamingResponse(iter([bodies[kind]]), media_type="text/event-stream")

    return app


@pytest.mark.parametrize("kind", ["not json", "no choices", "cut off", "json"])
def test_a_malformed_stream_is_a_backend_error(tokenizer, kind):
    with live_server(_odd_server(kind)) as url:
        backend = OpenAIBackend(tokenizer, url, model="m", context_window=512, end_ids=[2])
        with pytest.raises(BackendError) as e:
            list(backend.stream([1, 2], GenerationOptions(), [], threading.Event()))
        assert url in str(e.value)
        with pytest.raises(BackendError, match="lists no model"):
            OpenAIBackend(tokenizer, url, context_window=512, end_ids=[2])


def test_options_mapping_uses_openai_names_then_vllms():
    greedy = completion_arguments(
        GenerationOptions(max_new_tokens=5, repetition_penalty=1.2),
        ["a", "b" * 65, "c", "d", "e", "f"],
        [2, 7],
    )
    assert greedy == {
        "max_tokens": 5,
        "temperature": 0.0,
        "stop": ["a", "c", "d", "e"],
        "extra_body": {"repetition_penalty": 1.2, "stop_token_ids": [2, 7]},
    }
    sampled = completion_arguments(
        GenerationOptions(do_sample=True, temperature=0.5, top_p=0.8, top_k=0, seed=9), [], [2]
    )
    assert sampled["temperature"] == 0.5 and sampled["top_p"] == 0.8 and sampled["seed"] == 9
    assert "top_k" not in sampled["extra_body"] and "stop" not in sampled  # 0 = off: not sent


def test_the_official_client_on_completions(local, served):
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    ids = ChatEngine(local).build_prompt([Message("user", "Hi")], GenerationOptions())[0]
    expected = "".join(
        local.stream(ids, GenerationOptions(max_new_tokens=6), [], threading.Event())
    )
    whole = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == "length" and whole.usage.prompt_tokens == len(ids)
    chunks = list(
        client.completions.create(
            model="tiny", prompt=ids, max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.total_tokens > 6
    text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=3)
    assert text.usage.prompt_tokens == len(
        local.tokenizer("Once upon", add_special_tokens=False)["input_ids"]
    )


def test_the_remote_module_needs_neither_torch_nor_transformers():
    code = (
        "import sys, chattune.backends.remote; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_chattune_in_front_of_a_failing_server_answers_502_and_504(tokenizer, tmp_path):
    """The front server's clients see a gateway error naming the cause, never a 500."""
    dead = f"http://127.0.0.1:{free_port()}"
    front = OpenAIBackend(tokenizer, dead, model="tiny", context_window=4096, end_ids=[2])
    client = TestClient(make_app(front, tmp_path, keys=()), "http://127.0.0.1")
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 502 and dead in answer.json()["error"]["message"]
    gate = GateBackend(tokenizer)
    with live_server(make_app(gate, tmp_path)) as url:
        slow = OpenAIBackend(tokenizer, url, model="tiny", api_key=KEY, context_window=4096,
                             end_ids=[2], token_timeout=0.5)  # fmt: skip
        client = TestClient(make_app(slow, tmp_path, keys=()), "http://127.0.0.1")
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "backend_timeout"
