"""``chattune generate``: replies from one model or two side by side (the demo's before/after).

Both models answer through a chat engine with the same bot profile (and, with ``--kb``,
the same knowledge base), exactly as ``chattune chat`` and ``chattune serve`` would answer.
With a knowledge base each reply is followed by the passages it was shown, the ones it
cites marked ``*``, so a grounded model and an ungrounded one can be read side by side.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

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
from chattune.config import FieldProblem, Section
from chattune.data.types import Message

DEFAULT_PROMPT = "Hello! Who are you?"


class GenerateConfig(Section):
    """``chattune generate``: which models answer which prompts, as which bot."""

    model: str = model_field()
    compare: str | None = Field(None, description="a second model to answer the same prompts")
    prompts: list[str] = Field(default_factory=list, description="a user message (repeatable)")
    data: str | None = Field(
        None, description="answer the first user turn of conversations in this file"
    )
    n: int = Field(3, ge=1, description="how many conversations from --data")
    kb: str | None = Field(
        None, description="answer from this knowledge base folder, as chat --kb does"
    )
    bot: BotSection = Field(default_factory=BotSection)
    backend: BackendSettings = backend_field()
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_source(self) -> GenerateConfig:
        if self.prompts and self.data:
            raise FieldProblem("data", "give prompts (--prompt) or --data, not both")
        return self


def prompts(cfg: GenerateConfig) -> list[tuple[list[Message], str | None]]:
    """(history ending in a user turn, reference reply or None) pairs to answer."""
    from chattune.data.readers import read_conversations

    if cfg.data:
        out = []
        for conv in read_conversations(cfg.data)[: cfg.n]:
            first = next(i for i, m in enumerate(conv.messages) if m.role == "user")
            out.append((conv.messages[: first + 1], conv.messages[first + 1].content))
        return out
    return [([Message("user", p)], None) for p in cfg.prompts or [DEFAULT_PROMPT]]


def cmd_generate(cfg: GenerateConfig) -> int:
    """Answer prompts (or the questions of a data file) with one model, or two side by side."""
    from chattune.model.loading import quiet_transformers, resolve

    quiet_transformers()
    profile = load_bot(cfg.bot, cfg.generation)
    questions = prompts(cfg)  # data errors before a slow load
    specs = [cfg.model, *([cfg.compare] if cfg.compare else [])]
    for spec in specs:
        resolve(spec)  # a bad second model fails now, not after the first has loaded
    kb = knowledge(cfg.kb, profile)  # opened now: a bad --kb fails before a slow load
    engines = {spec: engine_for(spec, profile, kb, cfg.backend) for spec in specs}
    for history, reference in questions:
        lines = [f"user: {history[-1].content}"]
        if reference is not None:
            lines.append(f"  reference: {reference}")
        for spec, engine in engines.items():
            text = engine.generate([history], engine.options())[0].text
            lines.append(f"  [{spec}]: {text}")
            lines += source_lines(engine, history, text)
        print("\n".join(lines) + "\n", flush=True)
    return 0


def source_lines(engine: Any, history: list[Message], reply: str) -> list[str]:
    """The passages a grounded reply was shown, ``*`` before the ones it cites (none
    without a knowledge base; retrieval is deterministic, so deciding again finds the
    passages the reply was generated from)."""
    if engine.knowledge is None:
        return []
    sources = engine.decide(history).sources(reply) or []
    return [
        f"      {'*' if s['cited'] else ' '}[{s['index']}] {s['source']}, {s['location']}"
        for s in sources
    ]


GENERATE = Command(
    "generate",
    GenerateConfig,
    {
        "--model": "model",
        "--compare": "compare",
        "--prompt": "prompts",
        "--data": "data",
        "--n": "n",
        "--kb": "kb",
        **BOT_FLAGS,
        **BACKEND_FLAGS,
        **GENERATION_FLAGS,
    },
    cmd_generate,
)
COMMANDS = [GENERATE]
