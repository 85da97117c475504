"""``chattune chat``: talk to a model in the terminal, or answer lines piped in."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from pydantic import Field

from chattune.backends.registry import BackendSettings
from chattune.cli.command import Command
from chattune.cli.common import (
    BACKEND_FLAGS,
    BOT_FLAGS,
    GENERATION_FLAGS,
    BotSection,
    GenerationOverrides,
    backend_field,
    engine_for,
    knowledge,
    load_bot,
    model_field,
)
from chattune.config import Section

KB_HELP = "answer from this knowledge base folder (see chattune kb add)"


class ChatConfig(Section):
    """``chattune chat``: which model, as which bot, grounded in which knowledge base."""

    model: str = model_field()
    kb: str | None = Field(None, description=KB_HELP)
    bot: BotSection = Field(default_factory=BotSection)
    backend: BackendSettings = backend_field()
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # type: ignore[valid-type]
    verbose: bool = Field(False, description="show each turn's routing decision")


def _lines(interactive: bool) -> Iterator[str]:
    """The user's messages: prompted at a terminal, one per line from a pipe."""
    while True:
        try:
            yield input("you> ") if interactive else next(sys.stdin)
        except (EOFError, StopIteration):
            return


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_chat(cfg: ChatConfig) -> int:
    """Chat in the terminal (streaming; /reset, /system, /save); with a pipe on stdin,
    answer one message per line."""
    from chattune.chat.repl import run_chat
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    profile = load_bot(cfg.bot, cfg.generation)
    engine = engine_for(cfg.model, profile, knowledge(cfg.kb, profile), cfg.backend)
    interactive = sys.stdin.isatty()
    run_chat(engine, _lines(interactive), _write, interactive, cfg.verbose)
    return 0


CHAT = Command(
    "chat",
    ChatConfig,
    {
        "--model": "model",
        "--kb": "kb",
        "--verbose": "verbose",
        **BOT_FLAGS,
        **BACKEND_FLAGS,
        **GENERATION_FLAGS,
    },
    cmd_chat,
)
COMMANDS = [CHAT]
