"""What every generation backend implements.

Token ids in, text pieces out: the engine owns the chat template, the history budget and
stop strings shown to users, so a backend needs to know nothing about conversations. Each
method must end (return or raise) on its own; ``cancel`` stops a stream at the next token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from chattune.errors import ChattuneError
from chattune.model.generation import Generated, GenerationOptions


class BackendError(ChattuneError):
    """A backend refused or failed one request (a bad prompt, an unreachable server, a
    crashed worker); other requests go on."""


class BackendTimeout(BackendError):
    """The backend produced no token for ``token_timeout`` seconds: generation is abandoned."""


class BackendCrashed(BackendError):
    """The process generating the reply died (native code crashed, the OOM killer); the next
    request starts a new one."""


class Backend(Protocol):
    """Generates text for prompts given as token ids.

    Attributes:
        name: what ``--backend`` calls it (``/v1/models`` and eval results show it).
        tokenizer: the model's tokenizer (its chat template renders the prompts).
        context_window: prompt plus reply must fit in this many tokens.
        end_ids: every token id that ends a turn (the model's generation config lists
            several for Llama 3, Gemma, ...; the chat template's end-of-turn token too).
    """

    name: str
    tokenizer: Any
    context_window: int
    end_ids: list[int]

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        """Yield the reply's text in pieces; stop at an end id, a stop string, max tokens
        or ``cancel``."""
        ...

    def generate(
        self, prompts: list[list[int]], options: GenerationOptions, stop: list[str]
    ) -> list[Generated]:
        """Whole replies for several prompts at once (evaluation, side-by-side views)."""
        ...

    def close(self) -> None:
        """Give back what the backend holds beyond memory (a worker process, connections)."""
        ...
