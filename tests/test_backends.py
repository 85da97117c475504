"""One engine suite, run on every local backend: the same replies, stops, cancels and bytes.

Both backends run :func:`~tests.conftest.scripted_model_dir`'s model (transformers on its
folder, llama.cpp on its float32 GGUF export), whose greedy reply to any prompt is
:data:`~tests.conftest.SCRIPT`; so each test knows the exact text a backend must give.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from chattune.backends.registry import BackendSettings, open_backend
from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile
from chattune.data.types import Message
from chattune.model.generation import GenerationOptions
from tests.conftest import SCRIPT

HELLO = [Message("user", "Hello there!")]


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def backend(request: pytest.FixtureRequest, scripted_model_dir) -> Iterator:
    if request.param == "transformers":
        yield open_backend(str(scripted_model_dir), BackendSettings(name="transformers"))
        return
    gguf = request.getfixturevalue("scripted_gguf")
    llama = open_backend(str(gguf), BackendSettings(name="llama.cpp", slots=4, context=512))
    yield llama
    llama.close()


def test_the_greedy_reply_is_the_script_streamed_and_batched(backend) -> None:
    engine = ChatEngine(backend, BotProfile(system_prompt="You are Pine."))
    pieces = list(engine.stream(HELLO))
    assert "".join(pieces) == SCRIPT
    assert all("\ufffd" not in p for p in pieces)  # no piece ends inside "Ç" or "☕"
    many = [HELLO, [Message("user", "Where is my order?")], [Message("user", "é")]]
    assert [g.text for g in engine.generate(many)] == [SCRIPT] * 3
    assert all(g.stopped and g.n_tokens == 16 for g in engine.generate(many))


def test_max_new_tokens_ends_the_reply_unfinished(backend) -> None:
    engine = ChatEngine(backend)
    options = GenerationOptions(max_new_tokens=5)
    [short] = engine.generate([HELLO], options)
    assert not short.stopped and short.n_tokens == 5
    assert SCRIPT.startswith(short.text) and len(short.text) < len(SCRIPT)
    assert "".join(engine.stream(HELLO, options)) == short.text


def test_a_stop_string_ends_the_reply_before_it(backend) -> None:
    engine = ChatEngine(backend, BotProfile(stop=["Café"]))
    assert engine.reply(HELLO) == "Ça va?"
    [batched] = engine.generate([HELLO])
    assert batched.text == "Ça va?" and batched.stopped and batched.n_tokens < 16


def test_every_end_of_turn_id_ends_the_reply(backend) -> None:
    """A model may declare several ends (Llama 3's <|eot_id|>, Gemma's <end_of_turn>)."""
    tokenizer = backend.tokenizer
    ids = tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
    cafe = next(i for i in ids if tokenizer.decode([i]) == " dé")  # of "déjà": now an end
    backend.end_ids.append(cafe)
    try:
        engine = ChatEngine(backend)
        assert engine.reply(HELLO) == "Ça va? Café ☕"
        [g] = engine.generate([HELLO])
        assert g.text == "Ça va? Café ☕" and g.stopped
    finally:
        backend.end_ids.remove(cafe)


def test_cancel_ends_the_stream_and_the_backend_goes_on(backend) -> None:
    cancel = threading.Event()
    got = []
    for piece in backend.stream(_prompt(backend), GenerationOptions(), [], cancel):
        got.append(piece)
        cancel.set()
    assert len(got) == 1 and SCRIPT.startswith(got[0])
    assert ChatEngine(backend).reply(HELLO) == SCRIPT  # nothing left over from the cancel


def test_a_consumer_that_stops_reading_frees_the_backend(backend) -> None:
    stream = backend.stream(_prompt(backend), GenerationOptions(), [], threading.Event())
    assert SCRIPT.startswith(next(stream))
    stream.close()  # what a server does when its client goes away
    assert ChatEngine(backend).reply(HELLO) == SCRIPT


def test_seeded_sampling_is_reproducible_and_seeds_differ(backend) -> None:
    engine = ChatEngine(backend)

    def sample(seed: int) -> str:
        options = GenerationOptions(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                    seed=seed, max_new_tokens=24)  # fmt: skip
        return engine.generate([HELLO], options)[0].text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1
    # sampling is not greedy here: p(next) ~ 0.77 a token, 24 tokens
    assert any(sample(seed) != SCRIPT for seed in range(4))


def test_concurrent_streams_each_get_their_own_reply(backend) -> None:
    engine = ChatEngine(backend)
    replies: dict[int, str] = {}

    def chat(i: int) -> None:
        stop = ["déjà"] if i % 2 else []
        replies[i] = "".join(engine.stream(HELLO, stop=stop)).strip()

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == {0: SCRIPT, 1: "Ça va? Café ☕", 2: SCRIPT, 3: "Ça va? Café ☕"}


def _prompt(backend) -> list[int]:
    from chattune.data.render import generation_prompt_ids

    return generation_prompt_ids(backend.tokenizer, HELLO)


def test_eval_generates_with_llama_cpp_and_scores_perplexity_with_transformers(
    scripted_model_dir, scripted_gguf, tmp_path
) -> None:
    import json

    from tests.conftest import run_cli, write_jsonl

    turns = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": SCRIPT}]
    data = write_jsonl(tmp_path / "test.jsonl", [{"messages": turns}])
    results = {}
    for model in (scripted_gguf, scripted_model_dir):
        out = tmp_path / f"{model.name}.json"
        done = run_cli("eval", "--model", str(model), "--data", str(data), "--json", str(out),
                       "--per-example", "--bootstrap", "0")  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[json.loads(out.read_text())["backend"]] = json.loads(out.read_text())
    gguf, folder = results["llama.cpp"], results["transformers"]  # .gguf: llama.cpp, by default
    assert gguf["per_example"][0]["reply"] == folder["per_example"][0]["reply"] == SCRIPT
    assert gguf["metrics"]["bleu"] == pytest.approx(100.0)
    # perplexity is transformers' on both: the float32 GGUF's weights are the folder's
    assert gguf["metrics"]["perplexity"] == pytest.approx(folder["metrics"]["perplexity"])


def test_every_sampling_setting_reaches_the_backend(backend) -> None:
    """top-k 1 and a tiny top-p leave only the likeliest token (greedy's); a strong
    repetition penalty on a prompt that holds the whole script moves the reply off it."""
    engine = ChatEngine(backend)
    greedy = engine.reply(HELLO)
    for cut in ({"top_k": 1, "top_p": 1.0}, {"top_k": 0, "top_p": 0.01}):
        options = GenerationOptions(do_sample=True, temperature=1.0, seed=5, **cut)
        assert engine.reply(HELLO, options=options) == greedy == SCRIPT
    echo = [Message("user", SCRIPT)]
    assert engine.reply(echo, options=GenerationOptions(repetition_penalty=1.2)) == SCRIPT
    penalised = engine.reply(echo, options=GenerationOptions(repetition_penalty=100.0))
    assert penalised != SCRIPT  # 12 / 100 is under the other tokens' logits
