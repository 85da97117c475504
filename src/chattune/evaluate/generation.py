"""Replies for evaluation examples through the chat engine, in length-sorted batches.

Every reply an evaluation scores comes from :meth:`ChatEngine.generate`: the same bot
profile (system prompt, few-shot examples, stop strings), history budget and end-of-turn
handling as a served reply, so the numbers describe the bot users talk to.
"""

from __future__ import annotations

from chattune.chat.engine import ChatEngine
from chattune.evaluate.examples import TurnExample
from chattune.model.generation import Generated, GenerationOptions


def generate_replies(
    engine: ChatEngine,
    examples: list[TurnExample],
    options: GenerationOptions | None = None,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generate",
) -> list[Generated]:
    """Replies for every example, in the examples' order; batches group similar lengths."""
    from tqdm.auto import tqdm

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].history))
    results: list[Generated | None] = [None] * len(examples)
    with tqdm(total=len(examples), desc=desc, disable=not progress, unit="reply") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            replies = engine.generate([list(examples[i].history) for i in batch], options)
            for i, reply in zip(batch, replies, strict=True):
                results[i] = reply
            bar.update(len(batch))
    return [r for r in results if r is not None]
