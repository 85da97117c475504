"""Streams never cut a character: Chinese text and an emoji over tokens that hold half of one.

SmolLM2's byte-level BPE vocabulary spells many Chinese characters, and every emoji, with two
or three tokens, each a piece of the character's UTF-8 bytes: '我' is 'æĪ' + 'ĳ', '😀' is
'ðŁ' + 'ĺ' + 'Ģ'. The model here answers every chat prompt with :data:`ZH` by construction
(as conftest's scripted model answers with its SCRIPT), so every backend, and chattune's
server and the remote backend on top of it, must stream exactly that text: no delta with
U+FFFD, no delta that is not whole characters, the deltas joined equal to the batched
reply. Stop strings next to CJK punctuation and characters (``。``, ``用户：``, ``\\n用户``, one
whose characters are cut across tokens) end the reply, streamed and batched alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chattune.backends.registry import BackendSettings, open_backend
from chattune.backends.remote import OpenAIBackend
from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile
from chattune.data.render import generation_prompt_ids
from chattune.data.types import Message
from chattune.model.generation import GenerationOptions
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import live_server, save_scripted_llama

KEY = "sk-zh"

#: The reply, as a model runs on into the next user turn (what ``用户：`` is there to stop).
#: Cut across tokens: 我 ('æĪ' 'ĳ'), 们 ('ä»' '¬'), 拿 ('æĭ' '¿'), 😀 ('ðŁ' 'ĺ' 'Ģ': 2 + 1 + 1
#: bytes), 请 ('è¯' '·') and 问 ('éĹ' '®'); every other character is one token, and ``\n\n``
#: is the one token 'ĊĊ', so the stop string ``\n用户`` begins inside a token.
ZH = "是的，我们到加拿大。😀\n\n用户：请问"
HELLO = [Message("user", "你好！")]


def reply_tokens(tokenizer) -> list[int]:
    """:data:`ZH` as the model emits it: ``\\n\\n`` as the one token 'ĊĊ' (the tokenizer
    itself would write 'Ċ' twice, and 'Ċ' already ends the prompt)."""
    ids = tokenizer("是的，我们到加拿大。😀", add_special_tokens=False)["input_ids"]
    tail = tokenizer("用户：请问", add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.convert_tokens_to_ids("ĊĊ"), *tail]


@pytest.fixture(scope="module")
def zh_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    folder = tmp_path_factory.mktemp("zh-llama")
    return save_scripted_llama(tokenizer, reply_tokens(tokenizer), folder)


@pytest.fixture(scope="module")
def zh_gguf(tmp_path_factory: pytest.TempPathFactory, zh_model_dir: Path) -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make setup")
    from chattune.model.export import export_model

    out = tmp_path_factory.mktemp("zh-gguf") / "zh.gguf"
    return export_model(str(zh_model_dir), "gguf", out, quant="f32")


@pytest.fixture(scope="module")
def zh_local(zh_model_dir: Path):
    return open_backend(str(zh_model_dir), BackendSettings(name="transformers"))


@pytest.fixture(scope="module", params=["transformers", "llama.cpp", "openai"])
def backend(request: pytest.FixtureRequest, zh_local) -> Iterator:
    """Each backend on the model: transformers; llama.cpp on its GGUF export; the remote
    backend on a chattune server (127.0.0.1) that runs the transformers one, so what it
    receives are the server's streamed deltas, whole strings in JSON."""
    if request.param == "transformers":
        yield zh_local
    elif request.param == "llama.cpp":
        gguf = request.getfixturevalue("zh_gguf")
        llama = open_backend(str(gguf), BackendSettings(name="llama.cpp", slots=2, context=256))
        yield llama
        llama.close()
    else:
        store = Store(str(request.getfixturevalue("tmp_path_factory").mktemp("zh") / "s.db"))
        app = build_app(ChatEngine(zh_local), store, "zh", [KEY])
        with live_server(app) as url:
            remote = OpenAIBackend(zh_local.tokenizer, url, api_key=KEY,
                                   context_window=zh_local.context_window,
                                   end_ids=zh_local.end_ids)  # fmt: skip
            yield remote
            remote.close()


def whole_characters(pieces: list[str]) -> None:
    """Every piece is whole characters: no U+FFFD, no lone surrogate (so UTF-8 encodes it)."""
    for piece in pieces:
        assert "\ufffd" not in piece, pieces
        piece.encode("utf-8")  # raises on a lone surrogate


def prompt_of(backend) -> list[int]:
    return generation_prompt_ids(backend.tokenizer, HELLO)


def test_every_delta_is_whole_characters_and_they_join_to_the_reply(backend) -> None:
    pieces = list(backend.stream(prompt_of(backend), GenerationOptions(), [], threading.Event()))
    whole_characters(pieces)
    assert "".join(pieces) == ZH and len(pieces) > 3  # streamed, not given at once
    [batched] = backend.generate([prompt_of(backend)], GenerationOptions(), [])
    assert batched.text == ZH and batched.stopped
    engine = ChatEngine(backend)
    streamed = list(engine.stream(HELLO))
    whole_characters(streamed)
    assert "".join(streamed) == ZH == engine.generate([HELLO])[0].text


