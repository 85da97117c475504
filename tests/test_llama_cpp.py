"""What only the llama.cpp backend does: KV cache reuse, batching, a worker that can die,
every quantization ``chattune export`` offers, and its refusals.

The engine behaviour both local backends share is in test_backends.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest

from chattune.backends.base import BackendCrashed, BackendError, BackendTimeout
from chattune.backends.registry import BackendSettings, open_backend
from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile
from chattune.data.render import generation_prompt_ids
from chattune.data.types import Message
from chattune.errors import ModelError
from chattune.model.generation import GenerationOptions
from tests.conftest import SCRIPT

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make setup")

from chattune.backends.llama_cpp import LlamaCppBackend, WorkerSettings

#: Sampling that leaves the script after a few tokens and rarely meets an end: long replies.
WANDER = GenerationOptions(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           max_new_tokens=400)  # fmt: skip


def llama(gguf: Path, slots: int = 2) -> LlamaCppBackend:
    return open_backend(str(gguf), BackendSettings(name="llama.cpp", slots=slots, context=512))


def turn(history: list[Message], engine: ChatEngine, question: str) -> list[Message]:
    history = [*history, Message("user", question)]
    return [*history, Message("assistant", engine.reply(history))]


def test_the_next_turn_prefills_only_its_new_tokens(scripted_gguf) -> None:
    backend = llama(scripted_gguf, slots=2)
    try:
        engine = ChatEngine(backend, BotProfile(system_prompt="You are Pine. " * 20))
        one = turn([], engine, "Do you ship to Canada?")
        first_prompt, prefilled = backend.last_prefill
        assert prefilled == first_prompt  # nothing cached yet
        two = turn(one, engine, "How long does it take?")
        second_prompt, prefilled = backend.last_prefill
        # the first prompt and its reply are cached: only the reply's end and the new
        # question are prefilled (a handful of tokens instead of the whole history)
        assert second_prompt > first_prompt + 10 and prefilled < second_prompt - first_prompt
        # a second conversation takes the other slot: it does not evict the first's cache
        turn([], engine, "Hello, who are you?")
        assert backend.last_prefill[1] == backend.last_prefill[0]
        turn(two, engine, "And to Mexico?")
        third_prompt, prefilled = backend.last_prefill
        assert prefilled < third_prompt - second_prompt
    finally:
        backend.close()


def test_concurrent_conversations_are_decoded_in_one_batch(scripted_gguf) -> None:
    backend = llama(scripted_gguf, slots=4)
    try:
        prompt = generation_prompt_ids(backend.tokenizer, [Message("user", "Hello!")])
        started = threading.Barrier(4)
        replies: list[str] = []

        def run() -> None:
            started.wait(30)
            replies.append("".join(backend.stream(prompt, WANDER, [], threading.Event())))

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(replies) == 4 and all(replies)
        assert backend._worker.max_batch == 4  # one llama_decode carried all four
    finally:
        backend.close()


def test_a_cancelled_request_leaves_its_slot_before_the_next_one_comes(scripted_gguf) -> None:
    """Cancels reach the worker ahead of the next request: had the long reply gone on, the
    next one would have been decoded beside it (two sequences in a batch)."""
    backend = llama(scripted_gguf, slots=2)
    try:
        prompt = generation_prompt_ids(backend.tokenizer, [Message("user", "Hello!")])
        cancel = threading.Event()
        for _ in backend.stream(prompt, WANDER, [], cancel):
            cancel.set()
        stream = backend.stream(prompt, WANDER, [], threading.Event())
        next(stream)
        stream.close()  # a consumer that stops reading
        assert ChatEngine(backend).reply([Message("user", "Hi")]) == SCRIPT
        assert backend._worker.max_batch == 1
    finally:
        backend.close()


def test_a_hung_worker_times_out_is_killed_and_replaced(scripted_gguf) -> None:
    backend = open_backend(str(scripted_gguf), BackendSettings(
        name="llama.cpp", slots=1, context=512, token_timeout=1.0))  # fmt: skip
    try:
        prompt = generation_prompt_ids(backend.tokenizer, [Message("user", "Hello!")])
        pid = backend.worker_pid
        os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
        with pytest.raises(BackendTimeout):
            list(backend.stream(prompt, GenerationOptions(), [], threading.Event()))
        assert ChatEngine(backend).reply([Message("user", "Hi")]) == SCRIPT
        assert backend.worker_pid != pid
    finally:
        backend.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV])
def test_a_dead_worker_fails_its_requests_and_the_next_one_restarts_it(
    scripted_gguf, how: signal.Signals
) -> None:
    backend = llama(scripted_gguf)
    try:
        prompt = generation_prompt_ids(backend.tokenizer, [Message("user", "Hello!")])
        stream = backend.stream(prompt, WANDER, [], threading.Event())
        next(stream)
        pid = backend.worker_pid
        os.kill(pid, signal.SIGSTOP)  # it cannot finish the reply before it dies
        os.kill(pid, how)
        # A stopped process only acts on SIGKILL and SIGCONT: a SIGSEGV stays pending
        # while it is stopped, and the worker would hang instead of dying. SIGCONT
        # delivers the pending signal before the worker runs another instruction.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        with pytest.raises(BackendCrashed, match="died"):
            list(stream)
        assert ChatEngine(backend).reply([Message("user", "Hi")]) == SCRIPT
        assert backend.worker_pid != pid
    finally:
        backend.close()


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0", "q4_k_m"])
def test_every_quantization_loads_and_answers(
    quant: str, scripted_model_dir, tmp_path: Path
) -> None:
    """The build's CPU kernels for each type run (a GGML_NATIVE build on an AMX Xeon
    segfaulted on Q8_0 / Q4_1), and the scripted reply survives the rounding."""
    from chattune.model.export import export_model

    gguf = export_model(str(scripted_model_dir), "gguf", tmp_path / f"s-{quant}.gguf", quant)
    backend = llama(gguf)
    try:
        assert ChatEngine(backend).reply([Message("user", "Hello!")]) == SCRIPT
    finally:
        backend.close()


def test_refusals_are_clear_errors_and_the_worker_goes_on(scripted_gguf) -> None:
    backend = llama(scripted_gguf)
    try:
        go = threading.Event()
        with pytest.raises(BackendError, match="does not fit the 512-token context"):
            list(backend.stream([5] * 600, GenerationOptions(), [], go))
        with pytest.raises(BackendError, match="token ids outside"):
            list(backend.stream([5, 10**7], GenerationOptions(), [], go))
        assert ChatEngine(backend).reply([Message("user", "Hi")]) == SCRIPT
        assert 2 in backend.end_ids  # <|im_end|>: the template's and the GGUF's end of turn
    finally:
        backend.close()


def test_a_file_llama_cpp_cannot_load_is_a_model_error(tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="did not start"):
        LlamaCppBackend(bad, tokenizer, WorkerSettings(start_timeout=60))
