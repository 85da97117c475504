"""Greedy replies from one model or two side by side (the demo's before/after view)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from chattune.data.readers import read_conversations
from chattune.data.types import Message
from chattune.model.generation import GenerationOptions, generate_batch


def generate_reply(model: Any, tokenizer: Any, messages: list[Message], max_new_tokens: int) -> str:
    """The model's greedy reply to ``messages``, rendered with its own chat template."""
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    return generate_batch(model, tokenizer, [messages], options)[0].text


def _prompts(
    prompts: list[str] | None, data: str | None, n: int, system: str | None
) -> list[tuple[list[Message], str | None]]:
    """(history ending in a user turn, reference reply or None) pairs."""
    if data:
        out = []
        for conv in read_conversations(data)[:n]:
            first = next(i for i, m in enumerate(conv.messages) if m.role == "user")
            out.append((conv.messages[: first + 1], conv.messages[first + 1].content))
        return out
    head = [Message("system", system)] if system else []
    return [([*head, Message("user", p)], None) for p in prompts or ["Hello! Who are you?"]]


def run_generate(
    model_spec: str,
    compare: str | None,
    prompts: list[str] | None,
    data: str | None,
    n: int,
    max_new_tokens: int,
    system: str | None = None,
) -> Iterator[str]:
    """Yield one printable block per prompt: the question, the reference, each model's reply."""
    from chattune.model.loading import load_model

    specs = [model_spec, *([compare] if compare else [])]
    models = [(spec, *load_model(spec)) for spec in specs]
    for model_ in models:
        model_[1].eval()
    for history, reference in _prompts(prompts, data, n, system):
        lines = [f"user: {history[-1].content}"]
        if reference is not None:
            lines.append(f"  reference: {reference}")
        for spec, model, tokenizer in models:
            reply = generate_reply(model, tokenizer, history, max_new_tokens)
            lines.append(f"  [{spec}]: {reply}")
        yield "\n".join(lines) + "\n"
