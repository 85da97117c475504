"""Replies for evaluation examples, in length-sorted batches with a progress bar."""

from __future__ import annotations

from typing import Any

from chattune.evaluate.examples import TurnExample
from chattune.model.generation import Generated, GenerationOptions, generate_batch


def generate_replies(
    model: Any,
    tokenizer: Any,
    examples: list[TurnExample],
    options: GenerationOptions,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generate",
) -> list[Generated]:
    """Replies for every example, in the examples' order; batches group similar lengths."""
    from tqdm.auto import tqdm

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].history))
    results: list[Generated | None] = [None] * len(examples)
    model.eval()
    with tqdm(total=len(examples), desc=desc, disable=not progress, unit="reply") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            replies = generate_batch(
                model, tokenizer, [examples[i].history for i in batch], options
            )
            for i, reply in zip(batch, replies, strict=True):
                results[i] = reply
            bar.update(len(batch))
    return [r for r in results if r is not None]
