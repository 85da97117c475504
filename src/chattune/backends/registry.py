"""Which backend generates a model's tokens (``--backend``), and how to open it.

=============  ===============================================================  =========
name           what runs the model                                              model spec
=============  ===============================================================  =========
transformers   ``model.generate`` in this process (PyTorch, float32)            any
llama.cpp      llama-cpp-python in a worker process: GGUF, KV cache reuse       any [#]_
               across turns, ``slots`` conversations batched together
openai         any OpenAI-compatible server at ``url`` (vLLM, llama.cpp's       any [#]_
               server, another chattune): prompts are sent as token ids
auto           llama.cpp for a ``.gguf`` file (when installed), else
               transformers
=============  ===============================================================  =========

.. [#] a run or Hugging Face folder is exported to GGUF once (``quant``) and cached.
.. [#] only its tokenizer and context length are read here; the server has the weights.

Example:
    >>> backend_name("runs/mybot", BackendSettings())  # doctest: +SKIP
    'transformers'
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import Field

from chattune.backends.base import Backend
from chattune.config import Section
from chattune.errors import ConfigError
from chattune.model.gguf import Quant

Name = Literal["auto", "transformers", "llama.cpp", "openai"]


def _key_from_environment() -> str:
    return os.environ.get("CHATTUNE_BACKEND_API_KEY", "")


class BackendSettings(Section):
    """The ``backend`` section of every command that talks (chat, serve, generate, eval,
    rate)."""

    name: Name = Field("auto", description="transformers, llama.cpp, openai, or auto")
    url: str | None = Field(None, description="openai: the server's base URL (.../v1)")
    remote_model: str | None = Field(
        None, description="openai: the model's name on that server (default: its first)"
    )
    api_key: str = Field(
        default_factory=_key_from_environment,
        description="openai: the server's key (default: $CHATTUNE_BACKEND_API_KEY)",
    )
    prompt_format: Literal["ids", "text"] = Field(
        "ids", description="openai: send prompts as token ids, or as text (TGI)"
    )
    slots: int = Field(4, ge=1, le=64, description="llama.cpp: conversations decoded together")
    context: int = Field(
        4096, ge=64, description="tokens per conversation (at most the model's; llama.cpp, openai)"
    )
    threads: int = Field(0, ge=0, description="llama.cpp: CPU threads (0: every core)")
    quant: Quant = Field(
        "q8_0", description="llama.cpp: quantization when a folder is exported to GGUF"
    )
    token_timeout: float = Field(
        120.0, gt=0, description="seconds without a token before generation is abandoned"
    )


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def backend_name(spec: str, settings: BackendSettings) -> str:
    """The backend ``settings.name`` means for model ``spec`` (resolves ``auto``)."""
    if settings.name != "auto":
        return settings.name
    from chattune.model.loading import resolve

    gguf_file = resolve(spec)[0] == "gguf"
    return "llama.cpp" if gguf_file and llama_cpp_installed() else "transformers"


def check(spec: str, settings: BackendSettings) -> None:
    """Fail now (in a second, naming the flag) for what would fail after a slow load."""
    from chattune.model.loading import resolve

    resolve(spec)
    name = backend_name(spec, settings)
    if name == "openai" and not settings.url:
        raise ConfigError("--backend openai needs --backend-url (the server's .../v1 URL)")
    if name == "llama.cpp" and not llama_cpp_installed():
        raise ConfigError(
            "--backend llama.cpp: llama-cpp-python is not installed; run "
            "scripts/install-llama-cpp.sh .venv (make setup does)"
        )


def open_backend(spec: str, settings: BackendSettings | None = None) -> Backend:
    """The backend that generates for model ``spec`` (loads it: seconds to minutes)."""
    settings = settings or BackendSettings()
    check(spec, settings)
    name = backend_name(spec, settings)
    if name == "transformers":
        return _transformers(spec, settings)
    if name == "llama.cpp":
        return _llama_cpp(spec, settings)
    return _openai(spec, settings)


def _transformers(spec: str, settings: BackendSettings) -> Any:
    from chattune.backends.transformers import TransformersBackend
    from chattune.model.loading import load_model

    return TransformersBackend(*load_model(spec), token_timeout=settings.token_timeout)


def _llama_cpp(spec: str, settings: BackendSettings) -> Any:
    from chattune.backends.llama_cpp import LlamaCppBackend, WorkerSettings, start_worker
    from chattune.model.export import cached_gguf
    from chattune.model.loading import tokenizer_for

    gguf = cached_gguf(spec, settings.quant)
    run = WorkerSettings(slots=settings.slots, context=settings.context, threads=settings.threads)
    worker = start_worker(gguf, run)  # the model loads in the worker while ...
    tokenizer = tokenizer_for(spec)  # ... transformers and the tokenizer load here
    return LlamaCppBackend(gguf, tokenizer, run, settings.token_timeout, worker=worker)


def _openai(spec: str, settings: BackendSettings) -> Any:
    from chattune.backends.remote import OpenAIBackend
    from chattune.model.generation import end_of_turn_ids
    from chattune.model.loading import context_length_for, tokenizer_for

    tokenizer = tokenizer_for(spec)
    context = min(settings.context, context_length_for(spec))
    return OpenAIBackend(
        tokenizer,
        str(settings.url),
        model=settings.remote_model,
        api_key=settings.api_key,
        context_window=context,
        end_ids=end_of_turn_ids(tokenizer),
        prompt_format=settings.prompt_format,
        token_timeout=settings.token_timeout,
    )
