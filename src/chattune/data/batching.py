"""Datasets and batches with little compute spent on padding.

Measured on this project's 2-core CPU (see docs/training.md): length-grouped padded batches
beat packing with a block-diagonal attention mask, because the masked attention path costs
more than the padding it saves. So chat data is length-grouped; raw text for the ``lm``
objective is packed into full blocks, where no mask between documents is needed beyond the
end-of-sequence separator (standard continued pre-training practice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from chattune.data.render import IGNORE_INDEX, Encoded


@dataclass
class EncodeReport:
    """What happened to a data set on its way to tokens."""

    conversations: int = 0
    encoded: int = 0
    truncated: int = 0  # conversations that lost their oldest turns
    dropped: int = 0  # conversations with nothing trainable within max_len
    tokens: int = 0
    trained_tokens: int = 0


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group: int | None = None
) -> list[list[int]]:
    """Shuffle, then sort within windows of ``group`` batches by length, then shuffle batches.

    The window is sized to the data as Hugging Face's ``LengthGroupedSampler`` sizes its
    megabatches: ``group = min(len // (4 * batch_size), 50)`` batches, at least one. A window
    that held the whole set would sort it once, so every seed and epoch would train the very
    same batches, only in another order; windows of a quarter of the set or less give each
    epoch new batch members while neighbours in length still share a batch.

    Deterministic in ``(seed, epoch)``, so a resumed run sees the same batches in the same
    order and can skip the ones it already trained on.

    Example:
        >>> length_grouped_batches([5, 1, 4, 2], batch_size=2, seed=0, epoch=0, group=2)
        [[2, 1], [0, 2]]  # doctest: +SKIP
    """
    if group is None:
        group = max(1, min(len(lengths) // (4 * batch_size), 50))
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def pack_documents(token_lists: list[list[int]], eos_id: int, block_size: int) -> list[Encoded]:
    """Concatenate documents (each ended by EOS) and cut into ``block_size`` blocks.

    The last block may be shorter; blocks shorter than 16 tokens are dropped.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream += [*ids, eos_id]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [Encoded(b, list(b)) for b in blocks if len(b) >= 16]