#: Replies that ``max_new_tokens`` ends inside a character: they end before it.
CUT = {
    4: "是的，",  # and the first of 我's two tokens
    5: "是的，我",
    14: "是的，我们到加拿大。",  # and 2 of 😀's 4 bytes
    15: "是的，我们到加拿大。",  # and 3 of them
    16: "是的，我们到加拿大。😀",
}


@pytest.mark.parametrize("n", sorted(CUT))
def test_a_reply_cut_inside_a_character_ends_before_it(backend, n: int) -> None:
    options = GenerationOptions(max_new_tokens=n)
    pieces = list(backend.stream(prompt_of(backend), options, [], threading.Event()))
    whole_characters(pieces)
    assert "".join(pieces) == CUT[n]
    [batched] = backend.generate([prompt_of(backend)], options, [])
    assert batched.text == CUT[n]
    if backend.name != "openai":  # chattune's server counts the reply's text tokenized again
        assert batched.n_tokens == n and not batched.stopped


#: Stop strings next to CJK text: full-width punctuation, the next user turn, one that
#: begins inside the token '\n\n', ones whose characters are cut across tokens.
STOPS = ["。", "用户：", "\n用户", "拿大", "😀", "：请"]


@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_string_next_to_cjk_ends_the_reply_before_it(backend, stop: str) -> None:
    before = ZH[: ZH.index(stop)]
    engine = ChatEngine(backend, BotProfile(stop=[stop]))
    pieces = list(engine.stream(HELLO))
    whole_characters(pieces)
    assert "".join(pieces) == before
    assert "".join(ChatEngine(backend).stream(HELLO, stop=[stop])) == before  # a request's own
    [batched] = engine.generate([HELLO])
    assert batched.text == before.strip() and batched.stopped
    if backend.name != "openai":  # the backend stopped at the stop string, not the engine
        assert batched.n_tokens == tokens_until(backend.tokenizer, stop)


def tokens_until(tokenizer, stop: str) -> int:
    """How many of the reply's tokens it takes to complete ``stop``."""
    ids = reply_tokens(tokenizer)
    return next(n for n in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:n]))


def _whole_string_server(deltas: list[str]):
    """An OpenAI-compatible server that streams ``deltas`` as given, whole strings as every
    server must send them (a JSON string holds characters, not bytes), and ignores ``stop``:
    the stop strings are the engine's to cut."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    def event(text: str, finish: str | None = None) -> str:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        chunk = {"id": "x", "object": "text_completion", "choices": [choice]}
        return f"data: {json.dumps(chunk)}\n\n"

    @app.post("/v1/completions")
    def completions() -> StreamingResponse:
        events = [*map(event, deltas), event("", "stop"), "data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    return app


def test_a_stop_string_split_across_remote_deltas_is_never_shown(tokenizer) -> None:
    """The remote backend sees strings, never bytes: a server holds a cut character back
    (vLLM and llama.cpp's server do, chattune's too), or it has already lost it to U+FFFD.
    What the backend must do is keep every stop string out of the stream however the
    server's deltas split it: the engine holds back a delta's end that could begin one."""
    deltas = ["是的，我们到加拿大。😀\n", "\n用", "户", "：请问"]
    with live_server(_whole_string_server(deltas)) as url:
        backend = OpenAIBackend(tokenizer, url, model="m", context_window=512, end_ids=[2])
        engine = ChatEngine(backend, BotProfile(stop=["\n用户"]))
        assert "".join(deltas) == ZH
        assert "".join(engine.stream(HELLO)) == "是的，我们到加拿大。😀\n"  # "\n\n用户" has it
        assert engine.generate([HELLO])[0].text == "是的，我们到加拿大。😀"
        assert ChatEngine(backend, BotProfile(stop=["。"])).reply(HELLO) == "是的，我们到加拿大"
        backend.close()


JA_KO = [
    "ありがとうございます。またどうぞ。",
    "はい、カナダへ発送します！",
    "네, 캐나다로 배송합니다.",
]


@pytest.mark.parametrize("text", JA_KO, ids=["kana", "kana-and-han", "hangul"])
def test_kana_and_hangul_stream_as_they_come_not_at_the_end(smollm2_tokenizer_dir, text) -> None:
    """TextIteratorStreamer releases text at spaces, newlines and ideographs only: an
    all-kana reply would wait whole until its end. Every piece must still be whole
    characters, and the pieces must start arriving before the last token."""
    import torch
    from transformers import AutoTokenizer

    from chattune.backends.transformers import reply_streamer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    streamer = reply_streamer(tokenizer, [], timeout=5)
    streamer.put(torch.tensor([[1]]))  # the prompt, skipped
    before_end = []
    for token in ids[:-1]:
        streamer.put(torch.tensor([token]))
        while not streamer.text_queue.empty():
            before_end.append(streamer.text_queue.get_nowait())
    streamer.put(torch.tensor([ids[-1]]))
    streamer.end()
    pieces = [*before_end, *streamer]
    assert "".join(pieces) == text
    whole_characters([p for p in pieces if p])
    released = "".join(before_end)
    assert len(released) >= len(text) // 2, released  # not held back until the end
