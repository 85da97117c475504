"""Shared fixtures: a tiny random Llama with a real tokenizer, and small data files.

Nothing is downloaded: the model is built from a config with a fixed seed and saved next to
the tokenizer shipped in tests/assets, giving a Hugging Face folder that ``--base`` accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository: tests never depend on the CWD
ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "tiny-tokenizer"

FACTS = [
    ("How long do I have to return an item?", "You have 45 days to return any item."),
    ("Is shipping free?", "Shipping is free on orders over $60."),
    ("Where is my order?", "Your tracking number is in the confirmation email."),
    ("Can I change my address?", "Of course, what is the new address?"),
]


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Converted models, tokenizers and exports go to a folder of the test session's own
    (``$CHATTUNE_CACHE``), never the user's cache: each session's temporary GGUF files would
    otherwise leave their conversions behind there."""
    folder = tmp_path_factory.mktemp("chattune-cache")
    before = os.environ.get("CHATTUNE_CACHE")
    os.environ["CHATTUNE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("CHATTUNE_CACHE", None)
    else:
        os.environ["CHATTUNE_CACHE"] = before


def conversation(i: int, system: bool = False) -> dict:
    q, a = FACTS[i % len(FACTS)]
    messages = [{"role": "system", "content": "You are a support agent."}] if system else []
    messages += [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_llama(folder: Path, initializer_range: float = 0.02) -> Path:
    """Save a 2-layer, 32-wide random Llama (about 40k parameters) with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=initializer_range,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama, initialised as transformers does: training tests start here
    (it answers every prompt with the same newlines until trained)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a wider initialisation, whose greedy reply depends on the
    prompt (and on an adapter): replies that match are evidence, not a coincidence."""
    return tiny_llama(tmp_path_factory.mktemp("lively-llama"), initializer_range=0.3)


#: What :func:`scripted_model_dir`'s model answers to every chat prompt, greedily: unique
#: tokens, with "Ç" and "☕" split across byte-level tokens (a stream must not cut them).
SCRIPT = "Ça va? Café ☕ déjà vu!"


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer, from the embedded model: llama.cpp's converter knows it (its
    pre-tokenizer is registered), which the tiny test tokenizer is not."""
    from chattune.model.loading import embedded_gguf, gguf_tokenizer

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    gguf_tokenizer(embedded_gguf("smollm2-135m-instruct")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir) -> Path:
    """A 2-layer Llama (SmolLM2's vocabulary) whose greedy reply to any chat prompt is
    :data:`SCRIPT`, then ``<|im_end|>``, by construction, so every backend must give it.

    Attention and MLP outputs are zero, so each position's hidden state is its token's
    embedding: token ``t`` is a one-hot direction whose output row is the next token of the
    script. The margin (12 logits) makes greedy decoding immune to float16 rounding and
    leaves sampling at temperature 1 free to wander (p(next) ~ 0.77).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    reply = tok(SCRIPT, add_special_tokens=False)["input_ids"]
    return save_scripted_llama(tok, reply, tmp_path_factory.mktemp("scripted-llama"))


def save_scripted_llama(tok: Any, reply: list[int], folder: Path) -> Path:
    """Save into ``folder`` the Llama of :func:`scripted_model_dir`, answering ``reply``
    (token ids, each used once) to any chat prompt, then ``<|im_end|>``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    chain = [tok.convert_tokens_to_ids("Ċ"), *reply]
    assert len(set(chain)) == len(chain), "each scripted token must be unique"
    nxt = [*chain[1:], tok.convert_tokens_to_ids("<|im_end|>")]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        for slot, (token, following) in enumerate(zip(chain, nxt, strict=True)):
            embed[token] = 0.0
            embed[token, slot] = 1.0  # RMSNorm makes this sqrt(256) = 16 at ``slot``
            head[following, :] = 0.0
            head[following, slot] = 12 / 16
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def scripted_gguf(tmp_path_factory: pytest.TempPathFactory, scripted_model_dir: Path) -> Path:
    """:func:`scripted_model_dir` exported by ``chattune export`` as a float32 GGUF file."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make setup")
    from chattune.model.export import export_model

    out = tmp_path_factory.mktemp("scripted-gguf") / "scripted.gguf"
    return export_model(str(scripted_model_dir), "gguf", out, quant="f32")


@pytest.fixture(scope="session")
def tokenizer():
    from chattune.model.loading import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture
def chat_files(tmp_path: Path) -> tuple[Path, Path]:
    """(train.jsonl with 16 conversations, val.jsonl with 4)."""
    train = write_jsonl(tmp_path / "train.jsonl", [conversation(i, i % 2 == 0) for i in range(16)])
    val = write_jsonl(tmp_path / "val.jsonl", [conversation(i) for i in range(4)])
    return train, val


class FakeBackend:
    """A generation backend that streams fixed pieces and records the prompts it was given.

    Implements the whole :class:`chattune.backends.base.Backend` protocol, so the chat
    engine, the server and evaluation run on it without a model.
    """

    name = "fake"

    def __init__(self, tokenizer, pieces: list[str], context_window: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.pieces = pieces
        self.context_window = context_window
        self.end_ids = [tokenizer.eos_token_id]
        self.prompts: list[list[int]] = []

    def stream(self, prompt_ids, options, stop, cancel):
        self.prompts.append(prompt_ids)
        for p in self.pieces:
            if cancel.is_set():
                return
            yield p

    def close(self) -> None:
        pass

    def generate(self, prompts, options, stop):
        from chattune.model.generation import Generated

        self.prompts += prompts
        text = "".join(self.pieces)
        return [Generated(text, True, len(self.pieces)) for _ in prompts]


class GateBackend(FakeBackend):
    """Yields one piece, then waits until released or cancelled; counts what happened.

    No sleeps: tests wait on its events, so "in flight" means in flight.
    """

    def __init__(self, tokenizer, fail_after_first: bool = False) -> None:
        super().__init__(tokenizer, [])
        self.started, self.release, self.cancelled = (threading.Event() for _ in range(3))
        self.fail_after_first = fail_after_first
        self.calls = 0

    def stream(self, prompt_ids, options, stop, cancel):
        self.calls += 1
        yield "first"
        self.started.set()
        if self.fail_after_first:
            raise RuntimeError("the model broke")
        while not self.release.wait(0.01):
            if cancel.is_set():
                self.cancelled.set()
                return
        yield " last"


def wait_until(condition, limit: float = 30.0) -> bool:
    """Wait (bounded, polling every 10 ms) for a state a server reaches on its own: a
    bound, not a guess at timing. True if it was reached within ``limit`` seconds."""
    import time

    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m chattune.cli ARGS`` as a user would; capture its text output."""
    return subprocess.run(
        [sys.executable, "-m", "chattune.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **kw,
    )


def train_args(model_dir: Path, chat_files: tuple[Path, Path], out: Path) -> list[str]:
    """``chattune train`` on the tiny model and the small chat files, into ``out``."""
    train, val = chat_files
    return ["train", "--data", str(train), "--val-data", str(val), "--base", str(model_dir),
            "--output", str(out)]  # fmt: skip


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL.

    The server stops by itself when the block ends (``should_exit``), so no test needs a
    manually launched server or a kill script.
    """
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    ``CHATTUNE_TEST_PG_URL`` names a database on a server where that role may create
    databases (``.ci/run`` starts one). Without it the test skips, except in CI, where it
    fails: CI must never silently skip the PostgreSQL half of the store tests.
    """
    import uuid

    from sqlalchemy import create_engine, make_url, text

    admin_url = os.environ.get("CHATTUNE_TEST_PG_URL")
    if not admin_url:
        if os.environ.get("CI"):
            pytest.fail("CHATTUNE_TEST_PG_URL is unset: .ci/run must start PostgreSQL")
        pytest.skip("CHATTUNE_TEST_PG_URL is unset (a PostgreSQL URL; see .ci/run)")
    name = f"chattune_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it
    with admin.connect() as con:
        con.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as con:  # FORCE: ends connections a test (or a killed server) left
            con.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once for SQLite (a file in tmp_path) and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    return request.getfixturevalue("postgres_url")
