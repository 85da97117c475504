"""Teacher-forced loss of each reference reply given its history."""

from __future__ import annotations

from typing import Any

from chattune.data.batching import collate
from chattune.data.render import MaskPolicy, encode_conversation
from chattune.data.types import Conversation, Message
from chattune.evaluate.examples import TurnExample


def reference_losses(
    model: Any, tokenizer: Any, examples: list[TurnExample], max_len: int, batch_size: int = 8
) -> list[tuple[float, int]]:
    """``(summed loss, token count)`` over each reference reply (end-of-turn token included).

    Histories too long for ``max_len`` lose their oldest exchanges, as in training; an
    example whose reply alone does not fit scores ``(0.0, 0)`` and so does not count.
    """
    import torch

    from chattune.model.loss import LabelledLoss

    encoded = []
    for ex in examples:
        conv = Conversation([*ex.history, Message("assistant", ex.reference)], ex.id)
        encoded.append(encode_conversation(conv, tokenizer, max_len, MaskPolicy.LAST))
    scorer = LabelledLoss(model).eval()
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    todo = sorted((i for i, e in enumerate(encoded) if e), key=lambda i: len(encoded[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            padded = collate([encoded[i] for i in batch], tokenizer.pad_token_id)
            sums, counts = scorer(**padded, per_example=True)
            for i, loss, n in zip(batch, sums.tolist(), counts.tolist(), strict=True):
                results[i] = (loss, n)
    return results
